"""Segmentation refined to the scan's intensities: the model's probabilities are the prior, and a
Gaussian intensity model per tissue group is fitted to the scan by expectation-maximisation.

This is the contrast-adaptive model of SAMSEG with the network in place of its probabilistic atlas.
Structures of one tissue share one Gaussian (cerebral and cerebellar white matter, brainstem and
ventral DC; cortex and the grey nuclei; the fluid spaces; thalamus, pallidum and putamen each on their
own; any other label alone), so within a tissue the model decides, and between tissues the scan's own
intensities move the boundary to where the image has it. A model that works on a 2 mm grid draws
smooth outlines; the scan's 1 mm intensities sharpen them.

The EM runs on the group level (the prior of a group is the sum of its structures' probabilities);
the final label is the structure with the highest ``log prior + log likelihood of its group``.

>>> import numpy as np
>>> x = np.linspace(0, 1, 200)
>>> p_wm = 1 / (1 + np.exp((x - 0.6) / 0.1))       # a blurred prior: the boundary at 0.6
>>> prior = np.stack([p_wm, 1 - p_wm], 1)
>>> image = np.where(x < 0.5, 100.0, 60.0)          # the scan's boundary is at 0.5
>>> idx = refine_indices(prior, image, [2, 3])
>>> float(x[np.argmax(idx == 1)])                    # the first cortex voxel
0.5025125628140703
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

#: structures that share one Gaussian (FreeSurfer numbers); any other label is a group of its own
TISSUE_GROUPS: Tuple[Tuple[int, ...], ...] = (
    (2, 41, 7, 46, 16, 28, 60),                                # white matter, brainstem, ventral DC
    (3, 42, 8, 47, 17, 53, 18, 54, 26, 58, 11, 50),            # cortex, hippocampus, amygdala, ...
    (4, 43, 5, 44, 14, 15, 24),                                # ventricles and CSF
    (10, 49), (13, 52), (12, 51),                              # thalamus, pallidum, putamen
)
ITERATIONS = 10
#: EM stops when no group mean moves by more than this fraction of the intensity range
TOLERANCE = 1e-3
#: the smallest standard deviation of a group, as a fraction of the intensity range (1st-99th percentile)
MIN_SIGMA = 0.06


def group_of(fs_values: Sequence[int]) -> np.ndarray:
    """Group index of every channel (label ``fs_values[c]``), groups of :data:`TISSUE_GROUPS` first.

    >>> group_of([0, 2, 3, 41, 99]).tolist()
    [6, 0, 1, 0, 7]
    """
    out = np.empty(len(fs_values), np.int64)
    extra = {}
    for c, v in enumerate(int(v) for v in fs_values):
        g = next((i for i, labs in enumerate(TISSUE_GROUPS) if v in labs), None)
        if g is None:
            g = extra.setdefault(v, len(TISSUE_GROUPS) + len(extra))
        out[c] = g
    return out


def refine_indices(prior: np.ndarray, intensities: np.ndarray, fs_values: Sequence[int], *,
                   iterations: int = ITERATIONS, tolerance: float = TOLERANCE) -> np.ndarray:
    """Channel index (int64, ``(N,)``) of every voxel: ``prior`` ``(N, C)`` probabilities of the
    channels (labels ``fs_values``), ``intensities`` ``(N,)`` the scan's values at the same voxels."""
    p = np.asarray(prior, np.float32)
    y = np.asarray(intensities, np.float32)
    if p.ndim != 2 or p.shape[0] != y.shape[0] or p.shape[1] != len(fs_values):
        raise ValueError(f"prior {p.shape}, intensities {y.shape} and {len(fs_values)} labels do not match")
    gidx = group_of(fs_values)
    n_groups = int(gidx.max()) + 1
    tiny = np.float32(1e-6)
    # per group: the summed prior, and the best structure with its log prior
    group_prior = np.zeros((p.shape[0], n_groups), np.float32)
    best_log = np.full((p.shape[0], n_groups), -np.inf, np.float32)
    best_idx = np.zeros((p.shape[0], n_groups), np.int64)
    for c in range(p.shape[1]):
        g = gidx[c]
        group_prior[:, g] += p[:, c]
        lp = np.log(p[:, c] + tiny)
        better = lp > best_log[:, g]
        best_log[better, g] = lp[better]
        best_idx[better, g] = c
    log_group_prior = np.log(group_prior + tiny)
    lo, hi = np.percentile(y, [1, 99]) if y.size else (0.0, 1.0)
    span = float(max(hi - lo, 1e-6))
    floor = np.float32(MIN_SIGMA * span)
    q = group_prior / np.maximum(group_prior.sum(1, keepdims=True), tiny)
    mu = None
    loglik = np.zeros_like(group_prior)
    for _ in range(max(1, int(iterations))):
        w = q.sum(0) + tiny
        new_mu = (q * y[:, None]).sum(0) / w
        sigma = np.maximum(np.sqrt((q * (y[:, None] - new_mu) ** 2).sum(0) / w), floor)
        loglik = -0.5 * ((y[:, None] - new_mu) / sigma) ** 2 - np.log(sigma)
        post = log_group_prior + loglik
        post -= post.max(1, keepdims=True)
        q = np.exp(post)
        q /= q.sum(1, keepdims=True)
        done = mu is not None and float(np.abs(new_mu - mu).max()) < tolerance * span
        mu = new_mu
        if done:
            break
    winner = np.argmax(best_log + loglik, axis=1)
    return best_idx[np.arange(p.shape[0]), winner]
