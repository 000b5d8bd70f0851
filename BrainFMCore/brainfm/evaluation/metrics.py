"""Metrics of the evaluation table: Dice, linear intensity fit, PSNR / SSIM inside a mask,
Pearson correlation (one implementation each, in :mod:`brainfm.metrics`, re-exported here) and
the table's own combinations (:func:`fitted_scores`, :func:`summary_stats`).

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
from typing import Dict, Sequence, Tuple

import numpy as np

from brainfm.metrics import correlation, dice_per_label, linear_fit, mean_dice, psnr_masked, ssim_masked

__all__ = ["dice_per_label", "mean_dice", "linear_fit", "psnr_masked", "ssim_masked", "correlation",
           "fitted_scores", "summary_stats"]


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
