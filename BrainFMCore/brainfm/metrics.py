"""Image-pair metrics on numpy arrays, the engine's one implementation of each: hard Dice per
label, PSNR / SSIM inside a mask (SSIM from scikit-image), Pearson correlation and the linear
intensity fit. Used by the evaluation table (:mod:`brainfm.evaluation.metrics`) and by training
validation (:mod:`brainfm.training.evaluate`). (The differentiable soft Dice *loss* of training is
another thing: :func:`brainfm.training.losses.soft_dice_loss`.)

All functions take numpy arrays, never modify them and return plain Python floats/dicts.

>>> import numpy as np
>>> a = np.zeros((4, 4, 4), int); a[:2] = 2; b = np.zeros_like(a); b[:, :2] = 2
>>> dice_per_label(a, b)
{2: 0.5}
>>> round(psnr_masked(np.zeros(8), np.full(8, 0.01), data_range=1.0), 6)
40.0
>>> x = np.arange(8.0); round(correlation(x, 3 * x + 1), 6)
1.0
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Optional

import numpy as np

from brainfm.errors import InputError


def _same_shape(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape:
        raise InputError(f"{what}: arrays differ in shape {a.shape} vs {b.shape}")


def dice_per_label(pred: np.ndarray, truth: np.ndarray, *, labels: Optional[Iterable[int]] = None,
                   ndigits: Optional[int] = 6) -> Dict[int, float]:
    """Hard Dice per label. ``labels`` default: every non-zero value of ``truth``.

    A label absent from both maps is skipped; absent from one only, its Dice is 0. Values are
    rounded to ``ndigits`` decimals (``None``: not rounded).

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
        d = 2.0 * int(joint[i, i]) / (sp + st)
        out[v] = d if ndigits is None else round(d, ndigits)
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
                data_range: Optional[float] = None, ndigits: Optional[int] = 4) -> float:
    """PSNR in dB inside ``mask`` (all voxels by default), ``inf`` for identical inputs;
    ``data_range`` default: target max - min inside the mask. Rounded to ``ndigits`` decimals
    (``None``: not rounded).

    >>> import numpy as np
    >>> round(psnr_masked(np.zeros(4), np.array([0.0, 0.0, 0.0, 1.0])), 3)
    6.021
    """
    p, t, m, rng = _masked_pair(pred, target, mask, data_range, "psnr")
    mse = float(((p[m] - t[m]) ** 2).mean())
    if mse == 0:
        return float("inf")
    db = 10.0 * math.log10(rng ** 2 / mse)
    return db if ndigits is None else round(db, ndigits)


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
