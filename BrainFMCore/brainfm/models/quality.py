"""Quality levels of a model, from its merged-17 Dice on a real T1 (measured by
:func:`brainfm.evaluation.quality.measure_quality` and stored in the model's ``quality`` field):

- below :data:`PREVIEW_DICE` (0.70): not used as the default;
- from 0.70: the default, marked **preview** with its measured Dice wherever it is used;
- from :data:`RELEASE_DICE` (0.80): the default, no mark.

>>> quality_level(0.65), quality_level(0.7), quality_level(0.83)
('below-preview', 'preview', 'release')
>>> quality_label({"level": "preview", "real_t1_dice17": 0.734})
'preview (merged-17 Dice 0.734 on a real T1)'
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

PREVIEW_DICE = 0.70
RELEASE_DICE = 0.80
LEVELS = ("below-preview", "preview", "release")


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
