"""Bias field fitted to a segmentation: the smooth multiplicative field that makes every tissue class
as uniform as possible.

Inside each class of a brain segmentation (left and right structures merged, CSF and background left
out), a bias-free image is assumed nearly constant. The log image is then a class mean plus a smooth
log field, modelled as a tensor product of cubic B-splines (one knot interval per ``spacing_mm`` of
the brain's extent, at least one). Class means and spline coefficients are fitted together by
weighted least squares, each class weighted by its inverse variance, voxels more than ``clip``
robust standard deviations (1.4826 x the median absolute deviation) from their class median dropped,
for a few rounds; a small ridge keeps the coefficients where the brain has few samples. Only voxels inside their structure are used (the
label equals all six neighbours on the sampling grid of ``sample_mm``), so partial volume and the
segmentation's boundary errors weigh little. The method is that of the tissue-class bias models of
SPM, FAST and SAMSEG with the segmentation given; here the segmentation is the model's.

Measured on a real T1 with three known smooth fields (``brainfm eval-table --rows bias``), the fit
to the compact model's segmentation follows the fields more closely than N4.

>>> import numpy as np
>>> x, y, z = np.meshgrid(*[np.linspace(-1, 1, 40)] * 3, indexing="ij")
>>> labels = np.where(x ** 2 + y ** 2 + z ** 2 < 0.8, np.where(z > 0, 2, 3), 0)
>>> clean = np.where(labels == 2, 100.0, 60.0) * (labels > 0)
>>> log_field = 0.2 * x - 0.1 * y * z
>>> est = fit_log_field(clean * np.exp(log_field), labels, voxel_mm=(4.0, 4.0, 4.0))
>>> from brainfm.evaluation.metrics import correlation
>>> round(correlation(est, log_field, mask=labels > 0), 2)
1.0
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

#: labels never used for the fit: background and extra-cerebral CSF (its intensity varies too much)
EXCLUDED = (0, 24)
#: one knot interval of the field per this many mm of brain; tissue classes sampled every SAMPLE_MM
SPACING_MM = 100.0
SAMPLE_MM = 2.0
#: at most this many voxels enter the least squares (a regular subset of the usable ones)
MAX_SAMPLES = 80_000


def spline_basis(n: int, count: int, lo: float, hi: float) -> np.ndarray:
    """``(n, count)`` cubic B-spline basis (clamped, uniform knots) at voxel indices ``0 .. n-1``.

    Index ``lo`` maps to the start of the spline domain and ``hi`` to its end; indices outside are
    clamped, so the field is constant beyond the fitted box. Rows sum to 1.

    >>> b = spline_basis(5, 4, 1, 3)
    >>> b.shape, bool(np.allclose(b.sum(1), 1)), bool(np.allclose(b[0], b[1]))
    ((5, 4), True, True)
    """
    from scipy.interpolate import BSpline

    if count < 4:
        raise ValueError(f"a cubic B-spline basis needs at least 4 functions, got {count}")
    inner = np.linspace(0.0, 1.0, count - 2)
    knots = np.concatenate([[0.0] * 3, inner, [1.0] * 3])
    t = np.clip((np.arange(n, dtype=np.float64) - lo) / max(hi - lo, 1e-9), 0.0, 1.0)
    return np.asarray(BSpline.design_matrix(t, knots, 3).toarray(), np.float64)


def _interior(lab: np.ndarray) -> np.ndarray:
    """Voxels whose label equals those of their six neighbours (edges of the array excluded)."""
    ok = np.zeros(lab.shape, bool)
    core = (slice(1, -1),) * 3
    inner = np.ones(tuple(max(s - 2, 0) for s in lab.shape), bool)
    c = lab[core]
    for axis in range(3):
        for shift in (0, 2):
            sl = [slice(1, -1)] * 3
            sl[axis] = slice(shift, lab.shape[axis] - 2 + shift)
            inner &= lab[tuple(sl)] == c
    ok[core] = inner
    return ok


def fit_log_field(image: np.ndarray, labels: np.ndarray, *, voxel_mm: Sequence[float] = (1.0, 1.0, 1.0),
                  spacing_mm: float = SPACING_MM, sample_mm: float = SAMPLE_MM, ridge: float = 0.1, iterations: int = 8,
                  clip: float = 2.5, min_sigma: float = 0.05, excluded: Sequence[int] = EXCLUDED,
                  merge_hemispheres: bool = True) -> np.ndarray:
    """Natural-log bias field (float32, ``image``'s shape) that makes each class of ``labels`` uniform.

    ``image``: intensities (> 0 where usable); ``labels``: FreeSurfer numbers on the same grid;
    ``voxel_mm``: voxel edges (mm) of that grid. The field has zero mean over the voxels used. Neither
    input is modified. Raises ``ValueError`` when too few labelled voxels are left to fit the field.

    >>> img = np.full((16, 16, 16), 50.0); lab = np.full((16, 16, 16), 2)
    >>> float(np.abs(fit_log_field(img, lab, voxel_mm=(8, 8, 8))).max()) < 1e-6
    True
    """
    from brainfm.labels.volumes import merge_hemispheres as merge

    img = np.asarray(image)
    lab_full = np.asarray(labels)
    if img.shape != lab_full.shape or img.ndim != 3:
        raise ValueError(f"image {img.shape} and labels {lab_full.shape} must be 3-D arrays of one shape")
    vox = np.asarray(voxel_mm, np.float64)
    step = tuple(max(1, int(round(sample_mm / v))) for v in vox)
    sub = tuple(slice(None, None, s) for s in step)
    lab = np.asarray(lab_full[sub]).astype(np.int32)
    if merge_hemispheres:
        lab = np.asarray(merge(lab))
    val = np.asarray(img[sub], np.float64)
    ok = _interior(lab) & ~np.isin(lab, np.asarray(excluded)) & np.isfinite(val) & (val > 0)
    idx = np.nonzero(ok)
    n_all = idx[0].size
    if n_all > MAX_SAMPLES:  # a regular subset, the same every run
        keep = np.linspace(0, n_all - 1, MAX_SAMPLES).astype(np.int64)
        idx = tuple(i[keep] for i in idx)
    full_idx = [i * s for i, s in zip(idx, step)]
    lo = [float(i.min()) if i.size else 0.0 for i in full_idx]
    hi = [float(i.max()) if i.size else 0.0 for i in full_idx]
    counts = [max(1, int(round((h - l) * v / spacing_mm))) + 3 for l, h, v in zip(lo, hi, vox)]
    n_coef = int(np.prod(counts))
    if idx[0].size < 20 * n_coef:
        raise ValueError(f"too few labelled voxels inside structures ({idx[0].size}) to fit a bias field "
                         f"with {n_coef} spline coefficients")
    bases = [spline_basis(n, c, l, h) for n, c, l, h in zip(img.shape, counts, lo, hi)]
    y = np.log(val[idx])
    classes, ci = np.unique(lab[idx], return_inverse=True)
    k = classes.size
    rows = [b[fi] for b, fi in zip(bases, full_idx)]
    design = (rows[0][:, :, None, None] * rows[1][:, None, :, None] * rows[2][:, None, None, :]).reshape(y.size, -1)
    weight = np.ones(y.size)
    coef = np.zeros(n_coef)
    members = [np.flatnonzero(ci == c) for c in range(k)]
    for _ in range(max(1, int(iterations))):
        resid = y - design @ coef
        # robust centre and spread per class (median, 1.4826 x median absolute deviation): voxels of
        # another tissue that the segmentation put in the class do not widen the spread that drops them
        centre = np.array([np.median(resid[m]) for m in members])
        err = resid - centre[ci]
        sigma = np.maximum(np.array([1.4826 * np.median(np.abs(err[m])) for m in members]), min_sigma)
        weight = (np.abs(err) < clip * sigma[ci]) / sigma[ci] ** 2
        mean = np.bincount(ci, weight * resid, k) / np.maximum(np.bincount(ci, weight, k), 1e-12)
        wd = design.T * weight
        normal = wd @ design
        lam = ridge * np.trace(normal) / n_coef
        coef = np.linalg.solve(normal + lam * np.eye(n_coef), wd @ (y - mean[ci]))
    # the field on the whole grid, in float32 from the start (4 bytes per voxel)
    f32 = [b.astype(np.float32) for b in bases]
    field = np.einsum("xi,yj,zk,ijk->xyz", f32[0], f32[1], f32[2], coef.reshape(counts).astype(np.float32),
                      optimize=True)
    field -= np.float32((design @ coef).mean())
    return field
