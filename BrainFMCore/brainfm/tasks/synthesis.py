"""Contrast synthesis post-processing: ``t1``, ``t2``, ``flair`` (and Brain-ID's ``image``) and ``ct``.

Units (reference semantics): T1/T2/FLAIR heads predict images in the scale of the training targets,
i.e. each target min-max normalised to [0, 1]; the outputs **keep that [0, 1] scale** (they are not
mapped to the input's intensity range, which belongs to another contrast). The CT head predicts
HU/1000; ``synth_ct`` is in Hounsfield units. Like the reference demo, outputs are masked by the
input foreground (the reference's ``input != 0``; the head, when the scan's background is noise)
unless ``mask_background=False``; the CT background is set to -1000 HU (air) instead of the
reference's 0.

>>> import numpy as np
>>> ct_to_hu(np.array([0.04, -1.0], np.float32)).tolist()
[40.0, -1000.0]
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from brainfm.tasks import methods
from brainfm.tasks.context import TaskContext
from brainfm.volume import Volume

CT_SCALE = 1000.0
CT_BACKGROUND_HU = -1000.0
IMAGE_UNITS = "a.u. in [0, 1] (min-max scale of the training targets)"
BRAINID_IMAGE_UNITS = "T1-like a.u., white matter ~ 1 (Brain-ID image head)"

_KEYS = {"t1": "synth_t1", "t2": "synth_t2", "flair": "synth_flair"}
_NAMES = {"t1": "T1", "t2": "T2", "flair": "FLAIR"}
#: the tasks whose images ``synth_method`` applies to (super-resolution keeps the model's image)
SYNTH_TASKS = ("t1", "t2", "flair", "ct")
#: what ``synth_method`` accepts (:mod:`brainfm.tasks.methods`), and what each resolved method is called
METHODS = methods.METHODS
METHOD_NAMES = {"head": "model head",
                "fit": "fitted to the scan (the model's contrast per tissue, the scan's own detail)"}


def check_method(method: str) -> str:
    """``method`` lower-cased, one of :data:`METHODS`; :class:`~brainfm.errors.InputError` otherwise."""
    return methods.check_method(method, option="synth_method")


def resolve_method(method: str, *, has_seg: bool, refined: bool) -> str:
    """``"head"`` or ``"fit"`` for a requested ``synth_method``: ``auto`` fits the synthesis to the scan
    (:mod:`brainfm.tasks.synthfit`) whenever the segmentation is refined to the scan's intensities
    (``refined``: a model on a grid coarser than 1 mm, not a CT), since the tissue model it needs is then
    at hand. ``fit`` needs a segmentation head.

    >>> resolve_method("auto", has_seg=True, refined=True), resolve_method("auto", has_seg=True, refined=False)
    ('fit', 'head')
    >>> resolve_method("fit", has_seg=True, refined=False)
    'fit'
    """
    return methods.resolve(method, option="synth_method", head_reliable=not refined, has_seg=has_seg)


def _fitted(ctx: TaskContext, data: np.ndarray, what: str, background: float = 0.0) -> np.ndarray:
    """``data`` (a synthesis on the output grid) fitted to the scan when ``ctx.synth_method`` is
    ``fit`` (in place, on a private copy when ``data`` is an input of the context); else ``data``.
    ``background``: the output's value outside the foreground."""
    if ctx.synth_method != "fit":
        return data
    from brainfm.tasks.synthfit import fit_to_scan

    data = ctx.private(data, np.float32)
    fit_to_scan(ctx, data, what=what, background=background)
    return data


def ct_to_hu(raw: np.ndarray) -> np.ndarray:
    """Raw CT head output (HU/1000) -> Hounsfield units."""
    return (np.asarray(raw, np.float32) * CT_SCALE).astype(np.float32)


def _image(ctx: TaskContext, task: str) -> Dict[str, Volume]:
    raw = ctx.task_head(task)[0]
    data = np.asarray(ctx.to_output(raw, "linear", 0.0), np.float32)
    data = _fitted(ctx, data, "synthetic " + _NAMES[task])
    data = ctx.mask(data, 0.0, inplace=True)
    units = BRAINID_IMAGE_UNITS if ctx.heads.get(task) == "image" else IMAGE_UNITS
    return {_KEYS[task]: ctx.volume(data, task=task, kind="image", units=units)}


def run_t1(ctx: TaskContext) -> Dict[str, Volume]:
    """``synth_t1`` in [0, 1] (from the ``T1`` head, or Brain-ID's ``image`` head)."""
    return _image(ctx, "t1")


def run_t2(ctx: TaskContext) -> Dict[str, Volume]:
    """``synth_t2`` in [0, 1]."""
    return _image(ctx, "t2")


def run_flair(ctx: TaskContext) -> Dict[str, Volume]:
    """``synth_flair`` in [0, 1]."""
    return _image(ctx, "flair")


def run_ct(ctx: TaskContext) -> Dict[str, Volume]:
    """``synth_ct`` in HU (raw x 1000), background -1000 HU."""
    # scaling commutes with the (linear or exact) mapping: map the raw head, then scale in place
    raw = ctx.task_head("ct")[0]
    data = ctx.private(ctx.to_output(raw, "linear", CT_BACKGROUND_HU / CT_SCALE), np.float32)
    data *= np.float32(CT_SCALE)
    data = _fitted(ctx, data, "synthetic CT", CT_BACKGROUND_HU)
    data = ctx.mask(data, CT_BACKGROUND_HU, inplace=True)
    return {"synth_ct": ctx.volume(data, task="ct", kind="image", units="HU")}
