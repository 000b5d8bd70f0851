"""PEPSI-style lesions: thresholded smooth noise inside cerebral white matter.

>>> import torch
>>> from brainfm.generator.pathology import lesion_mask
>>> wm = torch.ones(1, 1, 16, 16, 16, dtype=torch.bool)
>>> m = lesion_mask(wm, torch.Generator().manual_seed(1), scale=0.2, threshold=1.0)
>>> m.dtype, bool(m.any()), bool(m.all())
(torch.bool, True, False)
"""
from __future__ import annotations

import torch

from brainfm.generator.interp import grid_shape, resize


def lesion_mask(white_matter: torch.Tensor, generator: torch.Generator, *, scale: float,
                threshold: float) -> torch.Tensor:
    """Boolean (1, 1, S...) lesion mask: smooth unit-variance noise (control grid
    ``scale * size``) above ``threshold`` std, restricted to ``white_matter``.

    ``generator`` must live on the device of ``white_matter``.
    """
    size = white_matter.shape[2:]
    dev = white_matter.device
    g = torch.randn((1, 1, *grid_shape(scale, size)), generator=generator, device=dev)
    field = resize(g, size)
    # trilinear upsampling lowers the variance between control points: renormalise (no sync)
    field = (field - field.mean()) / field.std().clamp_min(1e-6)
    return (field > threshold) & white_matter
