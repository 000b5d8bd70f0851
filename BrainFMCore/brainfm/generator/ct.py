"""CT contrast: Hounsfield units per tissue class (nominal values for targets, random for inputs).

>>> import torch
>>> from brainfm.generator.ct import nominal_hu, random_hu
>>> from brainfm.generator.labels import ALL_LABELS
>>> hu = nominal_hu()
>>> int(hu[ALL_LABELS.index(0)]), int(hu[ALL_LABELS.index(2)])
(-1000, 25)
>>> random_hu(torch.Generator().manual_seed(0), batch=2).shape[0]
2
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch

from brainfm.generator.labels import TISSUES, tissue_of_compact

# (nominal, low, high) HU per tissue class.
HU_RANGES: Dict[str, Tuple[float, float, float]] = {
    "air": (-1000, -1000, -1000),
    "wm": (25, 20, 32),
    "gm": (40, 34, 46),
    "deep_gm": (37, 32, 44),
    "csf": (8, 0, 15),
    "brainstem": (30, 24, 36),
    "fat": (-100, -120, -80),
    "muscle": (50, 40, 60),
    "bone_cortical": (1200, 700, 1500),
    "bone_marrow": (350, 200, 500),
    "blood": (50, 40, 60),
    "skin": (40, 20, 60),
    "eye": (10, 5, 20),
    "lesion": (15, 5, 25),
    "sinus_air": (-900, -1000, -700),
}


def nominal_hu() -> torch.Tensor:
    """Nominal HU per compact label (K,)."""
    t = torch.tensor([HU_RANGES[n][0] for n in TISSUES], dtype=torch.float32)
    return t[tissue_of_compact()]


def random_hu(generator: torch.Generator, *, batch: int) -> torch.Tensor:
    """Random HU per sample and compact label (batch, K): one draw per tissue class and sample,
    plus a small per-label jitter (2 HU) so that structures of one class differ slightly."""
    lo = torch.tensor([HU_RANGES[n][1] for n in TISSUES], dtype=torch.float32)
    hi = torch.tensor([HU_RANGES[n][2] for n in TISSUES], dtype=torch.float32)
    per_class = lo + (hi - lo) * torch.rand((batch, len(TISSUES)), generator=generator)
    hu = per_class[:, tissue_of_compact()]
    return hu + 2.0 * torch.randn(hu.shape, generator=generator)


def window(hu: torch.Tensor, generator: torch.Generator, *, batch: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Random display window per sample (lo, hi) in HU: brain window [0, 80] 70% of the time,
    otherwise a wide window [-U(100, 1000), U(100, 2000)]."""
    u = torch.rand((batch, 3), generator=generator)
    brain = u[:, 0] < 0.7
    lo = torch.where(brain, torch.zeros(batch), -(100 + 900 * u[:, 1]))
    hi = torch.where(brain, torch.full((batch,), 80.0), 100 + 1900 * u[:, 2])
    return lo, hi
