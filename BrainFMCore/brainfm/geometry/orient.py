"""Exact reorientation to RAS+ voxel-axis order (axis permutation and flips only).

>>> import numpy as np
>>> from brainfm.volume import Volume
>>> lps = np.diag([-1.0, -1.0, 2.0, 1.0]); lps[:3, 3] = [10, 20, 0]
>>> v = Volume(np.arange(24, dtype=np.float32).reshape(2, 3, 4), lps)
>>> r = reorient_to_ras(v)
>>> np.diag(r.affine).tolist(), r.affine[:3, 3].tolist()
([1.0, 1.0, 2.0, 1.0], [9.0, 18.0, 0.0])
>>> bool(np.allclose(r.world_of([0, 0, 0]), v.world_of([1, 2, 0])))
True
"""
from __future__ import annotations

import numpy as np

from brainfm.volume import Volume

_RAS = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)


def ras_orientation(affine: np.ndarray) -> np.ndarray:
    """nibabel orientation array (3x2: target axis, flip) that brings voxel axes closest to RAS.
    For oblique affines the closest world axis is chosen per voxel axis (nibabel ``io_orientation``)."""
    from nibabel.orientations import io_orientation

    return io_orientation(np.asarray(affine, dtype=np.float64))


def axcodes(affine: np.ndarray) -> str:
    """Orientation code such as ``'RAS'``, ``'LPS'`` or ``'LIA'`` of an affine.

    >>> axcodes(np.diag([-1.0, 1, -1, 1]))
    'LAI'
    """
    from nibabel.orientations import aff2axcodes

    return "".join(aff2axcodes(np.asarray(affine, dtype=np.float64)))


def is_axis_aligned(affine: np.ndarray, *, tol: float = 1e-6) -> bool:
    """True when every voxel axis is parallel to one world axis (no obliquity or shear)."""
    m = np.asarray(affine, dtype=np.float64)[:3, :3]
    scale = np.abs(m).max()
    nz = np.abs(m) > tol * scale
    return bool((nz.sum(axis=0) == 1).all() and (nz.sum(axis=1) == 1).all())


def reorient_to_ras(volume: Volume) -> Volume:
    """Permute and flip voxel axes so that axis 0/1/2 run (closest to) left->Right,
    posterior->Anterior, inferior->Superior. No interpolation: voxel values and their world
    positions are unchanged; a (X, Y, Z, C) channel axis stays last. A volume already in RAS
    order is returned as is (same array)."""
    ornt = ras_orientation(volume.affine)
    if np.array_equal(ornt, _RAS):
        return volume
    from nibabel.orientations import apply_orientation, inv_ornt_aff

    data = np.ascontiguousarray(apply_orientation(volume.data, ornt))
    affine = volume.affine @ inv_ornt_aff(ornt, volume.shape)
    return Volume(data, affine, dict(volume.meta))
