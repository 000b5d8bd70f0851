"""Registration post-processing (``reg``).

The head regresses, for every subject voxel, the atlas-space RAS coordinate of that voxel in units
of 100 mm (reference). Outputs:

- ``reg_atlas_coords`` (X, Y, Z, 3): raw x 100 -> atlas RAS mm;
- ``reg_displacement`` (X, Y, Z, 3): atlas point minus the subject voxel's world point (RAS mm,
  ``meta["intent"] = "displacement"``);
- ``atlas_warped``: the atlas template sampled trilinearly at the predicted atlas coordinates
  (through the inverse atlas affine; 0 outside the atlas), on the subject grid;
- ``subject_in_atlas``: the subject image on the atlas grid through the inverse map. The inverse is
  approximated by **trilinear splatting**: every foreground voxel of the 1 mm network-frame subject
  image is pushed to its predicted atlas position, its value is distributed over the 8 neighbouring
  atlas voxels with trilinear weights, and the accumulated values are divided by the accumulated
  weights (atlas voxels that receive a total weight < 1e-3 are 0). For a smooth, invertible map this
  equals resampling the subject through the inverse map up to interpolation error.

Outputs are masked by the input foreground (outside the head the regression is not meaningful).

>>> import numpy as np
>>> coords_from_raw(np.full((3, 1, 1, 1), 0.25, np.float32))[..., 0].ravel().tolist()
[25.0]
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np
from scipy import ndimage

from brainfm.tasks.context import TaskContext
from brainfm.volume import Volume

REG_SCALE = 100.0
_MIN_WEIGHT = 1e-3


def coords_from_raw(raw: np.ndarray) -> np.ndarray:
    """Raw ``(3, X, Y, Z)`` head output -> atlas RAS mm ``(X, Y, Z, 3)`` (x 100)."""
    return np.moveaxis(np.asarray(raw, np.float32) * REG_SCALE, 0, -1).astype(np.float32)


def _to_voxels(points_mm: np.ndarray, affine: np.ndarray) -> np.ndarray:
    inv = np.linalg.inv(np.asarray(affine, np.float64))
    pts = np.asarray(points_mm)
    out = np.empty(pts.shape, np.float64)
    for r in range(3):  # column-wise: much faster than an (N, 3) @ (3, 3) matmul
        out[..., r] = inv[r, 0] * pts[..., 0] + inv[r, 1] * pts[..., 1] + inv[r, 2] * pts[..., 2] + inv[r, 3]
    return out


def sample_at(volume: Volume, points_mm: np.ndarray, *, fill: float = 0.0) -> np.ndarray:
    """Trilinear sample of a scalar ``volume`` at world points ``(..., 3)`` (``fill`` outside)."""
    pts = np.asarray(points_mm, np.float64)
    ijk = _to_voxels(pts.reshape(-1, 3), volume.affine)
    vals = ndimage.map_coordinates(np.asarray(volume.data, np.float32), ijk.T, order=1, mode="constant", cval=fill)
    return vals.reshape(pts.shape[:-1]).astype(np.float32)


def splat_inverse(
    values: np.ndarray, points_mm: np.ndarray, target_affine: np.ndarray, target_shape: Sequence[int]
) -> Tuple[np.ndarray, np.ndarray]:
    """Scatter ``values`` (N,) located at world ``points_mm`` (N, 3) onto a target grid.

    Returns ``(image, weight)``: the weight-normalised image (0 where weight < 1e-3) and the summed
    trilinear weights.

    >>> img, w = splat_inverse(np.array([2.0]), np.array([[1.5, 0.0, 0.0]]), np.eye(4), (3, 1, 1))
    >>> img.ravel().tolist(), w.ravel().tolist()
    ([0.0, 2.0, 2.0], [0.0, 0.5, 0.5])
    """
    shape = tuple(int(s) for s in target_shape)
    vox = _to_voxels(points_mm, target_affine)
    vals = np.asarray(values, np.float64)
    base = np.floor(vox).astype(np.int64)
    frac = vox - base
    inside = np.all((base >= -1) & (base < np.asarray(shape)), axis=1)
    base, frac, vals = base[inside], frac[inside], vals[inside]
    num = np.zeros(shape, np.float64)
    den = np.zeros(shape, np.float64)
    if vals.size == 0:
        return num.astype(np.float32), den.astype(np.float32)
    lo = np.maximum(base.min(axis=0), 0)
    hi = np.minimum(base.max(axis=0) + 2, shape)
    sub = tuple(int(h - l) for l, h in zip(lo, hi))
    n_sub = int(np.prod(sub))
    num_s = np.zeros(n_sub, np.float64)
    den_s = np.zeros(n_sub, np.float64)
    for corner in np.ndindex(2, 2, 2):
        c = np.asarray(corner)
        idx = base + c
        w = np.prod(np.where(c == 1, frac, 1.0 - frac), axis=1)
        ok = np.all((idx >= lo) & (idx < hi), axis=1) & (w > 0)
        flat = np.ravel_multi_index(tuple((idx[ok] - lo).T), sub)
        num_s += np.bincount(flat, weights=w[ok] * vals[ok], minlength=n_sub)
        den_s += np.bincount(flat, weights=w[ok], minlength=n_sub)
    region = tuple(slice(int(l), int(h)) for l, h in zip(lo, hi))
    num[region] = num_s.reshape(sub)
    den[region] = den_s.reshape(sub)
    img = np.where(den >= _MIN_WEIGHT, num / np.maximum(den, _MIN_WEIGHT), 0.0)
    return img.astype(np.float32), den.astype(np.float32)


def run_reg(ctx: TaskContext) -> Dict[str, Volume]:
    """Registration outputs; ``atlas_warped``/``subject_in_atlas`` only when ``ctx.atlas`` is set."""
    raw = ctx.task_head("reg")
    coords = ctx.channels_to_output(np.asarray(raw, np.float32) * REG_SCALE, "linear", 0.0)
    disp = (coords.astype(np.float64) - ctx.world_out()).astype(np.float32)
    coords, disp = ctx.mask(coords, 0.0), ctx.mask(disp, 0.0)
    out = {
        "reg_atlas_coords": ctx.volume(coords, task="reg", kind="coordinates", units="atlas RAS mm"),
        "reg_displacement": ctx.volume(disp, task="reg", kind="vector", units="RAS mm", intent="displacement"),
    }
    atlas = ctx.atlas
    if atlas is None:
        ctx.warnings.append("no atlas template available: atlas_warped and subject_in_atlas were not computed")
        return out
    if atlas.data.ndim != 3:
        atlas = atlas.with_data(np.asarray(atlas.data)[..., 0])
    warped = ctx.mask(sample_at(atlas, coords), 0.0)
    out["atlas_warped"] = ctx.volume(warped, task="reg", kind="image", units="atlas intensity units")
    fg = ctx.net_image > 0
    net_coords = coords_from_raw(raw)[fg]
    values = ctx.denormalise(ctx.net_image[fg])
    inv_img, _w = splat_inverse(values, net_coords, atlas.affine, atlas.shape)
    out["subject_in_atlas"] = Volume(
        inv_img, atlas.affine.copy(),
        {**ctx.meta, "task": "reg", "kind": "image", "units": "input intensity units",
         "method": "trilinear splatting of the 1 mm subject image through the predicted map"},
    )
    return out
