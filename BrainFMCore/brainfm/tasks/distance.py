"""Cortical surface distance post-processing (``dist``): clamp to +-3 mm (reference
``max_surf_distance``) and split the channels into ``dist_lp``, ``dist_lw``, ``dist_rp``, ``dist_rw``
(left pial, left white, right pial, right white; 2 channels for left-hemisphere models).
Sign (reference, inferred): negative inside the surface. Not masked; outside the network field of
view the value is +3 mm (far outside every surface).

>>> import numpy as np
>>> clamp_distance(np.array([-7.0, 1.5, 9.0])).tolist()
[-3.0, 1.5, 3.0]
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from brainfm.tasks.context import TaskContext
from brainfm.volume import Volume

NAMES = ("lp", "lw", "rp", "rw")
MAX_DISTANCE_MM = 3.0


def clamp_distance(raw: np.ndarray, max_distance: float = MAX_DISTANCE_MM) -> np.ndarray:
    """Clamp to ``[-max_distance, max_distance]`` mm."""
    return np.clip(np.asarray(raw, np.float32), -max_distance, max_distance).astype(np.float32)


def run_dist(ctx: TaskContext) -> Dict[str, Volume]:
    """``dist_lp``, ``dist_lw``, ``dist_rp``, ``dist_rw`` in mm."""
    raw = ctx.task_head("dist")
    m = ctx.max_distance
    out = {}
    for c in range(min(raw.shape[0], len(NAMES))):
        if ctx.output_exact:  # voxel copies: clamping after mapping is the same, and cheaper
            data = ctx.private(ctx.to_output(raw[c], "linear", m), np.float32)
        else:  # interpolation: clamp the raw values first, like the reference
            data = np.asarray(ctx.to_output(clamp_distance(raw[c], m), "linear", m), np.float32)
            data = ctx.private(data)
        np.clip(data, -m, m, out=data)
        out[f"dist_{NAMES[c]}"] = ctx.volume(data, task="dist", kind="distance", units="mm",
                                             surface=NAMES[c])
    return out
