"""Exact grid-to-grid copies: when the target voxels are source voxels (an axis permutation and
flip with an integer shift, e.g. a cropped RAS grid or an LPS-stored one), values are copied with
slices instead of interpolated.

>>> import numpy as np
>>> m = np.diag([-1.0, 1, 1, 1]); m[0, 3] = 3          # target i -> source 3 - i (axis 0 reversed)
>>> perm = signed_permutation(m)
>>> perm
([0, 1, 2], [-1, 1, 1], [3, 0, 0])
>>> out = np.empty((5, 1, 1), np.float32)
>>> copy_exact(np.arange(4.0).reshape(4, 1, 1), perm, out, -1.0)
>>> out.ravel().tolist()
[3.0, 2.0, 1.0, 0.0, -1.0]
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

#: ``(source axis, sign, integer offset)`` per target axis: target index k maps to source ``sign * k + offset``
Permutation = Tuple[List[int], List[int], List[int]]


def signed_permutation(m: np.ndarray) -> Optional[Permutation]:
    """``(source axis, sign, integer offset)`` per target axis when the 4x4 voxel map ``m`` (target
    voxel index -> source voxel index) is a signed axis permutation with an integer shift; ``None``
    otherwise (interpolation needed).

    >>> signed_permutation(np.eye(4)), signed_permutation(np.diag([0.5, 1, 1, 1]))
    (([0, 1, 2], [1, 1, 1], [0, 0, 0]), None)
    """
    r, t = m[:3, :3], m[:3, 3]
    rr = np.round(r)
    if not np.allclose(r, rr, atol=1e-5) or not np.allclose(t, np.round(t), atol=1e-4):
        return None
    if not (np.abs(rr).sum(axis=0) == 1).all() or not (np.abs(rr).sum(axis=1) == 1).all():
        return None
    axes = [int(np.flatnonzero(rr[:, b])[0]) for b in range(3)]
    signs = [int(rr[a, b]) for b, a in enumerate(axes)]
    offs = [int(np.round(t[a])) for a in axes]
    return axes, signs, offs


def copy_exact(data: np.ndarray, perm: Permutation, out: np.ndarray, fill: float) -> None:
    """Fill ``out`` (any view of the target shape, trailing channel axes as in ``data``) for the
    signed-permutation mapping ``perm`` (see :func:`signed_permutation`): covered voxels are copied
    (with a cast to ``out``'s dtype) and only the uncovered border is set to ``fill`` (each voxel is
    written once; no temporary).

    >>> out = np.empty((4,), np.float32)[:, None, None]
    >>> copy_exact(np.arange(2.0).reshape(2, 1, 1), ([0, 1, 2], [1, 1, 1], [-1, 0, 0]), out, 9.0)
    >>> out.ravel().tolist()
    [9.0, 0.0, 1.0, 9.0]
    """
    axes, signs, offs = perm
    src = np.transpose(data, list(axes) + list(range(3, data.ndim)))
    shape = out.shape[:3]
    dst_sl, src_sl = [], []
    for b in range(3):
        s, o, n_src = signs[b], offs[b], src.shape[b]
        # target k maps to source s * k + o; keep 0 <= s * k + o < n_src and 0 <= k < shape[b]
        k0, k1 = (max(0, -o), min(shape[b], n_src - o)) if s > 0 else (max(0, o - n_src + 1), min(shape[b], o + 1))
        if k1 <= k0:
            out[...] = fill
            return
        dst_sl.append(slice(k0, k1))
        first, last = s * k0 + o, s * (k1 - 1) + o
        src_sl.append(slice(first, last + 1) if s > 0 else slice(first, last - 1 if last > 0 else None, -1))
    out[tuple(dst_sl)] = src[tuple(src_sl)]
    region = [slice(None)] * 3
    for b in range(3):  # the complement of the copied box, slab by slab, each voxel once
        before, after = list(region), list(region)
        before[b], after[b] = slice(0, dst_sl[b].start), slice(dst_sl[b].stop, None)
        out[tuple(before)] = fill
        out[tuple(after)] = fill
        region[b] = dst_sl[b]
