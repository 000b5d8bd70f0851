"""Left-right mirroring of head outputs (and training targets) on the RAS network frame.

Axis 0 of the network frame runs from left to right (tensor dim 2 of ``(N, C, X, Y, Z)``). Mirroring
an output flips that axis and, for channels that name a side, swaps or negates them: segmentation
channels go to their left/right partner (:attr:`brainfm.labels.LabelScheme.lr_partner`), distance
maps swap lp<->rp and lw<->rw, atlas coordinates negate x. Images, bias fields and residuals only flip.
The generator mirrors training targets with these rules, and the predictor uses them to average a
prediction with the one of the mirrored input (:attr:`brainfm.models.ModelInfo.test_time_flip`).

>>> import torch
>>> d = torch.arange(4.0).reshape(1, 4, 1, 1, 1).repeat(1, 1, 2, 1, 1)
>>> flip_distance(d)[0, :, 0, 0, 0].tolist()
[2.0, 3.0, 0.0, 1.0]
>>> mirror_output("segmentation", torch.eye(3).reshape(1, 3, 3, 1, 1), lr_partner=(0, 2, 1))[0, :, :, 0, 0].tolist()
[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

#: heads whose mirrored output is the flipped output (no side-specific channels)
FLIP_ONLY_HEADS = ("T1", "T2", "FLAIR", "CT", "bias_field_log", "high_res_residual", "image")


def flip_distance(d: torch.Tensor) -> torch.Tensor:
    """Mirror (B, 4, X, Y, Z) distance maps along x and swap lp<->rp, lw<->rw."""
    return d.flip(2)[:, [2, 3, 0, 1]]


def flip_registration(r: torch.Tensor) -> torch.Tensor:
    """Mirror (B, 3, X, Y, Z) atlas coordinates along x and negate the x coordinate."""
    r = r.flip(2)
    return torch.cat([-r[:, :1], r[:, 1:]], 1)


def can_mirror(name: str, channels: int, *, lr_partner: Sequence[int] = ()) -> bool:
    """Whether head ``name`` with ``channels`` output channels has a mirroring rule (not features,
    unknown heads, or a segmentation head without partners for each of its channels)."""
    return (name in FLIP_ONLY_HEADS or (name == "distance" and channels == 4)
            or (name == "registration" and channels == 3)
            or (name in ("segmentation", "seg") and len(lr_partner) == channels))


def mirror_output(name: str, t: torch.Tensor, *, lr_partner: Sequence[int] = ()) -> Optional[torch.Tensor]:
    """Head ``name``'s output ``t`` (B, C, X, Y, Z) for a mirrored input, mirrored back; None when the
    head has no mirroring rule (:func:`can_mirror`)."""
    if not can_mirror(name, int(t.shape[1]), lr_partner=lr_partner):
        return None
    if name == "distance":
        return flip_distance(t)
    if name == "registration":
        return flip_registration(t)
    if name in ("segmentation", "seg"):
        return t.flip(2)[:, list(lr_partner)]
    return t.flip(2)
