"""Corruptions, vectorised over the N samples: gamma, bias field, resolution/thickness, noise.

Images are (N, 1, X, Y, Z), non-negative. Random *scalars* come from a CPU generator; voxel-wise
noise from a generator on the image device (no host-device synchronisation).

>>> import torch
>>> from brainfm.generator.corrupt import gamma, degrade
>>> x = torch.rand(2, 1, 12, 12, 12)
>>> y = gamma(x, torch.tensor([1.0, 2.0]))
>>> bool(torch.allclose(y[0], x[0], atol=1e-6)), bool((y[1] <= x[1].amax() + 1e-6).all())
(True, True)
>>> g = torch.Generator().manual_seed(0)
>>> degrade(x, spacing=(1, 1, 3), thickness=(1, 1, 3), blur_u=torch.zeros(2),
...         noise_std=torch.zeros(2), rician=False, generator=g).shape
torch.Size([2, 1, 12, 12, 12])
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F

from brainfm.generator.interp import blur, to_device


def _amax(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).amax(1).clamp_min(1e-6).view(-1, *([1] * (x.dim() - 1)))


def gamma(img: torch.Tensor, gammas: torch.Tensor) -> torch.Tensor:
    """I <- max * (I / max)^gamma per sample (gammas (N,))."""
    mx = _amax(img)
    g = to_device(gammas.to(img.dtype), img.device).view(-1, *([1] * (img.dim() - 1)))
    return mx * (img / mx).clamp_min(0) ** g


def blur_sigmas(thickness: Sequence[float], blur_u: torch.Tensor) -> Tuple[torch.Tensor, float]:
    """Slice-profile blur (N, 3) voxels: (0.85 + 0.3u) ln5/pi * thickness (0 where thickness <= 1)."""
    th = torch.tensor([float(t) for t in thickness])
    base = torch.where(th > 1.0, th * math.log(5) / math.pi, torch.zeros(3))
    s = (0.85 + 0.3 * blur_u.view(-1, 1).cpu()) * base.view(1, 3)
    return s, float(base.max()) * 1.15


def low_res_shape(size: Sequence[int], spacing: Sequence[float]) -> Tuple[int, int, int]:
    """Grid of the simulated acquisition: floor(size / spacing), at least 2 per axis."""
    return tuple(max(2, int(math.floor(n / float(s)))) for n, s in zip(size, spacing))  # type: ignore


def add_noise(img: torch.Tensor, noise_std: torch.Tensor, *, rician: bool,
              generator: torch.Generator) -> torch.Tensor:
    """Gaussian (clipped at 0) or Rician noise with per-sample std (absolute units)."""
    sd = to_device(noise_std.to(img.dtype), img.device).view(-1, *([1] * (img.dim() - 1)))
    n1 = torch.randn(img.shape, generator=generator, device=img.device)
    if rician:
        n2 = torch.randn(img.shape, generator=generator, device=img.device)
        return torch.sqrt((img + sd * n1) ** 2 + (sd * n2) ** 2)
    return (img + sd * n1).clamp_min(0)


def degrade(img: torch.Tensor, *, spacing: Sequence[float], thickness: Sequence[float],
            blur_u: torch.Tensor, noise_std: torch.Tensor, rician: bool,
            generator: torch.Generator) -> torch.Tensor:
    """Simulate an acquisition: slice-thickness blur, sampling at ``spacing`` mm (1 mm grid
    input), noise on the low-resolution grid, trilinear back to the input grid."""
    size = img.shape[2:]
    sig, max_sig = blur_sigmas(thickness, blur_u)
    x = img
    if max_sig > 0:
        x = blur(x, sig, max_sigma=max_sig)
    low = low_res_shape(size, spacing)
    if tuple(low) != tuple(size):
        x = F.interpolate(x, size=low, mode="trilinear", align_corners=False)
    x = add_noise(x, noise_std, rician=rician, generator=generator)
    if tuple(low) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="trilinear", align_corners=False)
    return x


def sample_resolution(g: torch.Generator, *, cfg) -> Tuple[Tuple[float, float, float],
                                                          Tuple[float, float, float], str]:
    """Per-subject (spacing, thickness, kind) following the reference probabilities."""
    u = float(torch.rand((), generator=g))
    r = torch.rand(6, generator=g).tolist()
    if u < cfg.p_res_iso:
        return (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), "isotropic"
    if u < cfg.p_res_iso + cfg.p_res_thick:
        axis = int(torch.randint(0, 3, (), generator=g))
        sp = [1.0, 1.0, 1.0]
        th = [1.0, 1.0, 1.0]
        lo, hi = cfg.thick_spacing
        sp[axis] = lo + (hi - lo) * r[0]
        tlo, thi = cfg.thick_thickness
        th[axis] = min(sp[axis], tlo + (thi - tlo) * r[1])
        return tuple(sp), tuple(th), "thick_slices"  # type: ignore[return-value]
    if u < cfg.p_res_iso + cfg.p_res_thick + cfg.p_res_lowfield:
        sp = tuple(b + cfg.lowfield_jitter * x for b, x in zip(cfg.lowfield_spacing, r[:3]))
        return sp, sp, "low_field"  # type: ignore[return-value]
    lo, hi = cfg.random_spacing
    sp = tuple(lo + (hi - lo) * x for x in r[3:6])
    return sp, sp, "random"  # type: ignore[return-value]
