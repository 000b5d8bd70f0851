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
    raw = clamp_distance(ctx.task_head("dist"), ctx.max_distance)
    out = {}
    for c in range(min(raw.shape[0], len(NAMES))):
        data = np.asarray(ctx.to_output(raw[c], "linear", ctx.max_distance), np.float32)
        data = clamp_distance(data, ctx.max_distance)
        out[f"dist_{NAMES[c]}"] = ctx.volume(data, task="dist", kind="distance", units="mm",
                                             surface=NAMES[c])
    return out
