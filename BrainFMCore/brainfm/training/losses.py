"""Loss functions of the BrainFM recipe (as in the reference BrainFM code) with its bugs fixed, plus contrastive terms.

Fixes relative to the reference: gradient losses use only valid finite differences (no zeroed last
slice); the masked bias-field L2 is averaged over the mask, not over all voxels; soft Dice is averaged
over samples and over the classes present (not summed over the batch); cross-entropy uses
``log_softmax`` (no 1e-5 clamp) with unit class weights.

>>> import torch
>>> from brainfm.training.losses import l1_loss, gradient_l1_loss
>>> a = torch.zeros(1, 1, 4, 4, 4); b = torch.ones(1, 1, 4, 4, 4)
>>> float(l1_loss(a, b)), float(gradient_l1_loss(a, b))
(1.0, 0.0)
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F


def _weighted_mean(x: torch.Tensor, weight: Optional[torch.Tensor]) -> torch.Tensor:
    if weight is None:
        return x.mean()
    w = weight.expand_as(x).to(x.dtype)
    return (x * w).sum() / w.sum().clamp_min(1e-8)


def l1_loss(pred: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean absolute error, optionally weighted per voxel (e.g. 1 - defacing mask)."""
    return _weighted_mean((pred.float() - target.float()).abs(), weight)


def gradient_l1_loss(pred: torch.Tensor, target: torch.Tensor,
                     weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Sum over the 3 spatial axes of the L1 error of forward differences (valid region only).

    >>> import torch
    >>> x = torch.arange(8.).view(1, 1, 2, 2, 2)
    >>> float(gradient_l1_loss(x, torch.zeros_like(x)))  # |d/dx|=4, |d/dy|=2, |d/dz|=1
    7.0
    """
    p, t = pred.float(), target.float()
    total = p.new_zeros(())
    for axis in (-3, -2, -1):
        n = p.shape[axis]
        if n < 2:
            continue
        dp = p.narrow(axis, 1, n - 1) - p.narrow(axis, 0, n - 1)
        dt = t.narrow(axis, 1, n - 1) - t.narrow(axis, 0, n - 1)
        w = None
        if weight is not None:
            wb = weight.expand_as(t) if weight.dim() == t.dim() else weight
            w = wb.narrow(axis, 1, n - 1) * wb.narrow(axis, 0, n - 1)
        total = total + _weighted_mean((dp - dt).abs(), w)
    return total


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean squared error over the voxels where ``mask`` > 0 (all voxels when ``mask`` is None)."""
    return _weighted_mean((pred.float() - target.float()) ** 2, None if mask is None else (mask > 0))


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, eps: float = 1e-5,
                   present_only: bool = True) -> torch.Tensor:
    """1 - soft Dice of ``softmax(logits)`` vs integer class map ``target`` (N,X,Y,Z) or (N,1,X,Y,Z).

    Averaged over samples and over the classes present in the target (``present_only``).

    >>> import torch
    >>> t = torch.zeros(1, 4, 4, 4, dtype=torch.long); t[:, :2] = 1
    >>> perfect = torch.nn.functional.one_hot(t, 3).permute(0, 4, 1, 2, 3).float() * 50
    >>> round(float(soft_dice_loss(perfect, t)), 4)
    0.0
    """
    t = _class_map(target)
    return _soft_dice(torch.log_softmax(logits.float(), dim=1), t, eps=eps, present_only=present_only)


