"""Bias-field post-processing (``bias``): the natural log of a multiplicative field, either predicted
by the model's bias-field head (method ``head``) or fitted to the model's segmentation (method
``fit``, :mod:`brainfm.tasks.biasfit`); ``bias_field = exp(log field)`` and ``bias_corrected = input /
bias_field`` inside the input foreground (input intensity units; unchanged outside).

Method ``auto`` (the default of :meth:`brainfm.Predictor.predict`) uses the head unless the model's
measured quality says its field is not reliable (:func:`brainfm.models.quality.unreliable_tasks`)
and the model segments; then it fits the field to the segmentation, except on CT inputs (Hounsfield
units are calibrated: a fitted field would only change them).

>>> resolve_method("auto", head_reliable=False, has_seg=True), resolve_method("auto", head_reliable=True, has_seg=True)
('fit', 'head')

>>> import numpy as np
>>> round(float(field_from_log(np.array([0.0, np.log(2.0)]))[1]), 6)
2.0
>>> correct(np.array([4.0, 4.0]), np.array([2.0, 2.0]), np.array([True, False])).tolist()
[2.0, 4.0]
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from brainfm.tasks import methods
from brainfm.tasks.context import TaskContext
from brainfm.volume import Volume, voxel_sizes

#: what ``bias_method`` accepts, and what each resolved method is called (:mod:`brainfm.tasks.methods`)
METHODS = methods.METHODS
METHOD_NAMES = methods.METHOD_NAMES

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


#: the warning of an explicit fit on a CT
CT_FIT_WARNING = ("bias field fitted to a CT: Hounsfield units are calibrated and have no multiplicative bias "
                  "field, so the fitted field and the corrected image change HU values; use bias_method 'head' "
                  "or 'auto' for CT")


def check_method(method: str) -> str:
    """``method`` lower-cased, one of :data:`METHODS`; :class:`~brainfm.errors.InputError` otherwise.

    >>> check_method(" Fit ")
    'fit'
    """
    return methods.check_method(method, option="bias_method")


def resolve_method(method: str, *, head_reliable: bool, has_seg: bool, ct: bool = False) -> str:
    """``"head"`` or ``"fit"`` for a requested ``method`` (one of :data:`METHODS`).

    ``auto`` fits when the head is not reliable, the model segments and the input is not CT
    (``ct``: Hounsfield units have no multiplicative field). Raises
    :class:`~brainfm.errors.InputError` for an unknown method, or ``fit`` without a segmentation head.

    >>> resolve_method("auto", head_reliable=False, has_seg=True, ct=True)
    'head'
    """
    return methods.resolve(method, option="bias_method", head_reliable=head_reliable, has_seg=has_seg,
                           fit_allowed=not ct)


def _fitted_log_field(ctx: TaskContext) -> np.ndarray:
    """The log field fitted to the segmentation, on the output grid (float32)."""
    from brainfm.tasks.biasfit import fit_log_field
    from brainfm.tasks.segmentation import decide

    labels = decide(ctx).labels_out(np.int16)
    return fit_log_field(ctx.image_out, labels, voxel_mm=voxel_sizes(ctx.out_affine))


def run_bias(ctx: TaskContext) -> Dict[str, Volume]:
    """``bias_field`` (unitless, ~1) and ``bias_corrected`` (input intensity units), by
    ``ctx.bias_method``; a fit that finds too few labelled voxels falls back to the head, with a warning
    (``ctx.bias_method`` then says ``"head"``)."""
    method = ctx.bias_method
    if method == "fit":
        try:
            log_field = _fitted_log_field(ctx)
        except ValueError as exc:
            ctx.warnings.append(f"bias field: the fit to the segmentation failed ({exc}); the model's bias-field "
                                "head was used instead")
            method = ctx.bias_method = "head"
        else:
            return _outputs(ctx, np.exp(log_field, out=log_field), method)
    raw = ctx.task_head("bias")[0]
    if ctx.output_exact:  # voxel copies: exp after mapping (fill log 1 = 0) is the same, and cheaper
        field_out = ctx.private(ctx.to_output(raw, "linear", 0.0), np.float32)
        np.exp(field_out, out=field_out)
    else:
        field_out = np.asarray(ctx.to_output(field_from_log(raw), "linear", 1.0), np.float32)
    return _outputs(ctx, field_out, method)


def _outputs(ctx: TaskContext, field_out: np.ndarray, method: str) -> Dict[str, Volume]:
    corrected = correct(ctx.image_out, field_out, ctx.foreground_out)
    how = METHOD_NAMES[method]
    return {
        "bias_field": ctx.volume(field_out, task="bias", kind="field", units="multiplicative factor", method=how),
        "bias_corrected": ctx.volume(corrected, task="bias", kind="image", units="input intensity units",
                                     method=how),
    }
