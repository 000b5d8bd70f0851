"""Bias-field post-processing (``bias``): the head predicts the natural log of a multiplicative
field; ``bias_field = exp(log field)`` and ``bias_corrected = input / bias_field`` inside the input
foreground (input intensity units; unchanged outside).

>>> import numpy as np
>>> round(float(field_from_log(np.array([0.0, np.log(2.0)]))[1]), 6)
2.0
>>> correct(np.array([4.0, 4.0]), np.array([2.0, 2.0]), np.array([True, False])).tolist()
[2.0, 4.0]
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from brainfm.tasks.context import TaskContext
from brainfm.volume import Volume

_MIN_FIELD = 1e-6


def field_from_log(raw: np.ndarray) -> np.ndarray:
    """``exp(raw)`` in float32."""
    return np.exp(np.asarray(raw, np.float32))


def correct(image: np.ndarray, field: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """``image / field`` where ``foreground``, ``image`` elsewhere (a new float32 array)."""
    out = np.array(image, np.float32, copy=True)
    safe = np.maximum(np.asarray(field, np.float32), np.float32(_MIN_FIELD))
    np.divide(out, safe, out=out, where=np.asarray(foreground, bool))
    return out


def run_bias(ctx: TaskContext) -> Dict[str, Volume]:
    """``bias_field`` (unitless, ~1) and ``bias_corrected`` (input intensity units)."""
    raw = ctx.task_head("bias")[0]
    if ctx.output_exact:  # voxel copies: exp after mapping (fill log 1 = 0) is the same, and cheaper
        field_out = ctx.private(ctx.to_output(raw, "linear", 0.0), np.float32)
        np.exp(field_out, out=field_out)
    else:
        field_out = np.asarray(ctx.to_output(field_from_log(raw), "linear", 1.0), np.float32)
    corrected = correct(ctx.image_out, field_out, ctx.foreground_out)
    return {
        "bias_field": ctx.volume(field_out, task="bias", kind="field", units="multiplicative factor"),
        "bias_corrected": ctx.volume(corrected, task="bias", kind="image", units="input intensity units"),
    }
