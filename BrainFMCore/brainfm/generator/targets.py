"""Targets of a deformed subject: noise-free T1/T2/FLAIR renderings, CT, segmentation,
distance, registration; and the left-right flip of every channel-carrying target.

Units follow DESIGN.md: images min-max [0, 1], CT in HU/1000, distance in mm (clamped +-3,
negative inside), registration in atlas mm/100, segmentation as fs33 class indices.

>>> import torch
>>> from brainfm.generator.targets import minmax, one_hot_fs33
>>> float(minmax(torch.tensor([[2.0, 4.0]])).max())
1.0
>>> one_hot_fs33(torch.zeros(1, 2, 2, 2, dtype=torch.long)).shape
torch.Size([1, 33, 2, 2, 2])
"""
from __future__ import annotations

from typing import Dict

import torch

from brainfm.generator import physics
from brainfm.models.mirror import flip_distance, flip_registration  # noqa: F401 (the generator's flips)
from brainfm.generator.ct import nominal_hu
from brainfm.generator.interp import blur, to_device
from brainfm.generator.labels import FS33, compact_to_fs33

TARGET_PV_SIGMA = 0.5  # voxels of partial-volume smoothing of the rendered targets


def minmax(x: torch.Tensor) -> torch.Tensor:
    """(x - min) / (max - min) over all but the first axis (tensor ops only, no sync)."""
    flat = x.flatten(1)
    lo = flat.amin(1).view(-1, *([1] * (x.dim() - 1)))
    hi = flat.amax(1).view(-1, *([1] * (x.dim() - 1)))
    return (x - lo) / (hi - lo).clamp_min(1e-8)


def render_image_targets(gen_labels: torch.Tensor) -> Dict[str, torch.Tensor]:
    """T1 (MPRAGE), T2 (spin echo), FLAIR with the fixed protocols of
    :data:`physics.STANDARD_PROTOCOLS` and nominal tissue parameters, (1, 1, S...) in [0, 1];
    and CT with nominal HU per tissue in HU/1000. One grouped blur for all four."""
    p = physics.nominal_params()
    names = list(physics.STANDARD_PROTOCOLS)
    values = [physics.render(p, physics.STANDARD_PROTOCOLS[k]) for k in names] + [nominal_hu() / 1000.0]
    table = to_device(torch.stack(values, 0), gen_labels.device)  # (4, K)
    imgs = table[:, gen_labels.reshape(-1)].view(len(values), 1, *gen_labels.shape[2:])
    sig = torch.full((len(values), 3), TARGET_PV_SIGMA, device=gen_labels.device)
    imgs = blur(imgs, sig, max_sigma=TARGET_PV_SIGMA)
    out = {k: minmax(imgs[i:i + 1]) for i, k in enumerate(names)}
    out["CT"] = imgs[-1:]
    return out


def segmentation_fs33(labels: torch.Tensor) -> torch.Tensor:
    """fs33 class indices (same shape, int64) of a compact label map."""
    return to_device(compact_to_fs33(), labels.device)[labels]


def one_hot_fs33(seg: torch.Tensor) -> torch.Tensor:
    """One-hot (B, 33, S...) float of fs33 class indices (B, S...)."""
    return torch.nn.functional.one_hot(seg, len(FS33)).movedim(-1, 1).float()


def distance_target(d: torch.Tensor, *, scale: float, max_distance: float) -> torch.Tensor:
    """Deformed distance maps divided by the affine scale factor, clamped to +-max_distance."""
    return (d / scale).clamp(-max_distance, max_distance)
