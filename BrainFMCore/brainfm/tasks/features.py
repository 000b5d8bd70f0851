"""Feature export (``feat``): the final (L2-normalised when the model says so) backbone feature,
``(X, Y, Z, C)`` float16 on the output grid, each channel resampled linearly.

>>> import numpy as np
>>> from brainfm.tasks.context import TaskContext
>>> f = np.ones((3, 2, 2, 2), np.float32)
>>> ctx = TaskContext.identity({"feat": f}, np.ones((2, 2, 2), np.float32), np.eye(4))
>>> run_feat(ctx)["features"].data.shape
(2, 2, 2, 3)
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from brainfm.tasks.context import TaskContext
from brainfm.volume import Volume


def run_feat(ctx: TaskContext) -> Dict[str, Volume]:
    """``features`` (X, Y, Z, C) float16."""
    feat = ctx.head("feat")
    data = ctx.channels_to_output(feat, "linear", 0.0, dtype=np.float16)
    return {"features": ctx.volume(data, task="feat", kind="features", units="unitless")}
