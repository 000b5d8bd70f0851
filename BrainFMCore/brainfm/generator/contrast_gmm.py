"""Per-sample contrast vectors and painting of label maps into images.

A contrast is a (N, K) mean and (N, K) std per compact label; :func:`paint` turns a compact label
map into N images: partial-volume blending (Gaussian smoothing of the mean image = smoothing of
the label one-hot then mixing the means) plus per-voxel Gaussian texture.

>>> import torch
>>> from brainfm.generator.contrast_gmm import gmm_contrast, paint
>>> g = torch.Generator().manual_seed(0)
>>> mu, sd = gmm_contrast(g, batch=2, mu=(25, 225), sigma=(5, 25), p_black=1.0)
>>> bool((mu[:, 0] == 0).all())
True
>>> img = paint(torch.zeros(1, 1, 8, 8, 8, dtype=torch.long), mu, sd, pv_sigma=torch.zeros(2),
...             generator=g)
>>> tuple(img.shape), float(img.max())
((2, 1, 8, 8, 8), 0.0)
"""
from __future__ import annotations

from typing import Tuple

import torch

from brainfm.generator.interp import blur, to_device
from brainfm.generator.labels import ALL_LABELS, LESION_LABEL

K = len(ALL_LABELS)
_WM = [ALL_LABELS.index(2), ALL_LABELS.index(41)]
_GM = [ALL_LABELS.index(3), ALL_LABELS.index(42)]
_LESION = ALL_LABELS.index(LESION_LABEL)


def gmm_contrast(generator: torch.Generator, *, batch: int, mu: Tuple[float, float],
                 sigma: Tuple[float, float], p_black: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Random GMM means U(mu) and stds U(sigma) per sample and label (CPU tensors (N, K)).

    With probability ``p_black`` the background is black. Lesions follow PEPSI: their mean is the
    white-matter mean times (1 +- U(0.75, 1)), brighter when grey matter is brighter than white
    matter in that sample (T2-like), darker otherwise (T1-like).
    """
    m = mu[0] + (mu[1] - mu[0]) * torch.rand((batch, K), generator=generator)
    s = sigma[0] + (sigma[1] - sigma[0]) * torch.rand((batch, K), generator=generator)
    black = torch.rand(batch, generator=generator) < p_black
    m[:, 0] = torch.where(black, torch.zeros(batch), m[:, 0])
    s[:, 0] = torch.where(black, torch.zeros(batch), s[:, 0])
    m, s = lesion_contrast(m, s, generator)
    return m, s


def lesion_contrast(m: torch.Tensor, s: torch.Tensor,
                    generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """Set the lesion label's mean/std from WM and the GM-vs-WM sign (PEPSI encoding)."""
    m, s = m.clone(), s.clone()
    wm = m[:, _WM].mean(1)
    sign = torch.where(m[:, _GM].mean(1) > wm, 1.0, -1.0)
    amp = 0.75 + 0.25 * torch.rand(m.shape[0], generator=generator)
    m[:, _LESION] = (wm * (1 + sign * amp)).clamp_min(0)
    s[:, _LESION] = 0.25 * torch.rand(m.shape[0], generator=generator) * wm
    return m, s


def paint(labels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, *,
          pv_sigma: torch.Tensor, generator: torch.Generator, max_pv: float = 1.0) -> torch.Tensor:
    """Images (N, 1, S...) from compact labels (M, 1, S...) and (N, K) means/stds.

    With M > 1 the label maps are M points inside each voxel (sub-voxel samples) and a voxel's mean
    and texture std are their averages: the partial volume of a voxel that holds several tissues.
    ``pv_sigma`` (N,) voxels of partial-volume smoothing; texture noise uses ``generator``
    (on the device of ``labels``). Negative values are clipped to 0.
    """
    dev = labels.device
    mean, std = to_device(mean, dev), to_device(std, dev)
    n, m = mean.shape[0], labels.shape[0]
    mu = sd = None
    for j in range(m):
        idx = labels[j].reshape(1, -1).expand(n, -1)
        mu_j = torch.gather(mean, 1, idx).view(n, 1, *labels.shape[2:])
        sd_j = torch.gather(std, 1, idx).view(n, 1, *labels.shape[2:])
        mu, sd = (mu_j, sd_j) if mu is None else (mu + mu_j, sd + sd_j)
    if m > 1:
        mu, sd = mu / m, sd / m
    mu = blur(mu, pv_sigma.view(-1, 1).expand(n, 3), max_sigma=max_pv)
    noise = torch.randn(mu.shape, generator=generator, device=dev)
    return (mu + sd * noise).clamp_min(0)
