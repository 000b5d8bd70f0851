"""Sliding-window tiling with overlap and smooth (cosine) blending.

Tiles start at 0, advance by ``round(tile * (1 - overlap))`` and the last tile is aligned with the
end of the axis, so every voxel is covered and no padding is needed (the network accepts any size).
Each tile's outputs are multiplied by a separable raised-cosine window (floored at 1e-3 so that
voxels at the volume border, covered by one tile only, keep a positive weight) and accumulated;
the sum is divided by the accumulated weights.

>>> from brainfm.inference.tiling import tile_starts, plan_tiles
>>> tile_starts(100, 64, 0.25)
[0, 36]
>>> tile_starts(40, 64, 0.25)
[0]
>>> len(plan_tiles((100, 100, 40), 64, 0.25))
4
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from brainfm.errors import InputError

Slices = Tuple[slice, slice, slice]

MIN_AUTO_TILE = 64
MIN_TILE = 16


def tile_starts(size: int, tile: int, overlap: float) -> List[int]:
    """Start indices of tiles of length ``tile`` covering ``[0, size)`` with fractional ``overlap``."""
    if not 0.0 <= overlap < 1.0:
        raise InputError(f"tile overlap must be in [0, 1), got {overlap}")
    if size <= tile:
        return [0]
    step = max(1, int(round(tile * (1.0 - overlap))))
    starts = list(range(0, size - tile, step))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


def plan_tiles(shape: Sequence[int], tile: int, overlap: float) -> List[Slices]:
    """All tile slices (Cartesian product over the three axes)."""
    per_axis = [
        [slice(s, min(s + tile, n)) for s in tile_starts(int(n), int(tile), overlap)] for n in shape[:3]
    ]
    return [(a, b, c) for a in per_axis[0] for b in per_axis[1] for c in per_axis[2]]


def blend_window(shape: Sequence[int], *, floor: float = 1e-3) -> np.ndarray:
    """Separable raised-cosine (Hann) weights for a tile of ``shape``, values in [floor, 1].

    >>> w = blend_window((4, 4, 4)); float(w.max()) <= 1.0 and float(w.min()) > 0
    True
    """
    axes = []
    for n in shape[:3]:
        t = (np.arange(n, dtype=np.float64) + 0.5) / n
        axes.append(np.maximum(np.sin(np.pi * t) ** 2, floor))
    w = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return np.maximum(w, floor).astype(np.float32)


def choose_tile_size(
    shape: Sequence[int], budget_bytes: float, bytes_per_voxel: float, *, minimum: int = MIN_AUTO_TILE
) -> int:
    """Largest cube edge (multiple of 16, >= ``minimum``) whose forward fits ``budget_bytes``.

    >>> choose_tile_size((300, 300, 300), 2.0e9, 3000.0)
    80
    """
    edge = int((max(budget_bytes, 0.0) / max(bytes_per_voxel, 1.0)) ** (1.0 / 3.0))
    edge = (edge // 16) * 16
    edge = max(edge, minimum)
    return int(min(edge, max(int(max(shape[:3])), minimum)))


class TileAccumulator:
    """Weighted accumulation of per-tile outputs into whole-volume arrays.

    Only the outputs actually added are allocated (``C, X, Y, Z`` float32 per name), so the
    64-channel features cost memory only when requested.

    >>> acc = TileAccumulator((4, 4, 4))
    >>> import torch
    >>> acc.add((slice(0, 4),) * 3, {"a": torch.ones(1, 2, 4, 4, 4)})
    >>> acc.result()["a"].shape
    (2, 4, 4, 4)
    """

    def __init__(self, shape: Sequence[int]) -> None:
        self.shape = tuple(int(s) for s in shape[:3])
        self._sums: Dict[str, np.ndarray] = {}
        self._weight = np.zeros(self.shape, np.float32)
        self._windows: Dict[Tuple[int, int, int], np.ndarray] = {}
        self._whole = False

    def _window(self, shape: Tuple[int, int, int], whole: bool) -> np.ndarray:
        if whole:
            return np.ones(shape, np.float32)
        if shape not in self._windows:
            self._windows[shape] = blend_window(shape)
        return self._windows[shape]

    def add(self, sl: Slices, outputs: Dict[str, torch.Tensor]) -> None:
        """Add one tile's outputs (tensors shaped ``(1, C, x, y, z)``) at ``sl``."""
        tshape = tuple(s.stop - s.start for s in sl)
        if tshape == self.shape and not self._sums and not self._weight.any():
            # whole volume in one piece: keep the outputs as they are (no blending copies)
            for name, t in outputs.items():
                self._sums[name] = t.detach().to("cpu", torch.float32).numpy()[0]
            self._weight += 1.0
            self._whole = True
            return
        w = self._window(tshape, tshape == self.shape)  # type: ignore[arg-type]
        for name, t in outputs.items():
            arr = t.detach().to("cpu", torch.float32).numpy()[0]
            if name not in self._sums:
                self._sums[name] = np.zeros((arr.shape[0],) + self.shape, np.float32)
            self._sums[name][(slice(None),) + tuple(sl)] += arr * w[None]
        self._weight[tuple(sl)] += w

    def result(self) -> Dict[str, np.ndarray]:
        """Blended outputs ``name -> (C, X, Y, Z)`` float32 (the accumulators are consumed)."""
        if np.any(self._weight <= 0):
            raise RuntimeError("tiling left voxels uncovered (internal error)")
        out = {}
        whole = self._whole
        for name in list(self._sums):
            arr = self._sums.pop(name)
            if not whole:  # one whole-volume piece has weight 1 everywhere: nothing to divide
                arr /= self._weight[None]
            out[name] = arr
        return out
