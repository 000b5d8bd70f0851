"""The volume type exchanged by every layer: a 3D array plus its voxel-to-world affine.

Conventions (the same as nibabel):
- ``data`` is indexed ``data[i, j, k]`` (voxel axes 0, 1, 2);
- ``affine`` maps homogeneous voxel indices ``(i, j, k, 1)`` to **RAS** world millimetres,
  where the voxel *centre* of index (0, 0, 0) is at ``affine[:3, 3]``;
- ``meta`` carries free-form provenance (source path, original file format, units, ...).

A Volume is immutable in spirit: operations return new Volumes and never modify the input array.

>>> import numpy as np
>>> from brainfm.volume import Volume
>>> aff = np.diag([2.0, 1.0, 1.0, 1.0]); aff[:3, 3] = [-10, 0, 5]
>>> v = Volume(np.ones((3, 4, 5), np.float32), aff, meta={"units": "a.u."})
>>> v.spacing
(2.0, 1.0, 1.0)
>>> v.world_of([1, 0, 0]).tolist()
[-8.0, 0.0, 5.0]
>>> v.with_data(np.zeros((3, 4, 5), np.uint8)).data.dtype
dtype('uint8')
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Tuple

import numpy as np

from brainfm.errors import InputError


def voxel_sizes(affine: np.ndarray) -> Tuple[float, float, float]:
    """Voxel edges in mm along voxel axes 0, 1, 2 of a grid: the column norms of its affine.

    >>> voxel_sizes(np.diag([2.0, -1.0, 3.0, 1.0]))
    (2.0, 1.0, 3.0)
    """
    n = np.linalg.norm(np.asarray(affine, np.float64)[:3, :3], axis=0)
    return float(n[0]), float(n[1]), float(n[2])


def check_affine(affine: Any) -> np.ndarray:
    """``affine`` as the 4x4 float64 array a :class:`Volume` keeps; :class:`InputError` when it is not
    4x4, holds NaN/Inf or is singular (a zero voxel size or degenerate axes).

    >>> check_affine(np.diag([2, 1, 1, 1])).dtype
    dtype('float64')
    >>> check_affine(np.diag([2.0, 0.0, 1.0, 1.0]))
    Traceback (most recent call last):
      ...
    brainfm.errors.InputError: affine is singular (zero voxel size or degenerate axes)
    """
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4):
        raise InputError(f"affine must be 4x4, got shape {aff.shape}")
    if not np.all(np.isfinite(aff)):
        raise InputError("affine contains NaN or Inf")
    if abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        raise InputError("affine is singular (zero voxel size or degenerate axes)")
    return aff


@dataclass(frozen=True)
class Volume:
    """A 3D image (or a 3D field with a trailing channel axis) with its RAS affine.

    ``data`` has shape ``(X, Y, Z)`` for scalar volumes or ``(X, Y, Z, C)`` for vector/
    multi-channel fields (e.g. a displacement field, C = 3). Scalar volumes are the norm.
    """

    data: np.ndarray
    affine: np.ndarray
    meta: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        data = np.asarray(self.data)
        aff = check_affine(self.affine)
        if data.ndim not in (3, 4):
            raise InputError(f"a Volume holds 3D data (optionally with a channel axis), got {data.ndim}D")
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "affine", aff)
        object.__setattr__(self, "meta", dict(self.meta))

    # -- geometry -----------------------------------------------------------------------------
    @property
    def shape(self) -> Tuple[int, int, int]:
        """Spatial shape (X, Y, Z)."""
        return tuple(int(s) for s in self.data.shape[:3])  # type: ignore[return-value]

    @property
    def spacing(self) -> Tuple[float, float, float]:
        """Voxel size in mm along voxel axes 0, 1, 2 (column norms of the affine, :func:`voxel_sizes`)."""
        return voxel_sizes(self.affine)

    @property
    def n_channels(self) -> int:
        return 1 if self.data.ndim == 3 else int(self.data.shape[3])

    @property
    def is_left_handed(self) -> bool:
        """True when the voxel axes form a left-handed frame in RAS (negative determinant)."""
        return bool(np.linalg.det(self.affine[:3, :3]) < 0)

    def world_of(self, ijk) -> np.ndarray:
        """World RAS mm of voxel index/indices ``ijk`` (shape (3,) or (N, 3))."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def voxel_of(self, xyz) -> np.ndarray:
        """Continuous voxel index of world RAS point(s) ``xyz`` (shape (3,) or (N, 3))."""
        xyz = np.asarray(xyz, dtype=np.float64)
        inv = np.linalg.inv(self.affine)
        return xyz @ inv[:3, :3].T + inv[:3, 3]

    def same_grid(self, other: "Volume", *, atol: float = 1e-4) -> bool:
        """True when ``other`` has the same spatial shape and affine (within ``atol`` mm)."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=atol))

    # -- derivation ---------------------------------------------------------------------------
    def with_data(self, data: np.ndarray, **meta: Any) -> "Volume":
        """A new Volume on the same grid with other voxel values (and updated meta)."""
        data = np.asarray(data)
        if tuple(data.shape[:3]) != self.shape:
            raise InputError(f"data shape {data.shape[:3]} does not match the grid {self.shape}")
        return Volume(data, self.affine.copy(), {**self.meta, **meta})

    def __repr__(self) -> str:  # short: arrays can be huge
        return (
            f"Volume(shape={self.data.shape}, dtype={self.data.dtype}, "
            f"spacing={tuple(round(s, 4) for s in self.spacing)}, "
            f"origin={tuple(round(float(o), 3) for o in self.affine[:3, 3])})"
        )
