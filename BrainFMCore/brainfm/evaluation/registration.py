"""Registration row: Dice of labels carried A -> atlas -> B through the predicted atlas coordinates.

The product's map is measured (``reg_method`` auto: the model's head, or a map fitted to its
segmentations when its measured quality says the head is not reliable), and the head beside it.
A and B are the 2 held-out label maps (training_seg_19/20) rendered as noise-free T1-like images
with the generator's physics (MPRAGE, nominal tissue parameters, no deformation:
:func:`brainfm.generator.physics.render_t1_like`). The model predicts atlas coordinates for both.
A's labels are splatted into atlas space (1 mm grid, majority vote per atlas voxel, holes filled
with the nearest labelled atlas voxel), then read back at B's predicted coordinates (nearest).
Dice vs B's own labels on the 31 per-hemisphere structures of the 17-class evaluation (and merged).

>>> import numpy as np
>>> lab = np.zeros((6, 6, 6), np.int32); lab[:3] = 2; lab[3:] = 41
>>> ijk = np.stack(np.meshgrid(*[np.arange(6.0)] * 3, indexing="ij"), -1)
>>> moved = carry_labels(lab, ijk + 10.0, ijk + 10.0)   # same atlas coordinates: identity
>>> bool(np.array_equal(moved, lab))
True
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
from scipy import ndimage

from brainfm.evaluation import datasets
from brainfm.evaluation.rows import has_task, na_row, row
from brainfm.evaluation.segmentation import dice_report
from brainfm.tasks.registration import METHOD_NAMES
from brainfm.volume import Volume

GOAL = ">= SyN's Dice, >= 10x faster than SyN"
MAX_ATLAS_MM = 256.0  #: atlas coordinates beyond +-this (mm) are ignored when splatting A's labels


def render_image(labels: Volume) -> Volume:
    """Noise-free physics T1 rendering (no deformation) of a FreeSurfer label map."""
    from brainfm.generator.physics import render_t1_like

    return labels.with_data(render_t1_like(np.asarray(labels.data)))


def held_out_pair(data_root: Path) -> Tuple[Volume, Volume, Volume, Volume]:
    """(labels A, labels B, image A, image B) of the held-out pair."""
    a, b = (datasets.load_labels(data_root, n) for n in datasets.held_out_names())
    return a, b, render_image(a), render_image(b)


def carry_labels(labels_a: np.ndarray, coords_a: np.ndarray, coords_b: np.ndarray, *,
                 mask_a: Optional[np.ndarray] = None, mask_b: Optional[np.ndarray] = None,
                 step: float = 1.0) -> np.ndarray:
    """A's labels on B's grid through atlas space (see the module docstring).

    ``coords_*``: (X, Y, Z, 3) atlas coordinates (mm) of every voxel of A / B; ``mask_*``: voxels
    whose coordinates are meaningful (default: A's non-zero labels, all of B). Returns int32 labels
    on B's grid (0 outside ``mask_b``).
    """
    lab = np.asarray(labels_a)
    ma = lab != 0 if mask_a is None else np.asarray(mask_a, bool)
    mb = np.ones(coords_b.shape[:3], bool) if mask_b is None else np.asarray(mask_b, bool)
    pa, pb = np.asarray(coords_a, np.float64)[ma], np.asarray(coords_b, np.float64)[mb]
    lab_a = lab[ma]
    keep = np.all(np.abs(pa) <= MAX_ATLAS_MM, axis=1)  # wild predictions must not blow up the grid
    pa, lab_a = pa[keep], lab_a[keep]
    out = np.zeros(coords_b.shape[:3], np.int32)
    if len(pa) == 0 or len(pb) == 0:
        return out
    lo = np.floor(pa.min(0) / step) - 1
    idx_a = np.rint(pa / step - lo).astype(np.int64)
    shape = tuple(int(s) for s in idx_a.max(0) + 2)
    flat = np.ravel_multi_index(idx_a.T, shape)
    # majority vote per atlas voxel: count (voxel, label) pairs, keep the most frequent label
    values, inverse = np.unique(lab_a, return_inverse=True)
    pair = flat * len(values) + inverse.ravel()
    keys, counts = np.unique(pair, return_counts=True)
    vox, lab_idx = keys // len(values), keys % len(values)
    order = np.lexsort((-counts, vox))
    first = np.ones(len(order), bool)
    first[1:] = vox[order][1:] != vox[order][:-1]
    atlas = np.zeros(shape, np.int32)
    chosen = order[first]
    atlas.flat[vox[chosen]] = values[lab_idx[chosen]]
    filled = atlas != 0
    if not filled.any():
        return out
    # fill holes of the splat with the nearest labelled atlas voxel
    _, near = ndimage.distance_transform_edt(~filled, return_indices=True)
    atlas = atlas[tuple(near)]
    idx_b = np.rint(pb / step - lo).astype(np.int64)
    inside = np.all((idx_b >= 0) & (idx_b < np.array(shape)), axis=1)
    vals = np.zeros(len(pb), np.int32)
    vals[inside] = atlas[tuple(idx_b[inside].T)]  # outside A's atlas extent: background
    out[mb] = vals
    return out


def carried_dice(predictor: Any, data_root: Path, *, reg_method: str = "auto") -> Dict[str, Any]:
    """Labels of held-out map A carried to B through the atlas coordinates ``predictor`` gives both
    renderings (``reg_method``); :func:`~brainfm.evaluation.segmentation.dice_report` of the result
    against B, plus ``seconds`` (per image) and ``method`` (what made the coordinates)."""
    lab_a, lab_b, img_a, img_b = held_out_pair(data_root)
    atlas = None
    try:
        atlas = datasets.data_path(data_root, "atlas")
    except Exception:  # noqa: BLE001 - without the atlas the head is used (the fit needs it)
        atlas = None
    t0 = time.perf_counter()
    coords, method = [], None
    for img in (img_a, img_b):
        pred = predictor.predict(img, tasks=["reg"], atlas=atlas, reg_method=reg_method)
        coords.append(np.asarray(pred["reg_atlas_coords"].data, np.float32))
        method = pred.metadata.get("reg_method")
    seconds = (time.perf_counter() - t0) / 2.0
    moved = carry_labels(np.asarray(lab_a.data), coords[0], coords[1],
                         mask_a=np.asarray(img_a.data) > 0, mask_b=np.asarray(img_b.data) > 0)
    return {**dice_report(moved, np.asarray(lab_b.data)), "seconds": seconds, "method": method}


def atlas_segmentation(predictor: Any, data_root: Path) -> Optional[Dict[str, Any]]:
    """What the fitted registration needs once per model: its segmentation of the atlas template
    (:meth:`~brainfm.inference.Predictor.atlas_labels`). Done here, before the pair, so that the pair's
    time is that of every later scan. Returns ``{"seconds", "from_cache"}`` (``from_cache``: read from the
    disk cache, :mod:`brainfm.inference.atlaslabels`), or None when ``reg_method="auto"`` uses the
    model's head or the atlas is not in ``data_root``."""
    from brainfm.inference import atlaslabels
    from brainfm.inference.preprocess import load_image

    if predictor.registration_method("auto") != "fit":
        return None
    try:
        atlas = load_image(datasets.data_path(data_root, "atlas"))
    except Exception:  # noqa: BLE001 - without the atlas the head is used
        return None
    sha = str(getattr(predictor.info, "sha256", "") or "")
    from_cache = bool(sha) and atlaslabels.cache_path(sha, atlaslabels.atlas_key(atlas)).is_file()
    t0 = time.perf_counter()
    predictor.atlas_labels(atlas)
    return {"seconds": round(time.perf_counter() - t0, 2), "from_cache": from_cache}


def evaluate_registration(predictor: Any, data_root: Path, *, anchors: Optional[Dict[str, Any]] = None
                          ) -> Dict[str, Any]:
    """The registration row (see the module docstring): the product's map (``reg_method`` auto) and,
    when that was fitted to the segmentations, the model's head beside it."""
    if not has_task(predictor, "reg"):
        return na_row("registration", "registration", GOAL)
    once = atlas_segmentation(predictor, data_root)
    rep = carried_dice(predictor, data_root)
    seconds = rep["seconds"]
    anchor = dict((anchors or {}).get("registration", {}))
    metrics = {"mean_dice_lr": rep["mean_lr"], "mean_dice_merged17": rep["mean_merged17"],
               "per_label": rep["per_label_lr"], "model_seconds_per_image": round(seconds, 2),
               "device": str(getattr(predictor, "device", "?")), "method": rep["method"]}
    head_note = ""
    if once is not None:
        metrics["atlas_segmentation_seconds"], metrics["atlas_segmentation_from_cache"] = once["seconds"], once["from_cache"]
        head_note = (f"; once per model, before the pair, the atlas was {'read from the cache' if once['from_cache'] else 'segmented'} "
                     f"in {once['seconds']:.1f} s")
    if rep["method"] == METHOD_NAMES["fit"]:
        head = carried_dice(predictor, data_root, reg_method="head")
        metrics["head_dice_lr"], metrics["head_dice_merged17"] = head["mean_lr"], head["mean_merged17"]
        head_note += f"; the head alone {head['mean_lr']:.3f} / {head['mean_merged17']:.3f}"
    ref_dice, ref_s = anchor.get("mean_dice_lr"), anchor.get("seconds")
    passed = None
    if ref_dice is not None and ref_s is not None:
        passed = bool(rep["mean_lr"] >= float(ref_dice) and 2 * seconds * 10 <= float(ref_s))
    how = f"{rep['method']}: " if rep["method"] else ""
    return row("registration", metrics=metrics, anchor=anchor, goal=GOAL, passed=passed,
               headline=f"{how}Dice {rep['mean_lr']:.3f} (L/R), {rep['mean_merged17']:.3f} (merged 17); "
                        f"{2 * seconds:.1f} s for the pair{head_note}")
