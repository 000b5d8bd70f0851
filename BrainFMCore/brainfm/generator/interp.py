"""Fast sampling helpers on (B, C, X, Y, Z) tensors with coordinates in voxel units.

Coordinates are given as (B, 3, X', Y', Z') voxel indices (axis order i, j, k) of the source;
outside the source, values are ``0`` (``padding="zeros"``) or the edge value (``"border"``).

>>> import torch
>>> from brainfm.generator.interp import sample_voxels, identity_grid
>>> src = torch.arange(27.).reshape(1, 1, 3, 3, 3)
>>> out = sample_voxels(src, identity_grid((3, 3, 3)).unsqueeze(0))
>>> bool(torch.allclose(out, src))
True
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F


def identity_grid(shape: Sequence[int], *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Voxel index grid of shape (3, X, Y, Z)."""
    axes = [torch.arange(n, device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), 0)


def to_device(x: torch.Tensor, device) -> torch.Tensor:
    """Move a small CPU tensor to ``device`` without waiting for the device (non-blocking copy)."""
    return x.to(device, non_blocking=True)


def sample_voxels(src: torch.Tensor, coords: torch.Tensor, *, mode: str = "bilinear",
                  padding: str = "zeros") -> torch.Tensor:
    """Sample ``src`` (B, C, X, Y, Z) at voxel coordinates ``coords`` (B, 3, X', Y', Z').

    ``mode`` is ``"bilinear"`` (trilinear) or ``"nearest"``; returns (B, C, X', Y', Z').
    """
    shape = src.shape[2:]
    g = torch.stack([coords[:, i] * (2.0 / max(n - 1, 1)) - 1.0 for i, n in enumerate(shape)], 1)
    g = g.flip(1).permute(0, 2, 3, 4, 1)  # grid_sample wants (z, y, x) last
    if g.shape[0] != src.shape[0]:
        g = g.expand(src.shape[0], *g.shape[1:])
    return F.grid_sample(src, g, mode=mode, padding_mode=padding, align_corners=True)


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Trilinear resize of a (B, C, X, Y, Z) tensor with corners aligned (smooth fields)."""
    return F.interpolate(x, size=tuple(int(s) for s in size), mode="trilinear", align_corners=True)


def gaussian_kernel1d(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Normalised Gaussian kernels (B, 2r+1) for per-sample sigmas (B,); sigma 0 -> delta."""
    x = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    s = sigma.float().clamp_min(1e-3).view(-1, 1)
    k = torch.exp(-0.5 * (x.view(1, -1) / s) ** 2)
    return k / k.sum(1, keepdim=True)


def blur(x: torch.Tensor, sigmas: torch.Tensor, *, max_sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, X, Y, Z) with per-sample, per-axis sigmas (B, 3) voxels.

    Vectorised over the batch with grouped convolutions; zero padding like the reference.
    ``max_sigma`` (a Python float known in advance) fixes the kernel radius without a device sync.
    """
    b = x.shape[0]
    radius = max(1, int(math.ceil(3.0 * max_sigma)))
    y = x.reshape(1, b, *x.shape[2:])
    for axis in range(3):
        k = gaussian_kernel1d(to_device(sigmas[:, axis], x.device), radius).to(x.dtype)
        shape = [b, 1, 1, 1, 1]
        shape[2 + axis] = 2 * radius + 1
        pad = [0, 0, 0]
        pad[axis] = radius
        y = F.conv3d(y, k.view(shape), padding=tuple(pad), groups=b)
    return y.reshape(x.shape)


def upsample_noise(shape_coarse: Sequence[int], size: Sequence[int], *, batch: int,
                   generator: torch.Generator, device, std: torch.Tensor) -> torch.Tensor:
    """Smooth random field: N(0, std^2) on a coarse grid, trilinearly upsampled to ``size``."""
    g = torch.randn((batch, 1, *[max(2, int(s)) for s in shape_coarse]), generator=generator,
                    device=device)
    g = g * to_device(std, device).view(-1, 1, 1, 1, 1)
    return resize(g, size)


def grid_shape(scale: float, size: Sequence[int]) -> Tuple[int, int, int]:
    """Control-grid shape round(scale * size), at least 2 per axis."""
    return tuple(max(2, int(round(scale * s))) for s in size)  # type: ignore[return-value]
