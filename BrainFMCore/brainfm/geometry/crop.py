"""Cropping and padding that keep every voxel at its world position (the affine is updated).

A bounding box ``bbox`` is ``((i0, i1), (j0, j1), (k0, k1))`` of half-open voxel ranges.

>>> import numpy as np
>>> from brainfm.volume import Volume
>>> d = np.zeros((10, 10, 10), np.float32); d[4, 5, 6] = 1
>>> v = Volume(d, np.diag([2.0, 1, 1, 1]))
>>> c, bbox = crop_to_foreground(v, margin_vox=1)
>>> bbox, c.shape
(((3, 6), (4, 7), (5, 8)), (3, 3, 3))
>>> c.world_of(np.argwhere(c.data == 1)[0]).tolist() == v.world_of([4, 5, 6]).tolist()
True
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np

from brainfm.errors import InputError
from brainfm.volume import Volume

BBox = Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int]]


def _translate(affine: np.ndarray, offset_vox: Sequence[float]) -> np.ndarray:
    out = np.array(affine, dtype=np.float64)
    out[:3, 3] = affine[:3, :3] @ np.asarray(offset_vox, dtype=np.float64) + affine[:3, 3]
    return out


def margin_voxels(margin_mm: float, spacing: float) -> int:
    """Whole voxels of ``spacing`` mm that cover a margin of ``margin_mm`` (at least 0).

    >>> margin_voxels(4.0, 2.0), margin_voxels(4.0, 3.0), margin_voxels(-1.0, 1.0)
    (2, 2, 0)
    """
    return int(np.ceil(max(0.0, float(margin_mm)) / float(spacing) - 1e-9))


def foreground_bbox(volume: Volume, *, threshold: Optional[float] = 0.0, margin_vox: int = 4) -> Optional[BBox]:
    """Bounding box of voxels ``> threshold`` (``threshold=None``: voxels ``!= 0``), grown by
    ``margin_vox`` and clipped to the volume; ``None`` when there is no foreground. For channel
    volumes a voxel is foreground when any channel is."""
    data = volume.data
    fg = (data != 0) if threshold is None else (data > threshold)
    if fg.ndim == 4:
        fg = fg.any(axis=3)
    if not fg.any():
        return None
    out = []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        idx = np.flatnonzero(fg.any(axis=other))
        lo = max(0, int(idx[0]) - int(margin_vox))
        hi = min(fg.shape[ax], int(idx[-1]) + 1 + int(margin_vox))
        out.append((lo, hi))
    return tuple(out)  # type: ignore[return-value]


def crop(volume: Volume, bbox: BBox) -> Volume:
    """Sub-volume ``data[i0:i1, j0:j1, k0:k1]`` with the affine moved so that every kept
    voxel stays at the same world position (a view of the input array, not a copy)."""
    bbox = tuple((int(a), int(b)) for a, b in bbox)  # type: ignore[assignment]
    if len(bbox) != 3 or any(not (0 <= a < b <= n) for (a, b), n in zip(bbox, volume.shape)):
        raise InputError(f"crop box {bbox} is empty or outside the volume of shape {volume.shape}")
    sl = tuple(slice(a, b) for a, b in bbox)
    return Volume(volume.data[sl], _translate(volume.affine, [a for a, _ in bbox]), dict(volume.meta))


def crop_to_foreground(volume: Volume, *, threshold: Optional[float] = 0.0,
                       margin_vox: int = 4) -> Tuple[Volume, BBox]:
    """Crop to the bounding box of voxels ``> threshold`` plus ``margin_vox`` voxels.
    Returns ``(cropped, bbox)``; with no foreground the whole volume is kept."""
    bbox = foreground_bbox(volume, threshold=threshold, margin_vox=margin_vox)
    if bbox is None:
        bbox = tuple((0, n) for n in volume.shape)  # type: ignore[assignment]
    return crop(volume, bbox), bbox  # type: ignore[arg-type]


def pad(volume: Volume, widths: Union[int, Sequence[Tuple[int, int]]], *, value: float = 0.0) -> Volume:
    """Pad with ``value``: ``widths`` is one int for every side or ``((before, after),) * 3``.
    The affine origin moves so that the original voxels keep their world positions.

    >>> import numpy as np
    >>> from brainfm.volume import Volume
    >>> p = pad(Volume(np.ones((8, 8, 8)), np.eye(4)), 2)
    >>> p.shape, p.affine[:3, 3].tolist()
    ((12, 12, 12), [-2.0, -2.0, -2.0])
    """
    if isinstance(widths, (int, np.integer)):
        w = [(int(widths), int(widths))] * 3
    else:
        w = [(int(a), int(b)) for a, b in widths]
    if len(w) != 3 or any(a < 0 or b < 0 for a, b in w):
        raise InputError(f"pad widths must be 3 non-negative (before, after) pairs, got {widths}")
    full = w + [(0, 0)] * (volume.data.ndim - 3)
    data = np.pad(volume.data, full, mode="constant", constant_values=value)
    return Volume(data, _translate(volume.affine, [-a for a, _ in w]), dict(volume.meta))
