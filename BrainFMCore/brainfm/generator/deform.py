"""Random affine + diffeomorphic deformations (stationary velocity field, scaling and squaring).

Displacement fields are (B, 3, X, Y, Z) tensors in voxel units of their own grid: the point
``x`` maps to ``x + d(x)``. The inverse of ``exp(v)`` is ``exp(-v)``.

>>> import torch
>>> from brainfm.generator.deform import integrate_svf, compose, jacobian_determinant
>>> g = torch.Generator().manual_seed(0)
>>> v = 2.0 * torch.nn.functional.interpolate(torch.randn(1, 3, 4, 4, 4, generator=g),
...     size=(24, 24, 24), mode="trilinear", align_corners=True)
>>> fwd, inv = integrate_svf(v, steps=7), integrate_svf(-v, steps=7)
>>> float(compose(inv, fwd)[:, :, 4:-4, 4:-4, 4:-4].abs().mean()) < 0.1
True
>>> bool((jacobian_determinant(fwd) > 0).all())
True
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch

from brainfm.generator.interp import grid_shape, identity_grid, resize, sample_voxels, to_device


def warp(field: torch.Tensor, disp: torch.Tensor, *, mode: str = "bilinear") -> torch.Tensor:
    """Sample ``field`` (B, C, X, Y, Z) at ``x + disp(x)`` (edge values outside)."""
    grid = identity_grid(disp.shape[2:], device=disp.device, dtype=disp.dtype).unsqueeze(0)
    return sample_voxels(field, grid + disp, mode=mode, padding="border")


def integrate_svf(velocity: torch.Tensor, *, steps: int = 7) -> torch.Tensor:
    """Displacement of exp(velocity) by scaling and squaring (``steps`` squarings)."""
    d = velocity / (2.0 ** steps)
    for _ in range(steps):
        d = d + warp(d, d)
    return d


def compose(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """Displacement of ``outer o inner``: x -> x + inner(x) + outer(x + inner(x))."""
    return inner + warp(outer, inner)


def jacobian_determinant(disp: torch.Tensor) -> torch.Tensor:
    """Jacobian determinant (B, X-2, Y-2, Z-2) of x -> x + disp(x) (central differences)."""
    grads = [torch.gradient(disp[:, c], dim=(1, 2, 3)) for c in range(3)]
    j = torch.stack([torch.stack(g, 1) for g in grads], 1)  # (B, 3, 3, X, Y, Z)
    j = j + torch.eye(3, device=disp.device, dtype=disp.dtype).view(1, 3, 3, 1, 1, 1)
    j = j[..., 1:-1, 1:-1, 1:-1].permute(0, 3, 4, 5, 1, 2)
    return torch.linalg.det(j)


def random_affine(generator: torch.Generator, *, rotation_deg: float, shear: float,
                  scaling: float) -> Tuple[torch.Tensor, float]:
    """Reference affine A = diag(c) Sx Sy Sz Rx Ry Rz (CPU, float64) and scale (c0 c1 c2)^(1/3)."""
    u = torch.rand(9, generator=generator, dtype=torch.float64) * 2 - 1
    th = u[:3] * math.radians(rotation_deg)
    s = u[3:6] * shear
    c = 1.0 + u[6:9] * scaling
    cx, cy, cz = torch.cos(th).tolist()
    sx, sy, sz = torch.sin(th).tolist()
    rx = torch.tensor([[1, 0, 0], [0, cx, -sx], [0, sx, cx]], dtype=torch.float64)
    ry = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], dtype=torch.float64)
    rz = torch.tensor([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]], dtype=torch.float64)
    s0, s1, s2 = s.tolist()
    shx = torch.tensor([[1, 0, 0], [s1, 1, 0], [s2, 0, 1]], dtype=torch.float64)
    shy = torch.tensor([[1, s0, 0], [0, 1, 0], [0, s2, 1]], dtype=torch.float64)
    shz = torch.tensor([[1, 0, s0], [0, 1, s1], [0, 0, 1]], dtype=torch.float64)
    a = torch.diag(c) @ shx @ shy @ shz @ rx @ ry @ rz
    return a, float(torch.prod(c) ** (1.0 / 3.0))


def random_svf(size: Sequence[int], generator: torch.Generator, *, scale: float, std: float,
               device=None) -> torch.Tensor:
    """Smooth random velocity (1, 3, *size) in output voxels: N(0, std) on a coarse grid, upsampled."""
    coarse = grid_shape(scale, size)
    v = torch.randn((1, 3, *coarse), generator=generator) * std
    return resize(to_device(v, device), size)


def svf_to_displacement(velocity: torch.Tensor, *, steps: int = 7,
                        downsample: int = 1) -> torch.Tensor:
    """Integrate a (B, 3, *size) velocity, optionally on a coarser grid, return displacement.

    Integration on a grid ``downsample`` times coarser is much cheaper and accurate for the
    smooth fields used here; units are converted per axis so the result is in fine voxels.
    """
    size = velocity.shape[2:]
    if downsample <= 1:
        return integrate_svf(velocity, steps=steps)
    coarse = [max(4, (n + downsample - 1) // downsample) for n in size]
    r = [(m - 1) / max(n - 1, 1) for m, n in zip(coarse, size)]
    vc = resize(velocity, coarse)
    vc = torch.stack([vc[:, i] * r[i] for i in range(3)], 1)
    d = resize(integrate_svf(vc, steps=steps), size)
    return torch.stack([d[:, i] / r[i] for i in range(3)], 1)


def sampling_coords(size: Sequence[int], affine: torch.Tensor, disp: Optional[torch.Tensor],
                    source_centre: torch.Tensor, *, voxel_mm: float = 1.0) -> torch.Tensor:
    """Source voxel coordinates (1, 3, *size) of every output voxel v:
    ``A @ (voxel_mm * ((v - (size-1)/2) + disp(v))) + source_centre``.

    The source is a 1 mm grid; ``voxel_mm`` is the edge of an output voxel in source voxels (mm),
    so an output grid of ``size`` voxels covers ``size * voxel_mm`` mm.
    """
    device = source_centre.device
    grid = identity_grid(size, device=device).unsqueeze(0)
    u = torch.stack([grid[:, i] - (n - 1) / 2.0 for i, n in enumerate(size)], 1)
    if disp is not None:
        u = u + disp
    if voxel_mm != 1.0:
        u = u * float(voxel_mm)
    a = to_device(affine.to(torch.float32), device)
    out = torch.einsum("ij,bj...->bi...", a, u)
    return out + source_centre.to(torch.float32).view(1, 3, 1, 1, 1)
