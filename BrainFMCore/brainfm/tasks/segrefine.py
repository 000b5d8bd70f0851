"""Segmentation refined to the scan's intensities: the model's probabilities are the prior, and a
Gaussian intensity model per tissue group is fitted to the scan by expectation-maximisation.

This is the contrast-adaptive model of SAMSEG with the network in place of its probabilistic atlas.
Structures of one tissue share one Gaussian (cerebral and cerebellar white matter, brainstem and
ventral DC; cortex and the grey nuclei; the ventricles; the CSF around the brain; thalamus, pallidum and
putamen each on their own; any other label alone), so within a tissue the model decides, and between
tissues the scan's own intensities move the boundary to where the image has it. A model that works on
a 2 mm grid draws smooth outlines; the scan's 1 mm intensities sharpen them. Unlike SAMSEG, the groups
share one standard deviation (:data:`SPREAD`: the median of theirs, weighted by their voxels), so a
boundary between two tissues lies between their means, moved only by the prior, whatever the spread of
either tissue; and a broad group (the CSF around the brain, which takes the partial-volume rim of the
brain) does not widen the shared one, which on a scan of low tissue contrast (a proton density) would
hand the boundaries to the prior. The ventricles have a Gaussian of their own: on a brain-extracted
scan the CSF around the brain is mostly that partial-volume rim, and with it the ventricles' mean lay
between fluid and tissue, so they grew into the tissue around them.

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

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, Optional, Sequence, Tuple, Union

import numpy as np

if TYPE_CHECKING:
    import torch

#: structures that share one Gaussian (FreeSurfer numbers); any other label is a group of its own
TISSUE_GROUPS: Tuple[Tuple[int, ...], ...] = (
    (2, 41, 7, 46, 16, 28, 60),                                # white matter, brainstem, ventral DC
    (3, 42, 8, 47, 17, 53, 18, 54, 26, 58, 11, 50),            # cortex, hippocampus, amygdala, ...
    (4, 43, 5, 44, 14, 15),                                    # ventricles
    (24,),                                                     # the CSF around the brain
    (10, 49), (13, 52), (12, 51),                              # thalamus, pallidum, putamen
)
ITERATIONS = 10
#: EM stops when no group mean moves by more than this fraction of the intensity range
TOLERANCE = 1e-3
#: the smallest standard deviation of a group, as a fraction of the intensity range (1st-99th percentile)
MIN_SIGMA = 0.06
#: the groups' standard deviations (:func:`fit_tissues`): ``"median"``, one for all groups, the median
#: of theirs weighted by their voxels; ``"pooled"``, one for all, their variances averaged by weight;
#: ``"own"``, each group its own (as SAMSEG). A group whose Gaussian is broad (the CSF around the brain,
#: which takes the partial-volume rim of the brain) would with its own claim the tails of its narrower
#: neighbours (tissue beside the CSF; on a T2, voxels darker than the cortex), and in the pooled one it
#: widens every group's (on a proton density, where grey and white matter differ by about two of their
#: own spreads, the prior then draws their boundary)
SPREAD = "median"
SPREADS = ("median", "pooled", "own")


@dataclass
class Tissues:
    """The tissue model fitted to a scan (:func:`fit_tissues`), kept for the tasks that read it after
    the segmentation (the synthesis fitted to the scan, :mod:`brainfm.tasks.synthfit`).

    ``mask``: the labelled voxels of the output grid (bool ``(X, Y, Z)``); ``posteriors``: float32
    ``(N, G)``, each tissue group's probability at those voxels (C order of ``mask``); ``intensities``:
    float32 ``(N,)``, the scan's values there, divided by the fitted bias field; ``derived``: arrays
    that the tasks reading the model compute from it once for all of them (e.g. the intensities at the
    model's resolution, :func:`brainfm.tasks.synthfit.at_resolution`), by name."""

    mask: np.ndarray
    posteriors: np.ndarray
    intensities: np.ndarray
    derived: Dict[str, np.ndarray] = field(default_factory=dict)


def group_of(fs_values: Sequence[int]) -> np.ndarray:
    """Group index of every channel (label ``fs_values[c]``), groups of :data:`TISSUE_GROUPS` first.

    >>> group_of([0, 2, 3, 41, 99]).tolist()
    [7, 0, 1, 0, 8]
    """
    out = np.empty(len(fs_values), np.int64)
    extra = {}
    for c, v in enumerate(int(v) for v in fs_values):
        g = next((i for i, labs in enumerate(TISSUE_GROUPS) if v in labs), None)
        if g is None:
            g = extra.setdefault(v, len(TISSUE_GROUPS) + len(extra))
        out[c] = g
    return out


def present_groups(fs_values: Sequence[int]) -> np.ndarray:
    """Group of every channel among the groups present in ``fs_values``, numbered 0, 1, ... in the
    order of :func:`group_of`.

    >>> present_groups([0, 2, 3, 41]).tolist()                 # background, white matter x 2, cortex
    [2, 0, 1, 0]
    """
    return np.unique(group_of(fs_values), return_inverse=True)[1].reshape(-1)


@dataclass
class GroupedPrior:
    """The model's prior, reduced to what the tissue fit needs (``(N, G)`` per tissue group present):
    ``group``, the summed probability of the group's structures (float32); ``best_log``, the log
    probability of its most probable structure (float32); ``best_idx``, that structure's channel
    (uint8, or int16 beyond 255 channels). Filled chunk by chunk (:meth:`fill`), so the ``(N, C)``
    probabilities of all channels never exist at once."""

    group: np.ndarray
    best_log: np.ndarray
    best_idx: np.ndarray

    @classmethod
    def empty(cls, n: int, n_groups: int, n_channels: int) -> "GroupedPrior":
        """Arrays for ``n`` voxels."""
        idx_type = np.uint8 if n_channels <= 255 else np.int16
        return cls(np.empty((n, n_groups), np.float32), np.empty((n, n_groups), np.float32),
                   np.empty((n, n_groups), idx_type))

    def fill(self, start: int, prior: np.ndarray, groups: np.ndarray) -> None:
        """Rows ``start:start + len(prior)`` from probabilities ``prior`` ``(n, C)`` of the channels,
        whose groups are ``groups`` (:func:`present_groups`); ties go to the first channel."""
        import torch

        p = torch.from_numpy(np.ascontiguousarray(prior, np.float32))
        rows = slice(start, start + p.shape[0])
        group, best_log = torch.from_numpy(self.group[rows]), torch.from_numpy(self.best_log[rows])
        for g in range(self.group.shape[1]):
            cols = np.flatnonzero(groups == g)
            sub = p[:, torch.from_numpy(cols)]
            torch.sum(sub, 1, out=group[:, g])
            top, where = torch.max(sub, 1)  # the first of equal maxima
            self.best_idx[rows, g] = cols[where.numpy()]
            best_log[:, g] = top.add_(1e-6).log_()

    @classmethod
    def of(cls, prior: np.ndarray, fs_values: Sequence[int]) -> "GroupedPrior":
        """The grouped prior of probabilities ``prior`` ``(N, C)`` of the channels (labels ``fs_values``)."""
        p = np.asarray(prior, np.float32)
        groups = present_groups(fs_values)
        out = cls.empty(p.shape[0], int(groups.max()) + 1 if groups.size else 0, p.shape[1])
        out.fill(0, p, groups)
        return out


def enclosed(mask: np.ndarray) -> np.ndarray:
    """The voxels of ``mask`` that are cut off from the outside: in face-connected components that
    neither touch the border of the array nor are its largest component. For the background of a
    segmentation, the holes that the labelled structures surround.

    >>> m = np.ones((5, 5, 5), bool); m[1:4, 1:4, 1:4] = False; m[2, 2, 2] = True
    >>> np.argwhere(enclosed(m)).tolist()
    [[2, 2, 2]]
    """
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    lab, n = ndimage.label(mask)
    if n <= 1:
        return np.zeros(mask.shape, bool)
    outside = np.zeros(n + 1, bool)
    outside[0] = True
    for axis in range(mask.ndim):
        outside[np.take(lab, [0, -1], axis=axis).reshape(-1)] = True
    outside[int(np.argmax(np.bincount(lab.reshape(-1))[1:])) + 1] = True
    return ~outside[lab]


def refine_indices(prior: np.ndarray, intensities: np.ndarray, fs_values: Sequence[int], *,
                   iterations: int = ITERATIONS, tolerance: float = TOLERANCE,
                   spread: Optional[str] = None, pooled_sigma: Optional[bool] = None) -> np.ndarray:
    """Channel index (int64, ``(N,)``) of every voxel: ``prior`` ``(N, C)`` probabilities of the
    channels (labels ``fs_values``), ``intensities`` ``(N,)`` the scan's values at the same voxels
    (:func:`fit_tissues` without the posteriors)."""
    spread = _spread_of(spread, pooled_sigma)  # here, so that a deprecation warning names our caller
    return fit_tissues(prior, intensities, fs_values, iterations=iterations, tolerance=tolerance,
                       spread=spread)[0]


def fit_tissues(prior: Union[np.ndarray, GroupedPrior], intensities: np.ndarray, fs_values: Sequence[int], *,
                iterations: int = ITERATIONS, tolerance: float = TOLERANCE,
                spread: Optional[str] = None, pooled_sigma: Optional[bool] = None
                ) -> Tuple[np.ndarray, np.ndarray]:
    """``(indices, posteriors)``: the channel index (int64, ``(N,)``) of every voxel, and the
    posterior probability of each tissue group present (float32 ``(N, G)``, rows summing to 1; the
    groups of :func:`present_groups`). ``prior``: ``(N, C)`` probabilities of the channels (labels
    ``fs_values``), or their :class:`GroupedPrior` (whose arrays the fit then uses as its own memory).
    ``spread``: how the groups' standard deviations are fitted, one of :data:`SPREADS` (default
    :data:`SPREAD`). ``pooled_sigma`` (deprecated): True is ``spread="pooled"``, False ``spread="own"``.

    Computed with torch (its threads), in place on ``(N, groups)`` arrays; the M-step's sums are one
    matrix product with ``[1, y, y**2]`` of the intensities centred on their median.

    >>> idx, post = fit_tissues(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([1.0, 5.0]), [2, 3])
    >>> idx.tolist(), post.shape
    ([0, 1], (2, 2))
    """
    import torch

    spread = _spread_of(spread, pooled_sigma)
    y_np = np.asarray(intensities, np.float32)
    if not isinstance(prior, GroupedPrior):
        p_np = np.asarray(prior, np.float32)
        if p_np.ndim != 2 or p_np.shape[0] != y_np.shape[0] or p_np.shape[1] != len(fs_values):
            raise ValueError(f"prior {p_np.shape}, intensities {y_np.shape} and {len(fs_values)} labels do not match")
        prior = GroupedPrior.of(p_np, fs_values)
    n, n_groups = prior.group.shape
    if n != y_np.shape[0]:
        raise ValueError(f"prior of {n} voxels and intensities {y_np.shape} do not match")
    if n == 0:
        return np.zeros(0, np.int64), np.zeros((0, n_groups), np.float32)
    tiny = 1e-6
    group_prior = torch.from_numpy(prior.group)
    best_log = torch.from_numpy(prior.best_log)
    log_group_prior = group_prior.add(tiny).log_()
    lo, hi = np.percentile(y_np, [1, 99])
    span = float(max(hi - lo, 1e-6))
    floor = MIN_SIGMA * span
    y = torch.from_numpy(y_np) - float(np.median(y_np))  # centred: the variance from sums stays exact
    stats = torch.stack([torch.ones_like(y), y, y * y], 1)  # (N, 3)
    q = group_prior.div_(group_prior.sum(1, keepdim=True).clamp_min(tiny))  # the group responsibilities
    loglik = torch.zeros_like(q)
    mu = None
    for _ in range(max(1, int(iterations))):
        sums = (q.T @ stats).double()  # (groups, 3): sum q, sum q y, sum q y**2
        w = sums[:, 0] + tiny
        new_mu = sums[:, 1] / w
        var = (sums[:, 2] / w - new_mu ** 2).clamp_min(0.0)
        if spread == "pooled":
            var = ((var * w).sum() / w.sum()).expand_as(var)
        elif spread == "median":
            var = _weighted_median(var, w).expand_as(var)
        sigma = var.sqrt().clamp_min(floor)
        # loglik = -0.5 ((y - mu) / sigma)**2 - log(sigma); the posterior q, normalised per voxel
        torch.sub(y[:, None], new_mu.float(), out=loglik)
        loglik.div_(sigma.float()).square_().mul_(-0.5).sub_(sigma.log().float())
        torch.add(log_group_prior, loglik, out=q)
        q.sub_(q.max(1, keepdim=True).values).exp_()
        q.div_(q.sum(1, keepdim=True))
        done = mu is not None and float((new_mu - mu).abs().max()) < tolerance * span
        mu = new_mu
        if done:
            break
    del log_group_prior, stats
    winner = torch.argmax(best_log.add_(loglik), 1).numpy()
    return prior.best_idx[np.arange(n), winner].astype(np.int64), q.numpy()


def _spread_of(spread: Optional[str], pooled_sigma: Optional[bool]) -> str:
    """The ``spread`` of :func:`fit_tissues` from its keywords (``pooled_sigma``: the deprecated form).
    Called by the public functions themselves: the warning names the line that called them."""
    if pooled_sigma is not None:
        import warnings

        warnings.warn("fit_tissues(pooled_sigma=...) is deprecated: use spread='pooled' or spread='own'",
                      DeprecationWarning, stacklevel=3)
        if spread is None:
            spread = "pooled" if pooled_sigma else "own"
    spread = SPREAD if spread is None else spread
    if spread not in SPREADS:
        raise ValueError(f"spread {spread!r} is not one of {SPREADS}")
    return spread


def _weighted_median(values: "torch.Tensor", weights: "torch.Tensor") -> "torch.Tensor":
    """The value below which lies (at least) half of the total weight (the lower weighted median).

    >>> import torch
    >>> float(_weighted_median(torch.tensor([9.0, 1.0, 4.0]), torch.tensor([1.0, 1.0, 3.0])))
    4.0
    """
    import torch

    order = torch.argsort(values)
    cum = torch.cumsum(weights[order], 0)
    at = int(torch.searchsorted(cum, cum[-1] / 2))
    return values[order][min(at, values.numel() - 1)]
