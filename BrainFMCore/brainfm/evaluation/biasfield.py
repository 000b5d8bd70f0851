"""Bias-field row: correlation of the model's log bias field with SimpleITK N4's inside the brain,
and the model's time against N4's.

N4 (``N4BiasFieldCorrectionImageFilter``, 4 fitting levels x 50 iterations, Otsu head mask) runs on
an image shrunk by ``shrink`` and its log field is evaluated on the full grid
(``GetLogBiasFieldAsImage``), the usual way of running N4. The brain mask of the correlation is the
model's own segmentation (non-zero labels, CSF excluded) when it has a segmentation head, else the
Otsu head mask; the row says which.

The row measures what the product gives (``bias_method="auto"``: the model's head, or a field fitted
to its segmentation when the model's quality says the head is not reliable) and names the method;
when that is the fit, the head's own correlation with the applied fields is reported beside it.

N4's own field is an estimate, so the row also applies known fields to the voxelmorph real T1 (smooth
random log fields drawn the way the training generator draws them: a 3 x 3 x 3 grid of normal values,
trilinearly upsampled, zero mean in the brain) and scores the correlation of the estimated log field
with each applied one inside its FreeSurfer brain mask (:func:`applied_field_correlations`). N4 scored
on the same fields is the anchor (``n4_applied_t1`` in ``anchors.json``).

>>> import numpy as np
>>> from brainfm.volume import Volume
>>> x, y, z = np.meshgrid(*[np.linspace(-1, 1, 24)] * 3, indexing="ij")
>>> head = (x ** 2 + y ** 2 + z ** 2) < 0.8
>>> field = np.exp(0.3 * x)
>>> img = Volume((np.where(head, 100.0, 0.0) * field).astype(np.float32), np.diag([4.0, 4, 4, 1]))
>>> log_n4, seconds = n4_log_field(img, shrink=1, iterations=(20, 20))
>>> from brainfm.evaluation.metrics import correlation
>>> correlation(log_n4, 0.3 * x, mask=head) > 0.9
True
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from brainfm.evaluation import datasets
from brainfm.evaluation.metrics import correlation
from brainfm.evaluation.rows import has_task, na_row, row
from brainfm.volume import Volume

GOAL = ">= 0.8 correlation with N4 and with fields applied to a real T1, faster than N4 at full resolution"
#: the applied fields: how many, std of the log field at the control points, control grid, seed
APPLIED = {"n": 3, "std": 0.3, "grid": 3, "seed": 0}


def otsu_mask(image: Volume) -> np.ndarray:
    """Head/foreground mask by Otsu's threshold (SimpleITK), largest values = 1."""
    import SimpleITK as sitk

    from brainfm.io.sitk_bridge import sitk_array, to_sitk

    m = sitk.OtsuThreshold(to_sitk(image, dtype=np.float32), 0, 1, 200)
    return sitk_array(m).astype(bool)


def n4_log_field(image: Volume, *, shrink: int = 4, mask: Optional[np.ndarray] = None,
                 iterations: Sequence[int] = (50, 50, 50, 50), threads: Optional[int] = None
                 ) -> Tuple[np.ndarray, float]:
    """N4 natural-log bias field on ``image``'s grid and the N4 wall time in seconds.

    ``mask`` default: :func:`otsu_mask`. ``threads``: SimpleITK threads (default: its own).
    """
    import SimpleITK as sitk

    from brainfm.io.sitk_bridge import sitk_array, to_sitk

    if threads is not None:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, int(threads)))
    img = to_sitk(image, dtype=np.float32)
    m = otsu_mask(image) if mask is None else np.asarray(mask, bool)
    mimg = to_sitk(image.with_data(m), dtype=np.uint8)  # the image's geometry
    t0 = time.perf_counter()
    small, small_mask = (img, mimg) if shrink <= 1 else (sitk.Shrink(img, [int(shrink)] * 3),
                                                         sitk.Shrink(mimg, [int(shrink)] * 3))
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([int(i) for i in iterations])
    n4.Execute(small, small_mask)
    log_field = n4.GetLogBiasFieldAsImage(img)
    seconds = time.perf_counter() - t0
    return sitk_array(log_field).astype(np.float32), seconds


def brain_mask_from_seg(seg: np.ndarray) -> np.ndarray:
    """Brain voxels of a FreeSurfer-numbered segmentation (non-zero, CSF 24 excluded)."""
    s = np.asarray(seg)
    return (s != 0) & (s != 24)


def applied_log_fields(shape: Sequence[int], mask: np.ndarray, *, n: int = APPLIED["n"],
                       std: float = APPLIED["std"], grid: int = APPLIED["grid"],
                       seed: int = APPLIED["seed"]) -> List[np.ndarray]:
    """``n`` smooth random natural-log bias fields on a ``shape`` grid, zero mean inside ``mask``.

    Drawn like the training generator's (:func:`brainfm.generator.interp.upsample_noise`: normal values
    of std ``std`` on a ``grid``-per-axis control grid, trilinearly upsampled); the same ``seed`` gives
    the same fields.

    >>> m = np.ones((20, 24, 28), bool)
    >>> f = applied_log_fields(m.shape, m, n=2)
    >>> len(f), f[0].shape, abs(float(f[0].mean())) < 1e-6, bool(np.allclose(f[1], applied_log_fields(m.shape, m, n=2)[1]))
    (2, (20, 24, 28), True, True)
    """
    import torch

    from brainfm.generator.interp import upsample_noise

    g = torch.Generator().manual_seed(int(seed))
    fields = upsample_noise([int(grid)] * 3, [int(s) for s in shape], batch=int(n), generator=g, device="cpu",
                            std=torch.full((int(n),), float(std)))
    out = []
    for f in fields[:, 0].double().numpy():
        out.append((f - f[mask].mean()).astype(np.float32))
    return out


