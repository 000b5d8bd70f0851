"""Quality levels of a model, from its merged-17 Dice on a real T1 (measured by
:func:`brainfm.evaluation.quality.measure_quality` and stored in the model's ``quality`` field):

- below :data:`PREVIEW_DICE` (0.70): not used as the default;
- from 0.70: the default, marked **preview** with its measured Dice wherever it is used;
- from :data:`RELEASE_DICE` (0.80): the default, no mark.

>>> quality_level(0.65), quality_level(0.7), quality_level(0.83)
('below-preview', 'preview', 'release')
>>> quality_label({"level": "preview", "real_t1_dice17": 0.734})
'preview (merged-17 Dice 0.734 on a real T1)'

A model's quality can also say that one of its tasks is not reliable yet: ``bias_applied_corr`` is
the correlation of its log bias field with known fields applied to a real T1 (1 is a perfect
estimate); below :data:`BIAS_USABLE_CORR` every bias result from the head carries a warning
(:func:`task_warnings`). ``reg_carried_dice17`` is the merged-17 Dice of the labels of one held-out
label map carried to the other through the atlas coordinates its registration head gives both;
below :data:`REG_USABLE_DICE` the same holds for registration.

>>> task_warnings({"bias_applied_corr": -0.05}, ["seg", "bias"])[0][:45]
"this model's bias field is not reliable yet: "
>>> task_warnings({"bias_applied_corr": 0.9}, ["bias"]), task_warnings({"bias_applied_corr": -0.05}, ["seg"])
([], [])
"""
from __future__ import annotations

import math
from typing import Any, List, Mapping, Optional, Sequence

PREVIEW_DICE = 0.70
RELEASE_DICE = 0.80
LEVELS = ("below-preview", "preview", "release")
#: below this correlation with known applied fields a model's bias field is flagged as not reliable
BIAS_USABLE_CORR = 0.5
#: below this merged-17 Dice of labels carried between two held-out brains through its atlas
#: coordinates a model's registration head is flagged as not reliable (the head's training targets
#: themselves carry the labels at 0.65; an affine map fitted to structure centroids reaches 0.59)
REG_USABLE_DICE = 0.6


def quality_level(real_t1_dice17: Optional[float]) -> str:
    """``below-preview`` / ``preview`` / ``release`` for a merged-17 Dice on the real T1."""
    if real_t1_dice17 is None or not math.isfinite(real_t1_dice17) or real_t1_dice17 < PREVIEW_DICE:
        return "below-preview"
    return "preview" if real_t1_dice17 < RELEASE_DICE else "release"


def quality_label(quality: Optional[Mapping[str, Any]]) -> str:
    """Short text for users: ``''`` for a release model or unknown quality, else the level and Dice."""
    if not quality:
        return ""
    level = str(quality.get("level", ""))
    dice = quality.get("real_t1_dice17")
    if level == "release" or not level:
        return ""
    text = "preview" if level == "preview" else "below preview quality"
    if isinstance(dice, (int, float)):
        text += f" (merged-17 Dice {float(dice):.3f} on a real T1)"
    return text


def unreliable_tasks(quality: Optional[Mapping[str, Any]]) -> List[str]:
    """The tasks (``bias``) this model's measured ``quality`` says it does not do reliably yet.

    >>> unreliable_tasks({"bias_applied_corr": 0.1}), unreliable_tasks({"level": "preview"})
    (['bias'], [])
    >>> unreliable_tasks({"bias_applied_corr": 0.9, "reg_carried_dice17": 0.39})
    ['reg']
    """
    q = quality or {}
    out = []
    limits = (("bias", "bias_applied_corr", BIAS_USABLE_CORR), ("reg", "reg_carried_dice17", REG_USABLE_DICE))
    for task, key, limit in limits:
        value = q.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value) and value < limit:
            out.append(task)
    return out


def task_warnings(quality: Optional[Mapping[str, Any]], tasks: Sequence[str], *, can_fit: bool = True) -> List[str]:
    """Warnings for the ``tasks`` this model's measured ``quality`` says it does not do reliably yet;
    ``can_fit``: whether the model's segmentation can stand in (FreeSurfer anatomy, not a user's own
    labels), which decides the advice.

    >>> task_warnings({"reg_carried_dice17": 0.4}, ["reg"], can_fit=False)[0].split("; ")[-1]
    'this model cannot fit it to its segmentation (its labels are your own): register with a model of FreeSurfer labels'
    """
    out: List[str] = []
    if "bias" in tasks and "bias" in unreliable_tasks(quality):
        corr = float((quality or {})["bias_applied_corr"])
        advice = ("for bias correction fit the field to the segmentation instead (bias_method 'fit' or 'auto', "
                  "the default; brainfm run --bias-method fit)") if can_fit else _NO_FIT.format("correct the bias")
        out.append(f"this model's bias field is not reliable yet: its log field correlates {corr:.2f} "
                   f"with known fields applied to a real T1 (1 is a perfect estimate); {advice}")
    if "reg" in tasks and "reg" in unreliable_tasks(quality):
        dice = float((quality or {})["reg_carried_dice17"])
        advice = ("fit the map to the segmentation instead (reg_method 'fit' or 'auto', the default; brainfm run "
                  "--reg-method fit)") if can_fit else _NO_FIT.format("register")
        out.append(f"this model's registration head is not reliable yet: labels carried between two brains "
                   f"through its atlas coordinates reach merged-17 Dice {dice:.2f}; {advice}")
    return out


_NO_FIT = "this model cannot fit it to its segmentation (its labels are your own): {} with a model of FreeSurfer labels"
