"""Mapping arrays from one grid onto another (e.g. network-grid outputs onto the input grid), fast
and with the same values as :func:`brainfm.geometry.resample_to_grid` (world-coordinate pull-back,
``fill`` outside, Gaussian anti-alias on coarsened axes, nearest keeps integer types).

A :class:`GridMapper` is built once per pair of grids and picks the cheapest way:

- ``"identity"``: same grid (1 mm RAS input without crop, or the ``1mm`` output frame): the array
  itself is returned by ``mapper(arr)`` (callers must copy before modifying it);
- ``"exact"``: the target voxels are source voxels (axis permutation/flip + integer shift, e.g. a
  cropped 1 mm RAS or LPS input): a slice copy, no interpolation (:mod:`brainfm.geometry.exact`);
- ``"resample"``: trilinear/nearest ``grid_sample`` with the sampling grid and the outside mask
  computed **once** and reused for every output (cached up to :data:`GRID_CACHE_BYTES`).

:meth:`brainfm.geometry.FrameTransform.to_input` (the way back from the network frame) is
:meth:`GridMapper.volume` of :meth:`~brainfm.geometry.FrameTransform.mapper`.

>>> import numpy as np
>>> m = GridMapper(np.eye(4), (4, 4, 4), np.eye(4), (4, 4, 4))
>>> m.kind
'identity'
>>> aff = np.eye(4); aff[:3, 3] = -1                 # target starts one voxel before the source
>>> m = GridMapper(np.eye(4), (4, 4, 4), aff, (6, 6, 6))
>>> m.kind, m(np.ones((4, 4, 4), np.float32), "linear", -5.0)[0, 0, 0].item()
('exact', -5.0)
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Optional, Sequence, Tuple

import numpy as np

from brainfm.geometry.exact import copy_exact, signed_permutation
from brainfm.geometry.grid import grid_base, resample_to_grid, sample_grid_affine, torch_samples_exactly
from brainfm.geometry.resample import antialias_sigmas, blur, check_order
from brainfm.geometry.subdivide import Subdivision
from brainfm.volume import Volume

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: largest sampling grid (+ outside mask) kept between calls; bigger targets are recomputed per call
GRID_CACHE_BYTES = 1 << 30
_CHUNK = 1 << 22  # target voxels per grid slab when the grid is not cached
#: largest float32 temporary of one ``grid_sample`` call (channels are sampled in groups)
CHANNEL_BLOCK_BYTES = 512 << 20


class GridMapper:
    """Maps arrays from a source grid ``(src_affine, src_shape)`` onto ``(dst_affine, dst_shape)``.

    ``mapper(arr, order, fill)`` maps one ``(X, Y, Z)`` array (a :data:`brainfm.tasks.context.GridMap`);
    :meth:`channels` maps ``(C, X, Y, Z)`` to ``(X', Y', Z', C)``. Results of the ``"exact"`` and
    ``"resample"`` kinds are new arrays; the ``"identity"`` kind returns its input.
    """

    def __init__(self, src_affine: np.ndarray, src_shape: Sequence[int], dst_affine: np.ndarray,
                 dst_shape: Sequence[int], *, antialias: bool = True) -> None:
        self.src_affine = np.asarray(src_affine, np.float64)
        self.dst_affine = np.asarray(dst_affine, np.float64)
        self.src_shape = tuple(int(s) for s in src_shape)
        self.dst_shape = tuple(int(s) for s in dst_shape)
        self.antialias = bool(antialias)
        self.m = np.linalg.inv(self.src_affine) @ self.dst_affine  # target voxel -> source voxel
        self.perm = signed_permutation(self.m)
        if self.perm is not None and self.src_shape == self.dst_shape and np.allclose(self.m, np.eye(4), atol=1e-5):
            self.kind = "identity"
        elif self.perm is not None:
            self.kind = "exact"
        else:
            self.kind = "resample"
        factors = np.linalg.norm(self.m[:3, :3], axis=1)  # source voxels per target step, per source axis
        self.sigmas = antialias_sigmas(factors) if self.antialias else (0.0, 0.0, 0.0)
        self._grid: Optional[list] = None
        # a finer grid along the source's axes (a coarse model's outputs on a 1 mm grid): linear
        # sampling without grid_sample (:mod:`brainfm.geometry.subdivide`)
        self.subdivision = (Subdivision.of(self.m, self.src_shape)
                            if self.kind == "resample" and not any(s > 0 for s in self.sigmas) else None)
        # ... whose voxels are those of the source subdivided over its box: whole images by F.interpolate
        self._whole_by_interpolate = self.subdivision is not None and self.subdivision.fine_permutation is not None

    @property
    def exact(self) -> bool:
        """True when mapping copies voxel values without interpolation (identity or exact)."""
        return self.kind != "resample"

    # -- public mapping -------------------------------------------------------------------------
    def __call__(self, arr: np.ndarray, order: str = "linear", fill: float = 0.0) -> np.ndarray:
        """Map a scalar ``(X, Y, Z)`` array (linear -> float32, nearest keeps the dtype)."""
        check_order(order)
        arr = np.asarray(arr)
        self._check(arr.shape[:3])
        if order == "linear" and arr.dtype != np.float32:
            arr = arr.astype(np.float32)
        if self.kind == "identity":
            return arr
        if self.kind == "exact":
            out = np.empty(self.dst_shape, arr.dtype)
            copy_exact(arr, self.perm, out, fill)  # type: ignore[arg-type]
            return out
        return self._resample(arr[None], order, fill, arr.dtype)[..., 0]

    def channels(self, arr: np.ndarray, order: str = "linear", fill: float = 0.0, *,
                 dtype=np.float32) -> np.ndarray:
        """Map ``(C, X, Y, Z)`` to a new ``(X', Y', Z', C)`` array of ``dtype`` (one pass per channel
        for the exact kinds, one ``grid_sample`` call for all channels otherwise)."""
        check_order(order)
        arr = np.asarray(arr)
        self._check(arr.shape[1:4])
        dtype = np.dtype(dtype)
        if self.kind == "resample":
            src = arr.astype(np.float32, copy=False) if order == "linear" else arr
            return self._resample(src, order, fill, dtype)
        out = np.empty(self.dst_shape + (arr.shape[0],), dtype)
        for c in range(arr.shape[0]):
            if self.kind == "identity":
                out[..., c] = arr[c]
            else:
                copy_exact(arr[c], self.perm, out[..., c], fill)  # type: ignore[arg-type]
        return out

    def points(self, arr: np.ndarray, voxels: np.ndarray, order: str = "linear", fill: float = 0.0, *,
               dtype=np.float32) -> np.ndarray:
        """``(C, X, Y, Z)`` sampled at the target voxels ``voxels`` (``(N, 3)`` integer indices of the
        target grid): a new ``(N, C)`` array of ``dtype``, the rows of :meth:`channels` at those voxels
        (the same pull-back, anti-alias and ``fill``), without mapping the whole grid.

        >>> import numpy as np
        >>> m = GridMapper(np.diag([2.0, 2.0, 2.0, 1.0]), (2, 2, 2), np.eye(4), (4, 4, 4))   # 2 mm -> 1 mm
        >>> arr = np.arange(16, dtype=np.float32).reshape(2, 2, 2, 2)
        >>> pts = np.array([[1, 2, 0], [3, 3, 3]])
        >>> bool(np.allclose(m.points(arr, pts), m.channels(arr)[pts[:, 0], pts[:, 1], pts[:, 2]]))
        True
        """
        check_order(order)
        arr = np.asarray(arr)
        self._check(arr.shape[1:4])
        vox = np.asarray(voxels)
        if vox.ndim != 2 or vox.shape[1] != 3:
            raise ValueError(f"voxels must be an (N, 3) array of target indices, not {vox.shape}")
        dtype = np.dtype(dtype)
        if self.kind != "resample":
            src = self.m[:3, :3] @ vox.T.astype(np.float64) + self.m[:3, 3:4]
            idx = np.round(src).astype(np.int64)
            inside = ((idx >= 0) & (idx < np.asarray(self.src_shape)[:, None])).all(axis=0)
            out = np.full((vox.shape[0], arr.shape[0]), fill, dtype)
            ii = idx[:, inside]
            out[inside] = np.moveaxis(arr[:, ii[0], ii[1], ii[2]], 0, 1)
            return out
        if order == "linear" and self.subdivision is not None and dtype.kind == "f":
            return self.subdivision.points(arr, vox, fill=fill).astype(dtype, copy=False)
        import torch
        import torch.nn.functional as F

        if order == "linear" and any(s > 0 for s in self.sigmas):
            arr = np.stack([blur(c, self.sigmas, mode="nearest") for c in arr])
        ga, half = sample_grid_affine(self.m, self.src_shape)
        out = np.empty((vox.shape[0], arr.shape[0]), dtype)
        src = torch.from_numpy(np.asarray(arr, dtype=np.float32))[None]  # any layout: no copy
        mode = "bilinear" if order == "linear" else "nearest"
        per_call = max(1, min(_CHUNK, CHANNEL_BLOCK_BYTES // max(1, 4 * arr.shape[0])))  # bounds the temporary
        with torch.no_grad():
            for p0 in range(0, vox.shape[0], per_call):
                ijk = torch.from_numpy(np.ascontiguousarray(vox[p0:p0 + per_call], np.float32))
                grid = ijk[:, 0:1] * ga[:, 0] + (ijk[:, 1:2] * ga[:, 1] + ijk[:, 2:3] * ga[:, 2] + ga[:, 3])
                outside = ~(grid.abs() <= half).all(dim=-1)
                vals = F.grid_sample(src, grid[None, :, None, None], mode=mode, padding_mode="border",
                                     align_corners=True)[0, :, :, 0, 0].T
                if dtype.kind in "iub":
                    vals = torch.round(vals)
                vals.masked_fill_(outside[:, None], float(fill))
                out[p0:p0 + vals.shape[0]] = vals.numpy().astype(dtype, copy=False)
        return out

    def volume(self, volume: Volume, *, order: str = "linear", fill: float = 0.0) -> Volume:
        """Map a :class:`Volume` on the source grid (scalar or ``(X, Y, Z, C)``) to a new Volume on the
        target grid, with the values, dtype and metadata of :func:`brainfm.geometry.resample_to_grid`:
        exact copies keep the dtype, linear resampling gives float32, nearest keeps the dtype (types
        that float32 sampling cannot hold exactly go through SciPy).

        >>> import numpy as np
        >>> lps = np.diag([-1.0, -1.0, 1.0, 1.0]); lps[:2, 3] = 3       # the same voxels stored LPS
        >>> m = GridMapper(np.eye(4), (4, 4, 2), lps, (4, 4, 2))
        >>> v = Volume(np.arange(32, dtype=np.int16).reshape(4, 4, 2), np.eye(4), {"kind": "label"})
        >>> out = m.volume(v, order="nearest")
        >>> m.kind, out.data.dtype, bool(np.array_equal(out.data, v.data[::-1, ::-1])), out.meta
        ('exact', dtype('int16'), True, {'kind': 'label'})
        """
        check_order(order)
        data = np.asarray(volume.data)
        self._check(data.shape[:3])
        if self.kind != "resample":
            out = np.empty(self.dst_shape + data.shape[3:], data.dtype)
            copy_exact(data, self.perm, out, fill)  # type: ignore[arg-type]
        elif torch_samples_exactly(data, order):
            chans = data[None] if data.ndim == 3 else np.moveaxis(data, 3, 0)
            if order == "linear":
                out = self._resample(chans.astype(np.float32, copy=False), order, fill, np.float32)
            else:
                out = self._resample(chans, order, fill, data.dtype)
            if data.ndim == 3:
                out = out[..., 0]
        else:
            return resample_to_grid(volume, self.dst_affine, self.dst_shape, order=order, fill=fill,
                                    antialias=self.antialias)
        return Volume(out, self.dst_affine.copy(), dict(volume.meta))

    # -- internals ------------------------------------------------------------------------------
    def _check(self, shape: Tuple[int, ...]) -> None:
        if tuple(int(s) for s in shape) != self.src_shape:
            raise ValueError(f"array of spatial shape {tuple(shape)} does not match the source grid {self.src_shape}")

    def _grid_slabs(self) -> Iterator[Tuple[int, "torch.Tensor", "torch.Tensor"]]:
        """``(i0, grid (s, Y', Z', 3), outside (s, Y', Z'))`` torch slabs, cached when small enough.
        Same arithmetic as :func:`brainfm.geometry.resample_to_grid`'s torch backend
        (:func:`~brainfm.geometry.grid.sample_grid_affine`)."""
        if self._grid is not None:
            yield from self._grid
            return
        import torch

        shape = self.dst_shape
        ga, half = sample_grid_affine(self.m, self.src_shape)
        base = grid_base(ga, shape)
        cache = int(np.prod(shape)) * 13 <= GRID_CACHE_BYTES
        rows = shape[0] if cache else max(1, _CHUNK // max(1, shape[1] * shape[2]))
        slabs = []
        for i0 in range(0, shape[0], rows):
            ii = torch.arange(i0, min(shape[0], i0 + rows), dtype=torch.float32)[:, None, None, None]
            grid = ii * ga[:, 0] + base
            outside = ~(grid.abs() <= half).all(dim=-1)
            if cache:
                slabs.append((i0, grid, outside))
            else:
                yield i0, grid, outside
        if cache:
            self._grid = slabs
            yield from slabs

    def _resample(self, arr: np.ndarray, order: str, fill: float, out_dtype) -> np.ndarray:
        """``(C, X, Y, Z)`` -> ``(X', Y', Z', C)`` by ``grid_sample`` on the cached grid."""
        import torch
        import torch.nn.functional as F

        out_dtype = np.dtype(out_dtype)
        if order == "linear":
            if any(s > 0 for s in self.sigmas):
                arr = np.stack([blur(c, self.sigmas, mode="nearest") for c in arr])
        elif arr.dtype.kind in "iu" and arr.size and np.abs(arr).max() >= 2 ** 24:
            # float32 sampling cannot hold such labels exactly: the general resampler (SciPy)
            vol = Volume(np.moveaxis(arr, 0, -1), self.src_affine)
            return np.asarray(resample_to_grid(vol, self.dst_affine, self.dst_shape, order=order, fill=fill,
                                               antialias=self.antialias).data).reshape(self.dst_shape + (-1,))
        if order == "linear" and self._whole_by_interpolate and out_dtype.kind == "f" and self.subdivision is not None:
            out = np.empty(self.dst_shape + (arr.shape[0],), out_dtype)
            self.subdivision.whole(arr, out, fill=fill)
            return out
        src_all = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        out = np.empty(self.dst_shape + (arr.shape[0],), out_dtype)
        res = torch.from_numpy(out) if out_dtype != np.float16 else None
        mode = "bilinear" if order == "linear" else "nearest"
        integer = out_dtype.kind in "iub"
        # channels per grid_sample call: bounds the float32 temporary (64-channel features)
        per_call = max(1, CHANNEL_BLOCK_BYTES // max(1, 4 * int(np.prod(self.dst_shape))))
        with torch.no_grad():
            for c0 in range(0, arr.shape[0], per_call):
                src = src_all[c0:c0 + per_call][None]
                for i0, grid, outside in self._grid_slabs():
                    vals = F.grid_sample(src, grid[None], mode=mode, padding_mode="border", align_corners=True)[0]
                    vals = vals.permute(1, 2, 3, 0)
                    if integer:
                        vals = torch.round(vals)
                    vals.masked_fill_(outside[..., None], float(fill))
                    dst = (slice(i0, i0 + grid.shape[0]), Ellipsis, slice(c0, c0 + src.shape[1]))
                    if res is not None:
                        res[dst] = vals.to(res.dtype)
                    else:
                        out[dst] = vals.numpy().astype(out_dtype)
        return out
