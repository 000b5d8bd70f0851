"""Plausibility checks of a segmentation's structure volumes: which cases of a batch deserve a look.

Each check names what it found, for a person to confirm on the images:

- a structure of the 17 evaluation classes (left and right apart) that the label scheme has but the
  segmentation found nowhere (e.g. a scan that does not cover the cerebellum, or not a brain scan);
- a left/right volume ratio of the cerebral white matter, the cerebral cortex or the cerebellar cortex
  outside :data:`RATIO_RANGE` (half of the brain lost, or a large lesion). The ventricles, thalami and
  other small structures are left out: their asymmetry is common in patients (the stroke patient of the
  development data has a left lateral ventricle 1.9 times the right one and a left thalamus 0.6 times
  the right one, while the three large pairs stay within 0.76-1.09);
- a labelled volume outside :data:`TOTAL_CM3` (not a whole brain, or wrong voxel sizes).

On the six real scans of the development data (T1, T2, FLAIR, whole-head T1, clinical CT) none fires.

>>> ok = {2: 250e3, 41: 260e3, 3: 250e3, 42: 255e3, 8: 50e3, 47: 52e3, 17: 4e3, 53: 4.1e3}
>>> volume_checks(ok)
[]
>>> volume_checks({**ok, 2: 60e3, 17: 0.0})
['Left-Hippocampus found nowhere', 'left/right Cerebral-White-Matter volume ratio 0.23 (expected 0.67-1.5)']
"""
from __future__ import annotations

from functools import lru_cache
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

#: left/right pairs whose volume ratio is checked: cerebral white matter, cerebral cortex, cerebellar cortex
LR_PAIRS: Tuple[Tuple[int, int], ...] = ((2, 41), (3, 42), (8, 47))
RATIO_RANGE = (0.67, 1.5)  #: accepted left/right volume ratios of :data:`LR_PAIRS`
TOTAL_CM3 = (300.0, 2500.0)  #: accepted sum of every labelled structure (cm³)


def lr_ratios(volumes: Mapping[int, float], *, pairs: Sequence[Tuple[int, int]] = LR_PAIRS
              ) -> Dict[int, Optional[float]]:
    """Left/right volume ratio of each pair, keyed by the left label (None when the right one is empty).

    >>> lr_ratios({2: 200e3, 41: 210e3, 3: 1.0})
    {2: 0.952, 3: None, 8: None}
    """
    return {left: (round(float(volumes.get(left, 0.0)) / float(volumes[right]), 3) if volumes.get(right) else None)
            for left, right in pairs}


@lru_cache(maxsize=1)
def _expected() -> Tuple[int, ...]:
    """FreeSurfer numbers (left, right, midline) of the 17 evaluation classes."""
    from brainfm.labels.volumes import EVAL17_FS, merge_hemispheres

    values = list(range(256))
    return tuple(v for v, m in zip(values, merge_hemispheres(values)) if int(m) in EVAL17_FS)


def volume_checks(volumes: Mapping[int, float]) -> List[str]:
    """What looks wrong in ``{FreeSurfer number: mm³}`` of one segmentation (see the module docstring);
    ``[]`` when nothing does. Structures the mapping does not list (not in the label scheme) are not
    expected."""
    from brainfm.labels.freesurfer import fs_name

    vol = {int(k): float(v) for k, v in volumes.items()}
    found: List[str] = []
    missing = [fs_name(v) for v in _expected() if v in vol and vol[v] <= 0]
    if missing:
        found.append(f"{', '.join(missing)} found nowhere")
    lo, hi = RATIO_RANGE
    for left, ratio in lr_ratios(vol).items():
        if ratio is None and not vol.get(left):
            continue  # both sides empty: named above when expected
        if ratio is None or not lo <= ratio <= hi:
            what = fs_name(left).replace("Left-", "")
            found.append(f"left/right {what} volume ratio {'(right side empty)' if ratio is None else f'{ratio:.2f}'} "
                         f"(expected {lo:g}-{hi:g})")
    total = sum(vol.values()) / 1000.0
    if vol and not TOTAL_CM3[0] <= total <= TOTAL_CM3[1]:
        found.append(f"labelled volume {total:.0f} cm3 (expected {TOTAL_CM3[0]:g}-{TOTAL_CM3[1]:g} cm3)")
    return found
