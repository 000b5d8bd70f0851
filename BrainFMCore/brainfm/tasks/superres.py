"""Super-resolution post-processing (``sr``): ``high_res = residual + normalised input`` on the
1 mm network grid (reference), then the min-max normalisation is undone so that ``superres`` is in
the input's intensity units. Masked by the input foreground (fill: the input minimum).

>>> import numpy as np
>>> reconstruct(np.array([0.1]), np.array([0.5]), (10.0, 110.0)).tolist()
[70.0]
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from brainfm.tasks.context import TaskContext
from brainfm.volume import Volume


def reconstruct(residual: np.ndarray, normalised_input: np.ndarray, norm_range: Tuple[float, float]) -> np.ndarray:
    """``(residual + input) * (hi - lo) + lo``: the SR image in input intensity units (float32)."""
    lo, hi = norm_range
    high = np.add(residual, normalised_input, dtype=np.float32)
    high *= np.float32(hi - lo)
    high += np.float32(lo)
    return high


def run_sr(ctx: TaskContext) -> Dict[str, Volume]:
    """``superres`` (input intensity units)."""
    lo = float(ctx.norm_range[0])
    high = reconstruct(ctx.task_head("sr")[0], ctx.net_image, ctx.norm_range)
    data = np.asarray(ctx.to_output(high, "linear", lo), np.float32)
    data = ctx.mask(data, lo, inplace=True)
    return {"superres": ctx.volume(data, task="sr", kind="image", units="input intensity units")}
