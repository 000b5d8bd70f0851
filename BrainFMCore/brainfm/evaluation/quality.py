"""A model's quality level: merged-17 Dice on a real T1 and on held-out label maps.

The level (:mod:`brainfm.models.quality`) decides how a model is offered (model card,
``summary.json``, ``brainfm info``, the Slicer model selector, the demo montage's title).

Measurements go through the product path (:class:`brainfm.inference.Predictor`, outputs on the input
grid): the voxelmorph real T1 against its FreeSurfer aseg, and the two held-out label maps
(``training_seg_19/20``, never trained on) rendered as noise-free T1-like images.

>>> from brainfm.evaluation.quality import measure_quality
>>> q = measure_quality("model.safetensors", "../shared/data")  # doctest: +SKIP
>>> q["level"], q["real_t1_dice17"]  # doctest: +SKIP
('preview', 0.734)
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np

from brainfm.models.quality import LEVELS, PREVIEW_DICE, RELEASE_DICE, quality_label, quality_level  # noqa: F401


def _seg_dice(predictor: Any, image: Any, truth: np.ndarray, *, seg_method: str = "auto") -> Dict[str, Any]:
    from brainfm.evaluation.segmentation import dice_report

    seg = np.asarray(predictor.predict(image, tasks=["seg"], seg_method=seg_method)["seg"].data)
    rep = dice_report(seg, truth)
    head = np.asarray(image.data) > 0
    return {"dice17": rep["mean_merged17"], "dice_lr": rep["mean_lr"],
            "labels_outside_head": int(np.count_nonzero((seg > 0) & ~head))}


def measure_quality(model: Union[str, Path, Any], data_root: Union[str, Path], *,
                    heldout: bool = True, bias: bool = True, registration: bool = True, synthesis: bool = True,
                    threads: Optional[int] = None) -> Dict[str, Any]:
    """Dice of ``model`` (a path, registry id or :class:`~brainfm.inference.Predictor`) on the real
    T1 and, with ``heldout``, on the held-out label maps; plus its :func:`quality_level`. With
    ``bias`` and a bias-field head, also ``bias_applied_corr``: the mean correlation of its head's
    log bias field (``bias_method="head"``, not a field fitted to the segmentation) with known fields
    applied to the real T1
    (:func:`brainfm.evaluation.biasfield.applied_field_correlations`; below
    :data:`~brainfm.models.quality.BIAS_USABLE_CORR` bias results carry a warning). With
    ``registration`` and a registration head, also ``reg_carried_dice17``: the merged-17 Dice of the
    held-out labels carried A -> atlas -> B through its head's coordinates
    (:func:`brainfm.evaluation.registration.carried_dice`, ``reg_method="head"``). With ``synthesis``
    and T1, T2 and FLAIR heads, also ``synth_ssim``: the mean SSIM of the product's synthesis on the
    stroke trio's four pairs (:func:`brainfm.evaluation.synthesis.mean_ssim`).

    Returns ``{"real_t1_dice17", "real_t1_dice_lr", "heldout_dice17", "heldout_head_dice17",
    "labels_outside_head", ["bias_applied_corr", "reg_carried_dice17", "synth_ssim",] "level", "seconds"}``;
    ``heldout_head_dice17`` is the held-out Dice of the model's own labels (``seg_method="head"``),
    the others go through the product's default (refined labels for coarse models). Needs the development data under ``data_root``
    (InputError naming the missing file otherwise).
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
        scores, own = [], []
        for name in datasets.held_out_names():
            labels = datasets.load_labels(data_root, name)
            rendered, truth_h = render_image(labels), np.asarray(labels.data)
            r = _seg_dice(predictor, rendered, truth_h)
            scores.append(r["dice17"])
            out["labels_outside_head"] += r["labels_outside_head"]
            own.append(_seg_dice(predictor, rendered, truth_h, seg_method="head")["dice17"])
        out["heldout_dice17"] = round(float(np.mean(scores)), 4)
        # the model's own labels: what compares two weights (see HELDOUT_HEAD_NOTE)
        out["heldout_head_dice17"] = round(float(np.mean(own)), 4)
    if bias and "bias" in getattr(predictor, "available_tasks", []):
        from brainfm.evaluation.biasfield import applied_field_correlations, applied_t1, model_log_field

        t1, brain, fields = applied_t1(data_root)
        corrs = applied_field_correlations(model_log_field(predictor, method="head"), t1, brain, fields)
        out["bias_applied_corr"] = round(float(np.mean(corrs)), 4)
    if registration and "reg" in getattr(predictor, "available_tasks", []):
        from brainfm.evaluation.registration import carried_dice

        out["reg_carried_dice17"] = round(float(carried_dice(predictor, Path(data_root), reg_method="head")
                                                ["mean_merged17"]), 4)
    if synthesis:
        from brainfm.evaluation.synthesis import mean_ssim

        ssim = mean_ssim(predictor, Path(data_root))
        if ssim is not None:
            out["synth_ssim"] = round(ssim, 4)
    out["level"] = quality_level(out["real_t1_dice17"])
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out