def applied_field_correlations(estimate_log: Callable[[Volume], np.ndarray], image: Volume, mask: np.ndarray,
                               fields: Sequence[np.ndarray]) -> List[float]:
    """Correlation, inside ``mask``, of ``estimate_log(image x exp(field))`` with each applied ``field``.

    ``estimate_log`` maps a volume to its estimated natural-log bias field on the same grid (a model's,
    or :func:`n4_log_field`'s). ``image`` is not modified.

    >>> x, y, z = np.meshgrid(*[np.linspace(-1, 1, 16)] * 3, indexing="ij")
    >>> img = Volume(np.full((16, 16, 16), 100.0, np.float32), np.eye(4))
    >>> oracle = lambda v: np.log(np.asarray(v.data, np.float64) / 100.0)
    >>> applied_field_correlations(oracle, img, np.ones(img.shape, bool), [0.2 * x, 0.1 * y * z])
    [1.0, 1.0]
    """
    data = np.asarray(image.data, np.float64)
    return [round(float(correlation(estimate_log(image.with_data((data * np.exp(f)).astype(np.float32))), f,
                                    mask=mask)), 4) for f in fields]


def model_log_field(predictor: Any, *, method: str = "auto") -> Callable[[Volume], np.ndarray]:
    """``image -> natural log of the model's bias field`` on the image's grid, by ``method`` (the
    ``bias_method`` of :meth:`brainfm.Predictor.predict`)."""
    def estimate(image: Volume) -> np.ndarray:
        field = np.asarray(predictor.predict(image, tasks=["bias"], bias_method=method)["bias_field"].data,
                           np.float64)
        return np.log(np.maximum(field, 1e-6))
    return estimate


def applied_t1(data_root: Path) -> Tuple[Volume, np.ndarray, List[np.ndarray]]:
    """The voxelmorph real T1, its FreeSurfer brain mask and the applied fields (:data:`APPLIED`)."""
    image = datasets.load(data_root, "voxelmorph_vol")
    brain = brain_mask_from_seg(np.asarray(datasets.load_labels(data_root, "voxelmorph_seg").data))
    return image, brain, applied_log_fields(image.shape, brain)


def evaluate_bias(predictor: Any, data_root: Path, *, shrink: int = 4,
                  anchors: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The bias-field row on seg3D MR (see the module docstring)."""
    if not has_task(predictor, "bias"):
        return na_row("bias field", "bias field", GOAL)
    image = datasets.load(data_root, "seg3d_mr")
    t0 = time.perf_counter()
    # one pass of the backbone gives the field and, where the model segments, the brain mask
    with_seg = has_task(predictor, "seg")
    pred = predictor.predict(image, tasks=["bias", "seg"] if with_seg else ["bias"])
    seconds = time.perf_counter() - t0
    log_model = np.log(np.maximum(np.asarray(pred["bias_field"].data, np.float64), 1e-6))
    head = otsu_mask(image)
    mask, mask_kind = head, "head (Otsu)"
    if with_seg:
        brain = brain_mask_from_seg(np.asarray(pred["seg"].data)) & head
        if brain.sum() > 1000:
            mask, mask_kind = brain, "brain (model segmentation) within the Otsu head mask"
    log_n4, n4_seconds = n4_log_field(image, shrink=shrink, mask=head)
    corr = correlation(log_model, log_n4, mask=mask)
    t1, brain_t1, fields = applied_t1(data_root)
    applied = applied_field_correlations(model_log_field(predictor), t1, brain_t1, fields)
    applied_mean = round(float(np.mean(applied)), 4)
    method = (getattr(pred, "metadata", None) or {}).get("bias_method") or "model head"
    head_applied = None
    if method != "model head":  # the product fitted the field: the head's own score beside it
        head_applied = round(float(np.mean(applied_field_correlations(
            model_log_field(predictor, method="head"), t1, brain_t1, fields))), 4)
    n4_applied = (anchors or {}).get("n4_applied_t1", {}).get("mean_correlation")
    anchor = dict((anchors or {}).get("n4_seg3d", {}))
    if n4_applied is not None:
        anchor["n4_applied_t1"] = dict((anchors or {})["n4_applied_t1"])
    n4_full = anchor.get("full_resolution_seconds")
    # without a full-resolution time, the finest measured N4 (shrink 2) is the reference
    n4_ref = n4_full if n4_full is not None else anchor.get("shrink2_seconds")
    ref_name = "full res" if n4_full is not None else "shrink 2"
    metrics = {"correlation_with_n4": corr, "correlation_with_applied": applied_mean,
               "correlation_with_applied_each": applied, "n4_correlation_with_applied": n4_applied,
               "method": method, "head_correlation_with_applied": head_applied,
               "model_seconds": round(seconds, 2), "model_tasks": ["bias", "seg"] if with_seg else ["bias"],
               f"n4_shrink{shrink}_seconds_here": round(n4_seconds, 2), "mask": mask_kind,
               "device": str(getattr(predictor, "device", "?"))}
    passed = bool(corr >= 0.8 and applied_mean >= 0.8 and n4_ref is not None and seconds < float(n4_ref))
    n4_text = "" if n4_applied is None else f" (N4 {n4_applied:.3f})"
    return row("bias field", metrics=metrics, anchor=anchor, goal=GOAL, passed=passed,
               headline=f"{method}: corr {corr:.3f} with N4; {applied_mean:.3f} with fields applied to a real "
                        f"T1{n4_text}; {seconds:.1f} s{' with the brain mask' if with_seg else ''} "
                        f"(N4 {ref_name}: {n4_ref} s)"
                        + ("" if head_applied is None else f"; the head alone {head_applied:.3f}"))
