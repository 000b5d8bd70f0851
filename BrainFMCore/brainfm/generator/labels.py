"""Label tables of the generator: FreeSurfer numbers, tissue classes, fs33 targets, L/R pairs.

Every label map is turned into a *compact index* map (position in :data:`ALL_LABELS`) so that
per-label contrast vectors are small tensors indexed by the map (no per-voxel Python work).

>>> import torch
>>> from brainfm.generator.labels import to_compact, ALL_LABELS, FS33
>>> idx = to_compact(torch.tensor([0, 2, 41, 999]))
>>> [ALL_LABELS[i] for i in idx.tolist()]
[0, 2, 41, 0]
>>> len(FS33)
33
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch

# Target segmentation classes (channel order of the fs33 scheme = SynthSeg list).
FS33: Tuple[int, ...] = (0, 2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 26, 28,
                         41, 42, 43, 44, 46, 47, 49, 50, 51, 52, 53, 54, 58, 60)

# Left/right pairs (FreeSurfer numbers). The extra-cerebral pairs 136/163 and 137/164 are
# inferred from their mirrored positions in the SynthSeg training maps.
LR_PAIRS: Tuple[Tuple[int, int], ...] = (
    (2, 41), (3, 42), (4, 43), (5, 44), (7, 46), (8, 47), (10, 49), (11, 50), (12, 51), (13, 52),
    (17, 53), (18, 54), (25, 57), (26, 58), (28, 60), (30, 62), (31, 63), (136, 163), (137, 164))

# Tissue classes used by the physics and CT models.
TISSUES: Tuple[str, ...] = ("air", "wm", "gm", "deep_gm", "csf", "brainstem", "fat", "muscle",
                            "bone_cortical", "bone_marrow", "blood", "skin", "eye", "lesion",
                            "sinus_air")
T = {name: i for i, name in enumerate(TISSUES)}

# FreeSurfer number -> tissue class. 502-530 are SynthSeg's extra-cerebral labels; their class is
# inferred from size and position in the training maps (documented guess: 507 soft tissue,
# 511 skull, 515 scalp, 516 muscle, 506 eyes, 509 orbital fat, 512 vertebra, 514 sinus air).
_TISSUE_OF: Dict[int, str] = {
    0: "air", 2: "wm", 41: "wm", 7: "wm", 46: "wm", 85: "wm",
    3: "gm", 42: "gm", 8: "gm", 47: "gm", 17: "gm", 53: "gm", 18: "gm", 54: "gm",
    10: "deep_gm", 49: "deep_gm", 11: "deep_gm", 50: "deep_gm", 12: "deep_gm", 51: "deep_gm",
    13: "deep_gm", 52: "deep_gm", 26: "deep_gm", 58: "deep_gm", 28: "deep_gm", 60: "deep_gm",
    4: "csf", 43: "csf", 5: "csf", 44: "csf", 14: "csf", 15: "csf", 24: "csf", 72: "csf",
    31: "csf", 63: "csf",
    16: "brainstem",
    25: "lesion", 57: "lesion", 77: "lesion", 99: "lesion",
    30: "blood", 62: "blood", 136: "blood", 137: "blood", 163: "blood", 164: "blood", 530: "blood",
    502: "muscle", 507: "skin", 508: "wm", 509: "fat", 511: "bone_cortical", 512: "bone_marrow",
    514: "sinus_air", 515: "fat", 516: "muscle", 506: "eye",
}

ALL_LABELS: Tuple[int, ...] = tuple(sorted(_TISSUE_OF))
LESION_LABEL = 77  # label painted into the generation map for simulated lesions
MAX_LABEL = 1024

# Brain = everything that SynthSeg keeps in skull-stripped inputs.
BRAIN_LABELS: Tuple[int, ...] = tuple(v for v in ALL_LABELS
                                      if v != 0 and v < 100 and _TISSUE_OF[v] not in ("blood",))
# Label sets of the four distance maps (lp, lw, rp, rw): inside the white surface = cerebral WM +
# subcortical structures + lateral ventricles; inside the pial surface additionally cortex,
# hippocampus and amygdala.
_WHITE_L = (2, 4, 5, 10, 11, 12, 13, 26, 28, 25, 31)
_WHITE_R = (41, 43, 44, 49, 50, 51, 52, 58, 60, 57, 63)
DIST_SETS: Tuple[Tuple[int, ...], ...] = (_WHITE_L + (3, 17, 18), _WHITE_L,
                                          _WHITE_R + (42, 53, 54), _WHITE_R)


def tissue_of_compact() -> torch.Tensor:
    """Tissue class index per compact label index, shape (K,)."""
    return torch.tensor([T[_TISSUE_OF[v]] for v in ALL_LABELS], dtype=torch.long)


def _lut(mapping: Dict[int, int], default: int = 0) -> torch.Tensor:
    lut = torch.full((MAX_LABEL,), default, dtype=torch.long)
    for k, v in mapping.items():
        lut[k] = v
    return lut


def compact_lut() -> torch.Tensor:
    """LUT FreeSurfer number -> compact index (unknown -> 0 = background), shape (MAX_LABEL,)."""
    return _lut({v: i for i, v in enumerate(ALL_LABELS)})


def to_compact(labels: torch.Tensor) -> torch.Tensor:
    """Map a FreeSurfer-numbered tensor to compact indices (unknown or out-of-range -> 0)."""
    lab = labels.long()
    lut = compact_lut().to(lab.device, non_blocking=True)
    inside = (lab >= 0) & (lab < MAX_LABEL)
    return torch.where(inside, lut[lab.clamp(0, MAX_LABEL - 1)], torch.zeros_like(lab))


def compact_flip_perm() -> torch.Tensor:
    """Permutation of compact indices that swaps left and right structures, shape (K,)."""
    pos = {v: i for i, v in enumerate(ALL_LABELS)}
    perm = list(range(len(ALL_LABELS)))
    for a, b in LR_PAIRS:
        if a in pos and b in pos:
            perm[pos[a]], perm[pos[b]] = pos[b], pos[a]
    return torch.tensor(perm, dtype=torch.long)


def compact_to_fs33() -> torch.Tensor:
    """Compact index -> fs33 class (labels outside fs33 -> 0; lesions handled by the caller)."""
    cls = {v: i for i, v in enumerate(FS33)}
    return torch.tensor([cls.get(v, 0) for v in ALL_LABELS], dtype=torch.long)


def fs33_flip_perm() -> List[int]:
    """Channel permutation of fs33 one-hot maps for a left-right flip."""
    cls = {v: i for i, v in enumerate(FS33)}
    perm = list(range(len(FS33)))
    for a, b in LR_PAIRS:
        if a in cls and b in cls:
            perm[cls[a]], perm[cls[b]] = cls[b], cls[a]
    return perm


def compact_mask(values) -> torch.Tensor:
    """Boolean (K,) mask of compact indices whose FreeSurfer number is in ``values``."""
    s = set(int(v) for v in values)
    return torch.tensor([v in s for v in ALL_LABELS], dtype=torch.bool)


def brain_mask_compact() -> torch.Tensor:
    """Boolean (K,) mask of brain labels (kept in skull-stripped inputs)."""
    return compact_mask(BRAIN_LABELS)


def wm_mask_compact() -> torch.Tensor:
    """Boolean (K,) mask of cerebral white matter (where lesions are placed)."""
    return compact_mask((2, 41))
