"""Trilinear sampling onto a subdivided grid: every target axis runs along one source axis (either
direction) with a step of ``1 / factor`` source voxels, ``factor`` a whole number. This is how a coarse
model's outputs (2 mm) reach a 1 mm grid of the same orientation, e.g. the 1 mm grid of its box or a
1 mm input stored in another axis order.

On such a grid the fractional position of a target voxel along a source axis takes only ``factor``
values, so no ``grid_sample`` is needed:

- scattered voxels (:meth:`Subdivision.points`) are interpolated cell by cell: the ``factor ** 3``
  target positions in a cell of 2 x 2 x 2 source voxels with one weight matrix, the channels of a voxel
  read as one row;
- whole grids (:meth:`Subdivision.whole`) whose voxels are those of the source grid subdivided over
  the same box (:attr:`Subdivision.fine_permutation`) are upsampled with ``F.interpolate`` and copied.

The values are those of ``grid_sample`` with the pull-back of
:func:`brainfm.geometry.grid.sample_grid_affine` (``padding_mode="border"``; inside for source
positions in ``[-0.5, n - 0.5]``), up to float32 rounding.

>>> import numpy as np
>>> m = np.array([[0.5, 0, 0, -0.25], [0, 0.5, 0, -0.25], [0, 0, 0.5, -0.25], [0, 0, 0, 1]])  # 2x finer, same box
>>> sub = Subdivision.of(m, (2, 2, 2))
>>> arr = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
>>> out = np.empty((4, 4, 4, 1), np.float32)
>>> sub.whole(arr, out, fill=0.0)
>>> out[:, 0, 0, 0].tolist()                         # clamped at the border, then 1/4 and 3/4 of the way
[0.0, 1.0, 3.0, 4.0]
>>> sub.points(arr, np.array([[1, 0, 0], [2, 0, 0]]))[:, 0].tolist()
[1.0, 3.0]
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Optional, Sequence, Tuple

import numpy as np

from brainfm.geometry.exact import Permutation, copy_exact, signed_permutation

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: largest float32 temporary of subdivided channels in :meth:`Subdivision.whole`
_BLOCK_BYTES = 512 << 20
#: largest departure of the voxel map from an exact subdivision (source voxels per target voxel)
_TOLERANCE = 1e-7
#: a source position within this many voxels beyond the outer voxel centres (+ 0.5) is inside
_SLACK = 1e-4


def cell_weights(*upper: np.ndarray) -> "torch.Tensor":
    """Trilinear weights of the positions inside a cell of 2 x 2 x 2 voxels: ``upper`` holds, for each
    of the three axes, the weights of the cell's upper corner at that axis's positions. Returns the
    float32 ``(positions, 8)`` matrix (positions in C order of the three axes; corners ``(d0, d1, d2)``
    in C order) that maps the cell's corner values to the values at the positions.

    >>> cell_weights(np.array([0.25, 0.75]), np.array([0.5]), np.array([0.0])).shape
    torch.Size([2, 8])
    >>> [round(float(v), 3) for v in cell_weights(np.array([0.25]), np.array([0.5]), np.array([0.0]))[0]]
    [0.375, 0.0, 0.375, 0.0, 0.125, 0.0, 0.125, 0.0]
    """
    import torch

    w1 = [np.stack([1.0 - np.asarray(w, np.float64), np.asarray(w, np.float64)], 1) for w in upper]
    mat = np.einsum("ai,bj,ck->abcijk", *w1).reshape(-1, 8)
    return torch.from_numpy(mat.astype(np.float32))


@dataclass(frozen=True)
class Subdivision:
    """A target grid that subdivides the source grid: target axis ``j`` runs along source axis
    ``axes[j]``; ``m`` is the 4 x 4 map from target voxel indices to source voxel indices."""

    m: np.ndarray
    axes: Tuple[int, int, int]
    factor: int
    src_shape: Tuple[int, int, int]

    @classmethod
    def of(cls, m: np.ndarray, src_shape: Sequence[int]) -> Optional["Subdivision"]:
        """The subdivision described by ``m`` (target voxel -> source voxel), or None when ``m`` is not
        a signed permutation scaled by ``1 / factor`` (a whole ``factor`` of at least 1) or a source axis
        has a single voxel.

        >>> Subdivision.of(np.diag([0.5, 0.5, 0.5, 1.0]), (4, 4, 4)).factor
        2
        >>> Subdivision.of(np.diag([0.5, 0.4, 0.5, 1.0]), (4, 4, 4)) is None
        True
        """
        m = np.asarray(m, np.float64)
        shape = tuple(int(s) for s in src_shape)
        if m.shape != (4, 4) or len(shape) != 3 or min(shape) < 2:
            return None
        lin = m[:3, :3]
        axes = tuple(int(np.argmax(np.abs(lin[:, j]))) for j in range(3))
        if sorted(axes) != [0, 1, 2]:
            return None
        step = np.array([abs(lin[axes[j], j]) for j in range(3)])
        rest = lin.copy()
        for j in range(3):
            rest[axes[j], j] = 0.0
        # within float32 rounding of the headers: a drift of at most 1e-7 voxels per voxel, no more than
        # grid_sample's own float32 coordinates carry
        if np.abs(rest).max() > _TOLERANCE or step.min() <= 0:
            return None
        factor = int(round(1.0 / step[0]))
        if factor < 1 or np.abs(step * factor - 1.0).max() > _TOLERANCE:
            return None
        return cls(m, axes, factor, shape)  # type: ignore[arg-type]

    def _axis(self, j: int, idx: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(low, slot, weights, inside)`` of target indices ``idx`` along target axis ``j``: the lower
        corner in the source padded by one voxel on each side (int64), the slot ``idx % factor``, the
        weight of the upper corner for each slot (``(factor,)`` float64), and whether the position lies
        inside the source. Index ``k + factor * q`` lies ``q`` source voxels from index ``k``, so the
        cell is counted from the slot's, never rounded anew."""
        a, f = self.axes[j], self.factor
        n = self.src_shape[a]
        step = float(self.m[a, j])
        sign = 1 if step > 0 else -1
        pk = step * np.arange(f) + float(self.m[a, 3])
        ck = np.floor(pk)
        q, slot = np.divmod(np.asarray(idx, np.int64), f)
        cell = ck[slot] + sign * q
        p = pk[slot] + sign * q
        inside = (p >= -0.5 - _SLACK) & (p <= n - 0.5 + _SLACK)
        # beyond: outside (filled); within one voxel the padding repeats the border voxels
        low = np.clip(cell, -1, n - 1).astype(np.int64) + 1
        return low, slot, pk - ck, inside

    @cached_property
    def fine_permutation(self) -> Optional[Permutation]:
        """The target voxels as voxels of the source grid subdivided ``factor`` times over the same box
        (what ``F.interpolate(scale_factor=factor, align_corners=False)`` makes): their signed
        permutation (:func:`brainfm.geometry.exact.signed_permutation`), or None when the target voxels
        lie between those of that grid."""
        f = float(self.factor)
        to_fine = np.diag([f, f, f, 1.0])
        to_fine[:3, 3] = (f - 1.0) / 2.0  # source position p -> fine index f * p + (f - 1) / 2
        return signed_permutation(to_fine @ self.m)

    def whole(self, arr: np.ndarray, out: np.ndarray, *, fill: float = 0.0) -> None:
        """Fill ``out`` (``(X', Y', Z', C)``, the whole target grid) with ``(C, X, Y, Z)`` source values
        interpolated by ``F.interpolate`` onto the subdivided grid and copied from it exactly (target
        voxels outside the source: ``fill``). Needs :attr:`fine_permutation`."""
        import torch
        import torch.nn.functional as F

        perm = self.fine_permutation
        if perm is None:
            raise ValueError("the target voxels are not voxels of the subdivided source grid")
        f = self.factor
        t = torch.from_numpy(np.asarray(arr, np.float32))
        fine_bytes = 4 * int(np.prod(self.src_shape)) * f ** 3
        per_call = max(1, _BLOCK_BYTES // max(1, fine_bytes))
        with torch.no_grad():
            for c0 in range(0, t.shape[0], per_call):
                fine = F.interpolate(t[None, c0:c0 + per_call], scale_factor=f, mode="trilinear", align_corners=False)[0]
                copy_exact(fine.permute(1, 2, 3, 0).numpy(), perm, out[..., c0:c0 + fine.shape[0]], fill)

    def points(self, arr: np.ndarray, voxels: np.ndarray, *, fill: float = 0.0) -> np.ndarray:
        """``(C, X, Y, Z)`` sampled at target voxels ``voxels`` (``(N, 3)`` indices): a new ``(N, C)``
        float32 array. The ``factor ** 3`` positions of each source cell the voxels fall in are
        interpolated together from its 8 corners (one matrix product)."""
        import torch

        vox = np.asarray(voxels)
        c = int(arr.shape[0])
        out = np.empty((vox.shape[0], c), np.float32)
        if vox.shape[0] == 0:
            return out
        f = self.factor
        low = [np.empty(0)] * 3
        slot = [np.empty(0)] * 3
        weights = [np.empty(0)] * 3
        inside = np.ones(vox.shape[0], bool)
        for j in range(3):
            a = self.axes[j]
            low[a], slot[a], weights[a], ins = self._axis(j, vox[:, j])
            inside &= ins
        # the channels of a voxel side by side: each corner is one contiguous row (no copy when the
        # caller's array is a (C, X, Y, Z) view of an (X, Y, Z, C) array)
        rows = torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(arr), 0, -1), np.float32)).view(-1, c)
        _, n1, n2 = (self.src_shape[a] + 1 for a in range(3))  # cells per axis, borders included
        key = (low[0] * n1 + low[1]) * n2 + low[2]
        cells, where = np.unique(key, return_inverse=True)
        c0, rem = np.divmod(cells, n1 * n2)
        c1, c2 = np.divmod(rem, n2)
        # corner d of cell c: source voxel c + d - 1, the border voxel repeated beyond the border
        sy, sz = self.src_shape[1], self.src_shape[2]
        i = [[np.clip(cc + d - 1, 0, self.src_shape[a] - 1) for d in (0, 1)] for a, cc in enumerate((c0, c1, c2))]
        flat = np.stack([(i[0][d0] * sy + i[1][d1]) * sz + i[2][d2]
                         for d0 in (0, 1) for d1 in (0, 1) for d2 in (0, 1)])  # (8, M)
        corners = rows.index_select(0, torch.from_numpy(flat.reshape(-1))).view(8, -1)  # (8, M * C)
        vals = (cell_weights(*weights) @ corners).view(-1, c)  # row: slot * M + cell
        s = (slot[0] * f + slot[1]) * f + slot[2]
        torch.index_select(vals, 0, torch.from_numpy(s * cells.shape[0] + where.reshape(-1)), out=torch.from_numpy(out))
        if not inside.all():
            out[~inside] = fill
        return out
