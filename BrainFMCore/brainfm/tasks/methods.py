"""Where a task's result comes from: the model's own head, or a fit to the model's segmentation.

The bias field (``bias_method``, :mod:`brainfm.tasks.bias`) and the registration to the atlas
(``reg_method``, :mod:`brainfm.tasks.registration`) can each be taken from the model's head or
fitted to the model's segmentation. ``auto`` fits when the model's measured quality says its head is
not reliable (:func:`brainfm.models.quality.unreliable_tasks`) and the model segments.

>>> resolve("auto", option="reg_method", head_reliable=False, has_seg=True)
'fit'
>>> resolve("auto", option="reg_method", head_reliable=True, has_seg=True)
'head'
"""
from __future__ import annotations

from brainfm.errors import InputError

#: what ``bias_method`` and ``reg_method`` accept
METHODS = ("auto", "head", "fit")
#: what each resolved method is called in metadata and logs
METHOD_NAMES = {"head": "model head", "fit": "fitted to the model's segmentation"}


def check_method(method: str, *, option: str) -> str:
    """``method`` lower-cased, one of :data:`METHODS`; :class:`~brainfm.errors.InputError` naming
    ``option`` otherwise.

    >>> check_method(" Fit ", option="reg_method")
    'fit'
    """
    m = str(method).strip().lower()
    if m not in METHODS:
        raise InputError(f"{option} must be one of {', '.join(METHODS)}, got {method!r}")
    return m


def resolve(method: str, *, option: str, head_reliable: bool, has_seg: bool, fit_allowed: bool = True) -> str:
    """``"head"`` or ``"fit"`` for a requested ``method``: ``auto`` fits when the head is not
    reliable, the model segments and ``fit_allowed``. Raises :class:`~brainfm.errors.InputError` for
    an unknown method, or ``fit`` without a segmentation head."""
    m = check_method(method, option=option)
    if m == "fit" and not has_seg:
        raise InputError(f"{option} 'fit' fits to the model's segmentation of the brain's anatomy, but this "
                         "model has no segmentation head for it (none, or one fine-tuned for labels of your "
                         "own); use 'head'")
    if m == "auto":
        return "fit" if (has_seg and not head_reliable and fit_allowed) else "head"
    return m
