"""Segmentation row: Dice on the voxelmorph real T1 (FreeSurfer aseg), 17 classes with the
hemispheres merged (:data:`brainfm.labels.EVAL17_FS`) and the 31 per-hemisphere labels they come
from. Anchor: MeshNet (brainchop) 0.782 merged-17 (published number, not re-measured here).

>>> import numpy as np
>>> t = np.zeros((4, 4, 4), np.int32); t[:2] = 17; t[2:] = 53
>>> rep = dice_report(t, t)
>>> rep["mean_lr"], rep["mean_merged17"], sorted(rep["per_label_lr"])
(1.0, 1.0, [17, 53])
>>> p = np.where(t == 53, 17, t)          # right hippocampus called left: merged Dice unaffected
>>> r2 = dice_report(p, t); r2["mean_merged17"], r2["per_label_lr"][53]
(1.0, 0.0)
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from brainfm.evaluation import datasets
from brainfm.evaluation.metrics import dice_per_label
from brainfm.evaluation.rows import has_task, na_row, row
from brainfm.labels import EVAL17_FS, merge_hemispheres

GOAL = ">= 0.80 merged-17 mean Dice, then >= 0.85"
MESHNET_ANCHOR = {"method": "MeshNet (brainchop)", "mean_dice_merged17": 0.782,
                  "source": "published number (brainchop); not re-measured here"}


def eval_labels_lr() -> List[int]:
    """FreeSurfer numbers (left, right and midline) that merge onto the 17 evaluation classes.

    >>> eval_labels_lr()[:5], len(eval_labels_lr())
    ([2, 3, 4, 5, 7], 31)
    """
    values = np.arange(0, 256)
    merged = np.asarray(merge_hemispheres(values))
    return [int(v) for v, m in zip(values, merged) if int(m) in EVAL17_FS]


def dice_report(pred: np.ndarray, truth: np.ndarray) -> Dict[str, Any]:
    """Per-label Dice (31 L/R labels present in ``truth`` or ``pred``), merged-17 Dice and their means."""
    lr = dice_per_label(pred, truth, labels=eval_labels_lr())
    merged = dice_per_label(merge_hemispheres(np.asarray(pred)), merge_hemispheres(np.asarray(truth)),
                            labels=EVAL17_FS)
    mean = lambda d: round(float(np.mean(list(d.values()))), 4) if d else float("nan")  # noqa: E731
    return {"mean_lr": mean(lr), "mean_merged17": mean(merged), "per_label_lr": lr, "per_class_merged17": merged}


def evaluate_segmentation(predictor: Any, data_root: Path, *, montage_path: Optional[Path] = None
                          ) -> Dict[str, Any]:
    """The segmentation row on the voxelmorph scan; optional montage (image, truth, prediction)."""
    if not has_task(predictor, "seg"):
        return na_row("segmentation", "segmentation", GOAL)
    image = datasets.load(data_root, "voxelmorph_vol")
    truth = datasets.load_labels(data_root, "voxelmorph_seg")
    t0 = time.perf_counter()
    seg = predictor.predict(image, tasks=["seg"])["seg"]
    seconds = time.perf_counter() - t0
    rep = dice_report(np.asarray(seg.data), np.asarray(truth.data))
    if montage_path is not None:
        from brainfm.report.montage import write_montage

        write_montage(image, {"seg_truth_aseg": truth, "seg": seg}, montage_path)
    metrics = {"mean_dice_merged17": rep["mean_merged17"], "mean_dice_lr": rep["mean_lr"],
               "per_class_merged17": rep["per_class_merged17"], "per_label_lr": rep["per_label_lr"],
               "seconds": round(seconds, 2), "device": str(getattr(predictor, "device", "?"))}
    d = rep["mean_merged17"]
    return row("segmentation", metrics=metrics, anchor=MESHNET_ANCHOR, goal=GOAL, passed=bool(d >= 0.80),
               headline=f"merged-17 Dice {d:.3f}, per-hemisphere {rep['mean_lr']:.3f} (MeshNet 0.782)")
