"""Signed distance maps (lp, lw, rp, rw) of the pial and white surfaces from a label map.

Computed with SciPy's exact EDT inside the bounding box of each region plus a margin, so a
whole head takes about a second; values are clamped to +-``clip`` mm, negative inside.

>>> import numpy as np
>>> from brainfm.generator.distance import distance_maps
>>> lab = np.zeros((20, 20, 20), np.int32); lab[5:15, 5:15, 5:15] = 2
>>> d = distance_maps(lab, clip=5.0)
>>> d.shape, float(d[1, 10, 10, 10]) < 0, float(d[1, 0, 0, 0]), float(d[2].min())
((4, 20, 20, 20), True, 5.0, 5.0)
"""
from __future__ import annotations

from typing import Sequence

import math

import numpy as np
import torch
from scipy import ndimage

from brainfm.generator.labels import DIST_SETS


def signed_distance(mask: np.ndarray, *, clip: float, spacing: Sequence[float] = (1, 1, 1)) -> np.ndarray:
    """Signed distance (mm, float32) to the boundary of ``mask``: negative inside, clamped."""
    out = np.full(mask.shape, clip, np.float32)
    if not mask.any():
        return out
    m = int(np.ceil(clip)) + 2
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - m, 0)
    hi = np.minimum(idx.max(0) + m + 1, mask.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    sub = mask[sl]
    outside = ndimage.distance_transform_edt(~sub, sampling=spacing)
    inside = ndimage.distance_transform_edt(sub, sampling=spacing)
    d = np.where(sub, -(inside - 0.5), outside - 0.5)
    out[sl] = np.clip(d, -clip, clip)
    return out


def distance_maps(labels: np.ndarray, *, clip: float = 5.0) -> np.ndarray:
    """(4, X, Y, Z) float32 signed distances lp, lw, rp, rw of a FreeSurfer label map (1 mm)."""
    lab = np.asarray(labels)
    return np.stack([signed_distance(np.isin(lab, s), clip=clip) for s in DIST_SETS], 0)


def _band_sq_edt(feature: torch.Tensor, radius: int) -> torch.Tensor:
    """Squared distance to the nearest ``feature`` voxel, exact up to ``radius`` (larger -> > radius^2).

    Separable lower envelope restricted to a window of +-radius per axis (exact inside the band
    because every axis offset of the nearest point is <= the distance)."""
    big = float(3 * (radius + 1) ** 2)
    f = torch.where(feature, torch.zeros((), device=feature.device), torch.full((), big, device=feature.device))
    for axis in (1, 2, 3):  # f is (B, X, Y, Z)
        pad = [0] * 6  # F.pad order: Z, Y, X (low, high)
        pad[2 * (3 - axis)] = pad[2 * (3 - axis) + 1] = radius
        fp = torch.nn.functional.pad(f[:, None], pad, value=big)[:, 0]
        n = f.shape[axis]
        out = f.clone()
        for k in range(-radius, radius + 1):
            if k == 0:
                continue
            out = torch.minimum(out, fp.narrow(axis, radius + k, n) + float(k * k))
        f = out
    return f


def band_distance_maps(labels: torch.Tensor, *, clip: float = 5.0) -> torch.Tensor:
    """Torch version of :func:`distance_maps` on the device of ``labels`` (fast on GPUs):
    (4, X, Y, Z) signed mm, exact within +-``clip``, clamped to it."""
    from brainfm.generator.labels import compact_mask, to_compact

    lab = to_compact(labels)
    r = int(math.ceil(clip)) + 1
    maps = []
    for s in DIST_SETS:
        inside = compact_mask(s).to(lab.device)[lab]
        both = torch.stack([inside, ~inside], 0)  # features for outside / inside distances
        sq = _band_sq_edt(both, r)
        d = torch.where(inside, -(sq[1].sqrt() - 0.5), sq[0].sqrt() - 0.5)
        maps.append(d.clamp(-clip, clip))
    return torch.stack(maps, 0)