def segmentation_losses(logits: torch.Tensor, target: torch.Tensor, *, eps: float = 1e-5,
                        present_only: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(cross-entropy, 1 - soft Dice)`` of logits (N,C,...) against an integer class map, from one
    log-softmax: the values of :func:`cross_entropy_loss` and :func:`soft_dice_loss`, in about a
    third of their time together (no one-hot volume is built).

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x, t = torch.randn(2, 5, 6, 6, 6, generator=g), torch.randint(0, 5, (2, 6, 6, 6), generator=g)
    >>> ce, dice = segmentation_losses(x, t)
    >>> bool(torch.isclose(ce, cross_entropy_loss(x, t))), bool(torch.isclose(dice, soft_dice_loss(x, t)))
    (True, True)
    """
    t = _class_map(target)
    lp = torch.log_softmax(logits.float(), dim=1)
    lp_target = lp.gather(1, t.unsqueeze(1))
    return -lp_target.mean(), _soft_dice(lp, t, eps=eps, present_only=present_only, lp_target=lp_target)


def _soft_dice(log_probs: torch.Tensor, t: torch.Tensor, *, eps: float, present_only: bool,
               lp_target: Optional[torch.Tensor] = None) -> torch.Tensor:
    """1 - soft Dice from log-probabilities (N,C,...) and a class map (N,...): per class, the
    intersection is the sum of the target class's probability over its voxels (a scatter-add, no one-hot).
    ``lp_target``: the log-probabilities of the target classes, when already gathered."""
    n, c = log_probs.shape[:2]
    dims = tuple(range(2, log_probs.dim()))
    idx = t.reshape(n, -1)
    if lp_target is None:
        lp_target = log_probs.gather(1, t.unsqueeze(1))
    p_target = lp_target.exp().reshape(n, -1)
    inter = log_probs.new_zeros(n, c).scatter_add(1, idx, p_target)
    count = log_probs.new_zeros(n, c).scatter_add(1, idx, torch.ones_like(p_target))
    dice = 2 * inter / (log_probs.exp().sum(dims) + count).clamp_min(eps)
    loss = 1 - dice  # (N, C)
    if present_only:
        present = (count > 0).to(loss.dtype)
        return ((loss * present).sum(1) / present.sum(1).clamp_min(1)).mean()
    return loss.mean()


def cross_entropy_loss(logits: torch.Tensor, target: torch.Tensor,
                       class_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Voxel-averaged cross-entropy of logits (N,C,...) against an integer class map."""
    return F.cross_entropy(logits.float(), _class_map(target), weight=class_weights)


def _class_map(target: torch.Tensor) -> torch.Tensor:
    t = target
    if t.dim() >= 5 and t.shape[1] == 1:
        t = t[:, 0]
    return t.long()


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, *, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR NT-Xent: rows ``z1[i]`` and ``z2[i]`` are positives, all other rows negatives.

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> z = torch.randn(16, 8, generator=g)
    >>> float(nt_xent_loss(z, z)) < float(nt_xent_loss(z, torch.randn(16, 8, generator=g)))
    True
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"nt_xent_loss needs two (K, D) tensors of the same shape, got {tuple(z1.shape)} "
                         f"and {tuple(z2.shape)}")
    k = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * k, dtype=torch.bool, device=z.device), float("-inf"))
    idx = torch.arange(k, device=z.device)
    labels = torch.cat([idx + k, idx])
    return F.cross_entropy(sim, labels)


def cifl_loss(f1: torch.Tensor, f2: torch.Tensor, *,
              taus: Sequence[float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
    """CIFL channel contrast (Chua & Dalca, MIDL 2023) on features (C, V) of two contrasts.

    Channel ``c`` of view 1 should match channel ``c`` of view 2 (numerator, tau_alpha) and differ from
    the other channels of view 1 (tau_gamma); channel vectors are unit-normalised over the voxels.

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> f = torch.randn(8, 500, generator=g)
    >>> float(cifl_loss(f, f)) < float(cifl_loss(f, torch.randn(8, 500, generator=g)))
    True
    """
    ta, tb, tg = (float(t) for t in taus)
    a = F.normalize(f1.float().flatten(1), dim=1)
    b = F.normalize(f2.float().flatten(1), dim=1)
    pos = (a * b).sum(1)  # (C,)
    cross = a @ a.t()
    c = a.shape[0]
    off = ~torch.eye(c, dtype=torch.bool, device=a.device)
    num = torch.logsumexp(pos / ta, 0)
    den = torch.logsumexp(torch.cat([pos / tb, cross[off] / tg]), 0)
    return den - num
