"""A model's quality level: merged-17 Dice on a real T1 and on held-out label maps.

The level decides how a model is offered (model card, ``summary.json``, ``brainfm info``, the Slicer
model selector, the demo montage's title):

- below :data:`PREVIEW_DICE` (0.70) on the real T1: not used as the default;
- from 0.70: the default, marked **preview** with its measured Dice;
- from :data:`RELEASE_DICE` (0.80): the default, no mark.

Measurements go through the product path (:class:`brainfm.inference.Predictor`, outputs on the input
grid): the voxelmorph real T1 against its FreeSurfer aseg, and the two held-out label maps
(``training_seg_19/20``, never trained on) rendered as noise-free T1-like images.

>>> quality_level(0.65), quality_level(0.7), quality_level(0.83)
('below-preview', 'preview', 'release')
>>> quality_label({"level": "preview", "real_t1_dice17": 0.734})
'preview (merged-17 Dice 0.734 on a real T1)'
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np

PREVIEW_DICE = 0.70
RELEASE_DICE = 0.80
LEVELS = ("below-preview", "preview", "release")


def quality_level(real_t1_dice17: Optional[float]) -> str:
    """``below-preview`` / ``preview`` / ``release`` for a merged-17 Dice on the real T1."""
    if real_t1_dice17 is None or not np.isfinite(real_t1_dice17) or real_t1_dice17 < PREVIEW_DICE:
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


def _seg_dice(predictor: Any, image: Any, truth: np.ndarray) -> Dict[str, Any]:
    from brainfm.evaluation.segmentation import dice_report

    seg = np.asarray(predictor.predict(image, tasks=["seg"])["seg"].data)
    rep = dice_report(seg, truth)
    head = np.asarray(image.data) > 0
    return {"dice17": rep["mean_merged17"], "dice_lr": rep["mean_lr"],
            "labels_outside_head": int(np.count_nonzero((seg > 0) & ~head))}


def measure_quality(model: Union[str, Path, Any], data_root: Union[str, Path], *,
                    heldout: bool = True, threads: Optional[int] = None) -> Dict[str, Any]:
    """Dice of ``model`` (a path, registry id or :class:`~brainfm.inference.Predictor`) on the real
    T1 and, with ``heldout``, on the held-out label maps; plus its :func:`quality_level`.

    Returns ``{"real_t1_dice17", "real_t1_dice_lr", "heldout_dice17", "labels_outside_head",
    "level", "seconds"}``. Needs the development data under ``data_root`` (InputError naming the
    missing file otherwise).
    """
    from brainfm.evaluation import datasets
    from brainfm.evaluation.registration import render_image
    from brainfm.inference import Predictor

    t0 = time.perf_counter()
    predictor = model if isinstance(model, Predictor) else Predictor.from_pretrained(
        str(model), device="cpu", threads=threads)
    image = datasets.load(data_root, "voxelmorph_vol")
    truth = np.asarray(datasets.load_labels(data_root, "voxelmorph_seg").data)
    real = _seg_dice(predictor, image, truth)
    out: Dict[str, Any] = {"real_t1_dice17": real["dice17"], "real_t1_dice_lr": real["dice_lr"],
                           "labels_outside_head": real["labels_outside_head"]}
    if heldout:
        scores = []
        for name in datasets.held_out_names():
            labels = datasets.load_labels(data_root, name)
            r = _seg_dice(predictor, render_image(labels), np.asarray(labels.data))
            scores.append(r["dice17"])
            out["labels_outside_head"] += r["labels_outside_head"]
        out["heldout_dice17"] = round(float(np.mean(scores)), 4)
    out["level"] = quality_level(out["real_t1_dice17"])
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out
