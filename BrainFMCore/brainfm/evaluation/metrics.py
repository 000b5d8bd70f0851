"""Metrics of the evaluation table: Dice, linear intensity fit, PSNR / SSIM inside a mask
(SSIM from scikit-image), Pearson correlation.

All functions take numpy arrays, never modify them and return plain Python floats/dicts.

>>> import numpy as np
>>> a = np.zeros((4, 4, 4), int); a[:2] = 2; b = np.zeros_like(a); b[:, :2] = 2
>>> dice_per_label(a, b)
{2: 0.5}
>>> x = np.arange(8.0); round(correlation(x, 3 * x + 1), 6)
1.0
>>> fitted = linear_fit(x, 2 * x + 5); bool(np.allclose(fitted, 2 * x + 5))
True
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np

from brainfm.errors import InputError


def _same_shape(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape:
        raise InputError(f"{what}: arrays differ in shape {a.shape} vs {b.shape}")


def dice_per_label(pred: np.ndarray, truth: np.ndarray, *, labels: Optional[Iterable[int]] = None
                   ) -> Dict[int, float]:
    """Hard Dice per label. ``labels`` default: every non-zero value of ``truth``.

    A label absent from both maps is skipped; absent from one only, its Dice is 0.

    >>> import numpy as np
    >>> dice_per_label(np.array([1, 1, 0, 3]), np.array([1, 0, 0, 2]), labels=[1, 2, 4])
    {1: 0.666667, 2: 0.0}
    """
    p, t = np.asarray(pred), np.asarray(truth)
    _same_shape(p, t, "dice")
    if labels is None:
        labels = [int(v) for v in np.unique(t) if v != 0]
    # one bincount over the pair (pred, truth) of each voxel instead of one pass per label
    keys = sorted({int(v) for v in labels})
    idx = {v: i + 1 for i, v in enumerate(keys)}
    lut_vals = np.array(keys, dtype=np.int64)

    def code(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.int64, copy=False).ravel()
        pos = np.searchsorted(lut_vals, x)
        pos = np.clip(pos, 0, max(len(keys) - 1, 0))
        hit = (lut_vals[pos] == x) if len(keys) else np.zeros(x.shape, bool)
        return np.where(hit, pos + 1, 0)

    n = len(keys) + 1
    cp, ct = code(p), code(t)
    joint = np.bincount(cp * n + ct, minlength=n * n).reshape(n, n)
    out: Dict[int, float] = {}
    for v in keys:
        i = idx[v]
        sp, st = int(joint[i, :].sum()), int(joint[:, i].sum())
        if sp + st == 0:
            continue
        out[v] = round(2.0 * int(joint[i, i]) / (sp + st), 6)
    return out


def mean_dice(pred: np.ndarray, truth: np.ndarray, *, labels: Optional[Iterable[int]] = None) -> float:
    """Mean of :func:`dice_per_label` (nan when no label is present).

    >>> import numpy as np
    >>> mean_dice(np.array([1, 2, 2]), np.array([1, 2, 0]))
    0.833333
    """
    d = dice_per_label(pred, truth, labels=labels)
    return round(float(np.mean(list(d.values()))), 6) if d else float("nan")


def linear_fit(source: np.ndarray, target: np.ndarray, *, mask: Optional[np.ndarray] = None) -> np.ndarray:
    """``a * source + b`` with (a, b) the least-squares fit of ``target`` inside ``mask``.

    Applied to the whole ``source`` (float64). This is the per-image linear intensity fit that
    makes a synthesis comparable to a real image whose scale is arbitrary.

    >>> import numpy as np
    >>> linear_fit(np.array([0.0, 1.0, 2.0]), np.array([1.0, 3.0, 5.0])).tolist()
    [1.0, 3.0, 5.0]
    """
    s = np.asarray(source, np.float64)
    t = np.asarray(target, np.float64)
    _same_shape(s, t, "linear_fit")
    m = np.ones(s.shape, bool) if mask is None else np.asarray(mask, bool)
    if int(m.sum()) < 2:
        raise InputError("linear_fit needs at least 2 voxels inside the mask")
    x, y = s[m], t[m]
    var = float(x.var())
    a = float(((x - x.mean()) * (y - y.mean())).mean() / var) if var > 0 else 0.0
    b = float(y.mean() - a * x.mean())
    return a * s + b


def _data_range(target: np.ndarray, mask: np.ndarray) -> float:
    vals = target[mask]
    rng = float(vals.max() - vals.min())
    return rng if rng > 0 else 1.0


def _masked_pair(pred, target, mask, data_range, what: str):
    """float64 copies of ``pred``/``target``, the boolean mask (all voxels by default) and the data
    range (target max - min inside the mask unless given); refuses shape mismatches and empty masks."""
    p, t = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    _same_shape(p, t, what)
    m = np.ones(p.shape, bool) if mask is None else np.asarray(mask, bool)
    if not m.any():
        raise InputError(f"{what}: empty mask")
    return p, t, m, (_data_range(t, m) if data_range is None else float(data_range))


def psnr_masked(pred: np.ndarray, target: np.ndarray, *, mask: Optional[np.ndarray] = None,
                data_range: Optional[float] = None) -> float:
    """PSNR in dB inside ``mask``; ``data_range`` default: target max - min inside the mask.

    >>> import numpy as np
    >>> round(psnr_masked(np.zeros(4), np.array([0.0, 0.0, 0.0, 1.0])), 3)
    6.021
    """
    p, t, m, rng = _masked_pair(pred, target, mask, data_range, "psnr")
    mse = float(((p[m] - t[m]) ** 2).mean())
    return float("inf") if mse == 0 else round(10.0 * math.log10(rng ** 2 / mse), 4)


def ssim_masked(pred: np.ndarray, target: np.ndarray, *, mask: Optional[np.ndarray] = None,
                data_range: Optional[float] = None) -> float:
    """Mean SSIM (scikit-image ``structural_similarity``, 7^3 window, full map) over ``mask``.

    >>> import numpy as np
    >>> x = np.random.default_rng(0).random((12, 12, 12))
    >>> ssim_masked(x, x)
    1.0
    """
    from skimage.metrics import structural_similarity

    p, t, m, rng = _masked_pair(pred, target, mask, data_range, "ssim")
    _, smap = structural_similarity(p, t, data_range=rng, full=True, win_size=7)
    return round(float(smap[m].mean()), 6)


def correlation(a: np.ndarray, b: np.ndarray, *, mask: Optional[np.ndarray] = None) -> float:
    """Pearson correlation inside ``mask`` (nan when either side is constant)."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    _same_shape(x, y, "correlation")
    m = np.ones(x.shape, bool) if mask is None else np.asarray(mask, bool)
    x, y = x[m] - x[m].mean(), y[m] - y[m].mean()
    den = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return round(float((x * y).sum() / den), 6) if den > 0 else float("nan")


def fitted_scores(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> Dict[str, float]:
    """PSNR and SSIM inside ``mask`` after fitting ``pred`` linearly to ``target`` in the mask.

    >>> import numpy as np
    >>> t = np.random.default_rng(1).random((10, 10, 10)); m = t > 0.2
    >>> fitted_scores(3 * t - 1, t, m)["ssim"]
    1.0
    """
    fitted = linear_fit(pred, target, mask=mask)
    # outside the mask both are set to 0 so that SSIM windows on the border see the same context
    f = np.where(mask, fitted, 0.0)
    t = np.where(mask, np.asarray(target, np.float64), 0.0)
    return {"psnr": psnr_masked(f, t, mask=mask), "ssim": ssim_masked(f, t, mask=mask)}


def summary_stats(values: Sequence[float]) -> Tuple[float, float]:
    """(mean, min) of finite values, rounded to 4 digits (nan, nan when none)."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    return (round(float(np.mean(v)), 4), round(float(np.min(v)), 4)) if v else (float("nan"), float("nan"))
