"""World-coordinate resampling of a volume onto any target grid (pull-back).

For every target voxel the source position is ``inv(source_affine) @ target_affine @ ijk``, so
oblique, left-handed and LPS-stored grids all work. Targets that are a signed permutation with
integer shift of the source grid are copied exactly (no interpolation). Points farther than half
a voxel outside the source get ``fill``.

>>> import numpy as np
>>> from brainfm.volume import Volume
>>> src = Volume(np.arange(1000, dtype=np.float32).reshape(10, 10, 10), np.eye(4))
>>> flipped = np.diag([-1.0, 1, 1, 1]); flipped[0, 3] = 9      # same voxels, axis 0 reversed
>>> out = resample_to_grid(src, flipped, (10, 10, 10))
>>> bool(np.array_equal(out.data, src.data[::-1]))
True
>>> shifted = np.eye(4); shifted[:3, 3] = 0.5                  # half-voxel shift: interpolated
>>> round(float(resample_to_grid(src, shifted, (2, 2, 2)).data[0, 0, 0]), 3), float(src.data[:2, :2, :2].mean())
(55.5, 55.5)
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence, Tuple

import numpy as np

from brainfm.errors import InputError
from brainfm.geometry.exact import copy_exact, signed_permutation
from brainfm.geometry.resample import antialias_sigmas, blur, check_order
from brainfm.volume import Volume

if TYPE_CHECKING:  # pragma: no cover
    import torch

_CHUNK = 1 << 22  # target voxels per slab (bounds coordinate memory to ~100 MB)
DEFAULT_BACKEND = "torch"
_TORCH_TYPES = tuple(np.dtype(t) for t in (np.float32, np.float64, np.int8, np.uint8, np.int16, np.int32, np.int64,
                                              np.bool_))  # measured faster on 2 cores: see Testing/benchmarks/bench_geometry.py


def _sample_scipy(src: np.ndarray, pts: np.ndarray, order: str) -> np.ndarray:
    from scipy.ndimage import map_coordinates

    o = 1 if order == "linear" else 0
    coords = pts.T
    if src.ndim == 3:
        return map_coordinates(src, coords, order=o, mode="nearest", prefilter=False)
    return np.stack([map_coordinates(src[..., c], coords, order=o, mode="nearest", prefilter=False)
                     for c in range(src.shape[3])], axis=-1)


def _pull_scipy(data: np.ndarray, m: np.ndarray, shape: Tuple[int, int, int], order: str, fill: float,
                out: np.ndarray) -> None:
    """SciPy backend (``map_coordinates``), slab by slab."""
    nch = 1 if data.ndim == 3 else data.shape[3]
    src = np.asarray(data, dtype=np.float32 if order == "linear" else data.dtype)
    sizes = np.asarray(data.shape[:3], dtype=np.float64)
    flat = out.reshape(shape[0], shape[1] * shape[2], nch)
    jk = np.stack(np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij"), -1).reshape(-1, 2)
    base = jk.astype(np.float64) @ m[:3, 1:3].T + m[:3, 3]
    rows = max(1, _CHUNK // max(1, base.shape[0]))
    for i0 in range(0, shape[0], rows):
        ii = np.arange(i0, min(shape[0], i0 + rows), dtype=np.float64)
        pts = (ii[:, None, None] * m[:3, 0][None, None, :] + base[None]).reshape(-1, 3)
        inside = ((pts >= -0.5 - 1e-4) & (pts <= sizes - 0.5 + 1e-4)).all(axis=1)
        np.clip(pts, 0.0, sizes - 1.0, out=pts)
        vals = _sample_scipy(src, pts, order).reshape(-1, nch).astype(out.dtype, copy=False)
        vals[~inside] = fill
        flat[i0:i0 + len(ii)] = vals.reshape(len(ii), base.shape[0], nch)


def sample_grid_affine(m: np.ndarray, src_shape: Sequence[int]) -> Tuple["torch.Tensor", "torch.Tensor"]:
    """``(ga, half)`` float32 torch tensors for ``grid_sample`` pull-back with the 4x4 voxel map ``m``
    (target voxel index -> source voxel index) from a source of spatial shape ``src_shape``.

    ``ga`` (3, 4) maps a target index ``(i, j, k, 1)`` to normalised ``grid_sample`` coordinates
    ``g = 2 p / (n - 1) - 1`` of the source position ``p = m @ ijk``, rows reversed because
    ``grid_sample`` orders them (z, y, x); ``|g| <= half`` per axis is inside the source (positions in
    ``[-0.5, n - 0.5]``). Sampling uses ``padding_mode="border"``, which clamps into the volume.

    >>> import numpy as np
    >>> ga, half = sample_grid_affine(np.eye(4), (3, 5, 9))
    >>> ga[:, 3].tolist(), [round(float(h), 4) for h in half]
    ([-1.0, -1.0, -1.0], [1.125, 1.25, 1.5001])
    """
    import torch

    n = np.asarray(src_shape, dtype=np.float64)
    big = n > 1
    scale = np.where(big, 2.0 / np.maximum(n - 1, 1), 2.0)
    g_aff = np.diag(scale) @ m[:3, :]
    g_aff[:, 3] -= np.where(big, 1.0, 0.0)
    limit = np.where(big, 1.0 + (1.0 + 2e-4) / np.maximum(n - 1, 1), 1.0 + 2e-4)  # p in [-0.5, n - 0.5]
    g_aff, limit = g_aff[::-1], limit[::-1]
    half = torch.from_numpy(np.ascontiguousarray(limit)).to(torch.float32)
    ga = torch.from_numpy(np.ascontiguousarray(g_aff)).to(torch.float32)
    return ga, half


def grid_base(ga: "torch.Tensor", shape: Sequence[int]) -> "torch.Tensor":
    """``(Y, Z, 3)`` grid coordinates of the target plane ``i = 0`` (add ``i * ga[:, 0]`` for plane ``i``)."""
    import torch

    j = torch.arange(int(shape[1]), dtype=torch.float32)[:, None, None]
    k = torch.arange(int(shape[2]), dtype=torch.float32)[None, :, None]
    return j * ga[:, 1] + k * ga[:, 2] + ga[:, 3]


def _pull_torch(data: np.ndarray, m: np.ndarray, shape: Tuple[int, int, int], order: str, fill: float,
                out: np.ndarray) -> None:
    """Torch backend: coordinates, masks and ``grid_sample`` all in (multi-threaded) torch."""
    import torch
    import torch.nn.functional as F

    arr = np.asarray(data, dtype=np.float32)
    arr = arr[None] if arr.ndim == 3 else np.moveaxis(arr, 3, 0)
    src = torch.from_numpy(np.ascontiguousarray(arr))[None]  # (1, C, X, Y, Z)
    nch = src.shape[1]
    ga, half = sample_grid_affine(m, data.shape[:3])
    base = grid_base(ga, shape)  # (Y, Z, 3)
    rows = max(1, _CHUNK // max(1, shape[1] * shape[2]))
    mode = "bilinear" if order == "linear" else "nearest"
    integer = out.dtype.kind in "iub"
    res = torch.from_numpy(out.reshape(shape[0], shape[1], shape[2], nch))
    fill_t = torch.tensor(float(fill), dtype=torch.float32)
    with torch.no_grad():
        for i0 in range(0, shape[0], rows):
            ii = torch.arange(i0, min(shape[0], i0 + rows), dtype=torch.float32)[:, None, None, None]
            grid = ii * ga[:, 0] + base  # (s, Y, Z, 3)
            inside = (grid.abs() <= half).all(dim=-1)
            vals = F.grid_sample(src, grid[None], mode=mode, padding_mode="border", align_corners=True)[0]
            vals = vals.permute(1, 2, 3, 0)  # (s, Y, Z, C)
            if integer:
                vals = torch.round(vals)
            vals = torch.where(inside[..., None], vals, fill_t)
            res[i0:i0 + grid.shape[0]] = vals.to(res.dtype)


def torch_samples_exactly(data: np.ndarray, order: str) -> bool:
    """True when the torch backend (float32 ``grid_sample``) gives the exact result for ``data``:
    linear order (float32 result), or nearest order on a type in the measured set whose integer
    values stay below 2**24 (float32 holds them exactly).

    >>> torch_samples_exactly(np.array([[[2 ** 24]]], np.int32), "nearest")
    False
    >>> torch_samples_exactly(np.zeros((2, 2, 2), np.uint8), "nearest")
    True
    """
    if order == "linear":
        return True
    dtype = np.asarray(data).dtype
    if dtype not in _TORCH_TYPES:
        return False
    return not (dtype.kind in "iu" and data.size and np.abs(data).max() >= 2 ** 24)


def resample_to_grid(volume: Volume, affine: np.ndarray, shape: Sequence[int], *, order: str = "linear",
                     fill: float = 0.0, antialias: bool = True, backend: Optional[str] = None) -> Volume:
    """Resample ``volume`` onto the grid ``(affine, shape)`` by world coordinates.

    ``order="linear"`` (trilinear, float32 result) or ``"nearest"`` (label maps; dtype kept).
    With ``antialias`` and linear order, source axes that the target samples more coarsely are
    first blurred (sigma = 0.51 x the coarsening factor, in source voxels). ``backend``:
    ``"torch"`` (``grid_sample``) or ``"scipy"`` (``map_coordinates``); ``None`` picks the faster.
    Channel volumes (X, Y, Z, C) are resampled channel by channel.
    """
    check_order(order)
    tgt = np.asarray(affine, dtype=np.float64)
    shape = tuple(int(s) for s in shape)
    if tgt.shape != (4, 4) or len(shape) != 3 or min(shape) < 1:
        raise InputError(f"target grid must be a 4x4 affine and 3 positive sizes, got {tgt.shape} and {shape}")
    m = np.linalg.inv(volume.affine) @ tgt
    data = volume.data
    perm = signed_permutation(m)
    if perm is not None:
        out = np.empty(shape + data.shape[3:], dtype=data.dtype)
        copy_exact(data, perm, out, fill)
        return Volume(out, tgt, dict(volume.meta))
    if order == "linear":
        factors = np.linalg.norm(m[:3, :3], axis=1)  # source voxels per target step, per source axis
        sig = antialias_sigmas(factors) if antialias else (0.0, 0.0, 0.0)
        data = blur(data, sig, mode="nearest")
        out_dtype = np.dtype(np.float32)
    else:
        out_dtype = data.dtype
    backend = backend or DEFAULT_BACKEND
    if backend not in ("torch", "scipy"):
        raise InputError(f"backend must be 'torch' or 'scipy', got {backend!r}")
    if backend == "torch" and not torch_samples_exactly(data, order):
        backend = "scipy"  # float32 sampling cannot hold such values exactly
    nch = 1 if data.ndim == 3 else data.shape[3]
    out = np.empty(shape + ((nch,) if data.ndim == 4 else ()), dtype=out_dtype)
    if backend == "torch":
        _pull_torch(data, m, shape, order, fill, out)
    else:
        _pull_scipy(data, m, shape, order, fill, out)
    return Volume(out, tgt, dict(volume.meta))
