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

from typing import Dict, List, Optional, Sequence, Tuple

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


REDUCTIONS = ("mean", "argmax", "float16")


def _final_rows(tiles: Sequence[Slices], n_rows: int) -> List[int]:
    """``out[n]``: rows of the first axis below this index get nothing from tiles after ``n``."""
    out = [n_rows] * len(tiles)
    low = n_rows
    for n in range(len(tiles) - 1, -1, -1):
        out[n] = low
        low = min(low, int(tiles[n][0].start or 0))
    return out


def band_rows(tiles: Sequence[Slices], n_rows: int) -> int:
    """Rows of the first axis that :class:`TileAccumulator` keeps as float32 sums at once for
    ``tiles`` added in this order (the tile edge for the x-major order of :func:`plan_tiles`).

    >>> band_rows(plan_tiles((100, 100, 40), 64, 0.25), 100)
    64
    """
    final = _final_rows(tiles, n_rows)
    base, top, cap = 0, 0, 0
    for n, sl in enumerate(tiles):
        top = max(top, int(sl[0].stop))
        cap = max(cap, top - base)
        base = max(base, final[n])
    return max(cap, 1)


class TileAccumulator:
    """Weighted (cosine-window) blending of per-tile outputs, with compact storage of the result.

    When the list of ``tiles`` is given (in the order they will be added), float32 sums are kept
    only for a **band** of rows of the first axis: the rows that tiles still to come can touch
    (:func:`band_rows`; one tile edge for :func:`plan_tiles`' order). As soon as a row can receive
    nothing more it is divided by its weight and stored in the result according to ``reduce``
    (output name -> reduction):

    - ``"mean"`` (default): the blended values, float32 ``(C, X, Y, Z)``;
    - ``"argmax"``: the index of the largest blended channel (first maximum), ``(X, Y, Z)`` uint8
      (int32 from 255 channels): a label decision that needs 1 byte per voxel instead of 4 per
      channel, identical to the arg-max of the fully blended logits;
    - ``"float16"``: the blended values stored as float16.

    Without ``tiles`` every row stays in the sums until :meth:`result` (the whole-volume memory of
    the earlier design). Only the outputs actually added are allocated; a single tile covering the
    whole volume is kept as it is (no copy, weight 1).

    >>> acc = TileAccumulator((4, 4, 4))
    >>> import torch
    >>> acc.add((slice(0, 4),) * 3, {"a": torch.ones(1, 2, 4, 4, 4)})
    >>> acc.result()["a"].shape
    (2, 4, 4, 4)
    >>> tiles = plan_tiles((40, 8, 8), 16, 0.25)
    >>> acc = TileAccumulator((40, 8, 8), tiles, reduce={"seg": "argmax"})
    >>> logits = torch.zeros(1, 3, 40, 8, 8); logits[:, 2, 20:] = 1.0
    >>> for sl in tiles:
    ...     acc.add(sl, {"seg": logits[(slice(None), slice(None)) + sl]})
    >>> lab = acc.result()["seg"]; lab.dtype, int(lab[19, 0, 0]), int(lab[20, 0, 0]), acc.band
    (dtype('uint8'), 0, 2, 16)
    """

    def __init__(self, shape: Sequence[int], tiles: Optional[Sequence[Slices]] = None, *,
                 reduce: Optional[Dict[str, str]] = None) -> None:
        self.shape = tuple(int(s) for s in shape[:3])
        self.reduce = dict(reduce or {})
        bad = {k: v for k, v in self.reduce.items() if v not in REDUCTIONS}
        if bad:
            raise InputError(f"unknown reduction(s) {bad}; choose from {', '.join(REDUCTIONS)}")
        self._tiles = list(tiles) if tiles is not None else None
        n_rows = self.shape[0]
        self._final = _final_rows(self._tiles, n_rows) if self._tiles is not None else None
        #: rows of the first axis held as float32 sums at once
        self.band = band_rows(self._tiles, n_rows) if self._tiles is not None else n_rows
        self._base = 0  # first row held in the sums
        self._count = 0  # tiles added so far
        self._sums: Dict[str, np.ndarray] = {}
        self._weight: Optional[np.ndarray] = None
        self._out: Dict[str, np.ndarray] = {}
        self._windows: Dict[Tuple[int, int, int], np.ndarray] = {}
        self._whole = False

    def _window(self, shape: Tuple[int, int, int]) -> np.ndarray:
        if shape not in self._windows:
            self._windows[shape] = blend_window(shape)
        return self._windows[shape]

    @property
    def sums_bytes(self) -> int:
        """Bytes held now by the float32 band sums and weights."""
        return int(sum(a.nbytes for a in self._sums.values()) + (0 if self._weight is None else self._weight.nbytes))

    def add(self, sl: Slices, outputs: Dict[str, torch.Tensor]) -> None:
        """Add one tile's outputs (tensors shaped ``(1, C, x, y, z)``, any memory format) at ``sl``."""
        tshape = tuple(s.stop - s.start for s in sl)
        if tshape == self.shape and self._count == 0 and not self._out:
            # whole volume in one piece: weight 1 everywhere, keep the outputs as they are
            for name, t in outputs.items():
                self._out[name] = self._reduced(name, t.detach().to("cpu", torch.float32).numpy()[0])
            self._whole = True
            self._count += 1
            self._base = self.shape[0]
            return
        if self._whole:
            raise RuntimeError("a tile was added after the whole volume (internal error)")
        a, b = int(sl[0].start), int(sl[0].stop)
        if a < self._base or b - self._base > self.band:
            raise RuntimeError(f"tile rows {a}:{b} are outside the blending band starting at row {self._base} "
                               "(tiles must be added in the planned order)")
        w = self._window(tshape)  # type: ignore[arg-type]
        rows = slice(a - self._base, b - self._base)
        if self._weight is None:
            self._weight = np.zeros((self.band,) + self.shape[1:], np.float32)
        for name, t in outputs.items():
            arr = t.detach().to("cpu", torch.float32).numpy()[0]
            if name not in self._sums:
                self._sums[name] = np.zeros((arr.shape[0], self.band) + self.shape[1:], np.float32)
            arr *= w[None]  # the tile's own output: weighting it in place avoids a temporary
            self._sums[name][(slice(None), rows) + tuple(sl[1:])] += arr
        self._weight[(rows,) + tuple(sl[1:])] += w
        self._count += 1
        if self._final is not None and self._count <= len(self._final):
            upto = self._final[self._count - 1]
            if upto > self._base:
                self._finish_rows(upto)

    def _reduced(self, name: str, arr: np.ndarray) -> np.ndarray:
        """``arr`` (C, x, y, z) float32 stored as the reduction of ``name`` asks."""
        how = self.reduce.get(name, "mean")
        if how == "argmax":
            return _argmax(arr)
        if how == "float16":
            return arr.astype(np.float16)
        return arr

    def _store(self, name: str, rows: slice, blended: np.ndarray) -> None:
        how = self.reduce.get(name, "mean")
        out = self._out.get(name)
        if out is None:
            c = blended.shape[0]
            if how == "argmax":
                out = np.empty(self.shape, np.uint8 if c < 255 else np.int32)
            else:
                out = np.empty((c,) + self.shape, np.float16 if how == "float16" else np.float32)
            self._out[name] = out
        if how == "argmax":
            out[rows] = _argmax(blended)
        else:
            out[:, rows] = blended

    def _finish_rows(self, upto: int) -> None:
        """Divide rows ``[base, upto)`` by their weights, store them, and slide the band."""
        k = upto - self._base
        if self._weight is None:
            raise RuntimeError("tiling left voxels uncovered (internal error)")
        weight = self._weight[:k]
        if np.any(weight <= 0):
            raise RuntimeError("tiling left voxels uncovered (internal error)")
        rows = slice(self._base, upto)
        for name, sums in self._sums.items():
            part = sums[:, :k]
            part /= weight[None]
            self._store(name, rows, part)
            _slide(sums, k, axis=1)
        _slide(self._weight, k, axis=0)
        self._base = upto

    def result(self) -> Dict[str, np.ndarray]:
        """Blended outputs ``name -> (C, X, Y, Z)`` (``(X, Y, Z)`` channel indices for ``argmax``);
        the accumulator is consumed."""
        if self._count == 0:
            raise RuntimeError("tiling left voxels uncovered (internal error)")
        if self._base < self.shape[0]:
            self._finish_rows(self.shape[0])
        self._sums.clear()
        self._weight = None
        out, self._out = self._out, {}
        return out


def _slide(arr: np.ndarray, k: int, *, axis: int) -> None:
    """Move rows ``k:`` of ``axis`` to the front and zero the rest, row by row (a whole-slice
    assignment of overlapping rows would make a temporary copy of the band)."""
    n = arr.shape[axis]
    idx = [slice(None)] * arr.ndim
    for r in range(max(n - k, 0)):
        idx[axis] = r
        dst = tuple(idx)
        idx[axis] = r + k
        arr[dst] = arr[tuple(idx)]
    idx[axis] = slice(max(n - k, 0), n)
    arr[tuple(idx)] = 0.0


def _argmax(logits: np.ndarray) -> np.ndarray:
    """First-maximum channel of ``(C, ...)`` float32 logits (any strides) as uint8 / int32."""
    from brainfm.tasks.segmentation import channel_indices

    return channel_indices(logits)
