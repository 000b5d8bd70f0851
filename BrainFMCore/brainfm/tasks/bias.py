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
    return np.exp(np.asarray(raw, np.float64)).astype(np.float32)


def correct(image: np.ndarray, field: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """``image / field`` where ``foreground``, ``image`` elsewhere."""
    image = np.asarray(image, np.float32)
    safe = np.maximum(np.asarray(field, np.float32), _MIN_FIELD)
    return np.where(foreground, image / safe, image).astype(np.float32)


def run_bias(ctx: TaskContext) -> Dict[str, Volume]:
    """``bias_field`` (unitless, ~1) and ``bias_corrected`` (input intensity units)."""
    field = field_from_log(ctx.task_head("bias")[0])
    field_out = np.asarray(ctx.to_output(field, "linear", 1.0), np.float32)
    corrected = correct(ctx.image_out, field_out, ctx.foreground_out)
    return {
        "bias_field": ctx.volume(field_out, task="bias", kind="field", units="multiplicative factor"),
        "bias_corrected": ctx.volume(corrected, task="bias", kind="image", units="input intensity units"),
    }
