"""Bias-field row: correlation of the model's log bias field with SimpleITK N4's inside the brain,
and the model's time against N4's.

N4 (``N4BiasFieldCorrectionImageFilter``, 4 fitting levels x 50 iterations, Otsu head mask) runs on
an image shrunk by ``shrink`` and its log field is evaluated on the full grid
(``GetLogBiasFieldAsImage``), the usual way of running N4. The brain mask of the correlation is the
model's own segmentation (non-zero labels, CSF excluded) when it has a segmentation head, else the
Otsu head mask; the row says which.

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
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from brainfm.evaluation import datasets
from brainfm.evaluation.metrics import correlation
from brainfm.evaluation.rows import has_task, na_row, row
from brainfm.volume import Volume

GOAL = ">= 0.8 correlation with N4, faster than N4 at full resolution"


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


def evaluate_bias(predictor: Any, data_root: Path, *, shrink: int = 4,
                  anchors: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The bias-field row on seg3D MR (see the module docstring)."""
    if not has_task(predictor, "bias"):
        return na_row("bias field", "bias field", GOAL)
    image = datasets.load(data_root, "seg3d_mr")
    t0 = time.perf_counter()
    pred = predictor.predict(image, tasks=["bias"])
    seconds = time.perf_counter() - t0
    log_model = np.log(np.maximum(np.asarray(pred["bias_field"].data, np.float64), 1e-6))
    head = otsu_mask(image)
    mask, mask_kind = head, "head (Otsu)"
    if has_task(predictor, "seg"):
        seg = predictor.predict(image, tasks=["seg"])["seg"].data
        brain = brain_mask_from_seg(seg) & head
        if brain.sum() > 1000:
            mask, mask_kind = brain, "brain (model segmentation) within the Otsu head mask"
    log_n4, n4_seconds = n4_log_field(image, shrink=shrink, mask=head)
    corr = correlation(log_model, log_n4, mask=mask)
    anchor = dict((anchors or {}).get("n4_seg3d", {}))
    n4_full = anchor.get("full_resolution_seconds")
    # without a full-resolution time, the finest measured N4 (shrink 2) is the reference
    n4_ref = n4_full if n4_full is not None else anchor.get("shrink2_seconds")
    ref_name = "full res" if n4_full is not None else "shrink 2"
    metrics = {"correlation_with_n4": corr, "model_seconds": round(seconds, 2),
               f"n4_shrink{shrink}_seconds_here": round(n4_seconds, 2), "mask": mask_kind,
               "device": str(getattr(predictor, "device", "?"))}
    passed = bool(corr >= 0.8 and n4_ref is not None and seconds < float(n4_ref))
    return row("bias field", metrics=metrics, anchor=anchor, goal=GOAL, passed=passed,
               headline=f"corr {corr:.3f}, {seconds:.1f} s (N4 {ref_name}: {n4_ref} s)")
