"""Contrast-robustness row: segment the stroke subject's T1, T2 and FLAIR (co-registered) and
measure the Dice between the segmentations of each pair of contrasts (merged-17 classes, and the
31 per-hemisphere labels).

>>> import numpy as np
>>> s = np.zeros((4, 4, 4), np.int32); s[:2] = 2
>>> pairwise_agreement({"T1": s, "T2": s})["T1-T2"]["mean_dice_merged17"]
1.0
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np

from brainfm.evaluation.rows import has_task, na_row, row
from brainfm.evaluation.segmentation import dice_report

GOAL = ">= 0.80 Dice between the segmentations of each pair of contrasts"


def pairwise_agreement(segs: Mapping[str, np.ndarray]) -> Dict[str, Dict[str, float]]:
    """Dice (merged-17 and per-hemisphere means) for each pair of segmentations, keyed ``"A-B"``."""
    out: Dict[str, Dict[str, float]] = {}
    for a, b in itertools.combinations(list(segs), 2):
        rep = dice_report(np.asarray(segs[a]), np.asarray(segs[b]))
        out[f"{a}-{b}"] = {"mean_dice_merged17": rep["mean_merged17"], "mean_dice_lr": rep["mean_lr"]}
    return out


def evaluate_robustness(predictor: Any, data_root: Path, *, montage_path: Optional[Path] = None
                        ) -> Dict[str, Any]:
    """The contrast-robustness row on the stroke trio."""
    if not has_task(predictor, "seg"):
        return na_row("contrast robustness", "segmentation", GOAL)
    from brainfm.evaluation.synthesis import load_trio

    trio = load_trio(data_root)
    segs = {c: predictor.predict(v, tasks=["seg"])["seg"] for c, v in trio.items()}
    pairs = pairwise_agreement({c: s.data for c, s in segs.items()})
    if montage_path is not None:
        from brainfm.report.montage import write_montage

        write_montage(trio["T1"], {f"seg_from_{c}": s for c, s in segs.items()}, montage_path)
    worst = min(v["mean_dice_merged17"] for v in pairs.values())
    head = ", ".join(f"{k} {v['mean_dice_merged17']:.3f}" for k, v in pairs.items())
    return row("contrast robustness", metrics={"pairs": pairs, "min_mean_dice_merged17": worst}, goal=GOAL,
               passed=bool(worst >= 0.80), headline=f"merged-17 Dice {head}")
