"""Registration post-processing (``reg``).

The atlas coordinates come from the model's registration head (``reg_method`` ``head``) or from a map
fitted to the model's segmentations of the scan and of the atlas template (``fit``,
:mod:`brainfm.tasks.regfit`); ``auto`` (the default of :meth:`brainfm.Predictor.predict`) fits when
the model's measured quality says its head is not reliable and the model segments
(:func:`resolve_method`). Either way the coordinates are on the network grid, in the head's units,
before the steps below.

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

from brainfm.tasks import methods
from brainfm.tasks.context import TaskContext
from brainfm.volume import Volume

REG_SCALE = 100.0
#: what ``reg_method`` accepts, and what each resolved method is called (:mod:`brainfm.tasks.methods`)
METHODS = methods.METHODS
METHOD_NAMES = methods.METHOD_NAMES
_MIN_WEIGHT = 1e-3


def check_method(method: str) -> str:
    """``method`` lower-cased, one of :data:`METHODS`; :class:`~brainfm.errors.InputError` otherwise."""
    return methods.check_method(method, option="reg_method")


def resolve_method(method: str, *, head_reliable: bool, has_seg: bool) -> str:
    """``"head"`` or ``"fit"`` for a requested ``reg_method`` (:func:`brainfm.tasks.methods.resolve`).

    >>> resolve_method("auto", head_reliable=False, has_seg=True), resolve_method("auto", head_reliable=True, has_seg=True)
    ('fit', 'head')
    """
    return methods.resolve(method, option="reg_method", head_reliable=head_reliable, has_seg=has_seg)


def fitted_raw(ctx: TaskContext) -> np.ndarray:
    """Atlas coordinates fitted to the segmentations (:func:`brainfm.tasks.regfit.fit_atlas_map`) on
    the network grid, in the head's units ``(3, X, Y, Z)``; ValueError when the fit is not possible."""
    from brainfm.tasks.regfit import fit_atlas_map
    from brainfm.tasks.segmentation import decide

    if ctx.atlas_labels is None:
        raise ValueError("the atlas template's segmentation is not available")
    scan = Volume(decide(ctx).labels_out(np.int16), ctx.out_affine)
    amap = fit_atlas_map(scan, ctx.atlas_labels)
    coords = amap(world_points(ctx.net_affine, np.asarray(ctx.net_image).shape))
    return np.ascontiguousarray(np.moveaxis(coords, -1, 0) / np.float32(REG_SCALE))


def world_points(affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """RAS mm of every voxel of a grid, ``(X, Y, Z, 3)`` float32: where a map to the atlas is evaluated.

    >>> world_points(np.diag([2.0, 1.0, 1.0, 1.0]), (2, 1, 1))[:, 0, 0].tolist()
    [[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]]
    """
    aff = np.asarray(affine, np.float32)
    ijk = np.meshgrid(*[np.arange(int(n), dtype=np.float32) for n in shape[:3]], indexing="ij")
    return np.stack([aff[r, 0] * ijk[0] + aff[r, 1] * ijk[1] + aff[r, 2] * ijk[2] + aff[r, 3] for r in range(3)], -1)


def _reg_raw(ctx: TaskContext) -> np.ndarray:
    """The atlas coordinates on the network grid by ``ctx.reg_method``; a fit that is not possible
    falls back to the head, with a warning (``ctx.reg_method`` then says ``"head"``)."""
    if ctx.reg_method == "fit":
        try:
            return fitted_raw(ctx)
        except ValueError as exc:
            ctx.warnings.append(f"registration: the fit to the segmentation failed ({exc}); the model's "
                                "registration head was used instead")
            ctx.reg_method = "head"
    return ctx.task_head("reg")


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
    """Trilinear sample of a scalar ``volume`` at world points ``(..., 3)`` (``fill`` outside).

    Points outside the voxel-centre box ``[0, n - 1]`` of any axis get ``fill`` (SciPy
    ``map_coordinates(order=1, mode="constant")`` semantics); computed with torch ``grid_sample``
    in slabs, float32.
    """
    import torch
    import torch.nn.functional as F

    pts = np.asarray(points_mm, np.float32)
    lead = pts.shape[:-1]
    flat = pts.reshape(-1, 3)
    n = np.asarray(volume.shape, np.float64)
    # world -> grid_sample coordinates (x, y, z reversed: grid_sample wants (W, H, D) order)
    big = n > 1
    scale = np.where(big, 2.0 / np.maximum(n - 1, 1), 2.0)  # size-1 axis: only voxel 0 is inside
    g = np.diag(scale) @ np.linalg.inv(np.asarray(volume.affine, np.float64))[:3, :]
    g[:, 3] -= np.where(big, 1.0, 0.0)
    g = torch.from_numpy(np.ascontiguousarray(g[::-1])).to(torch.float32)
    tol = 1e-3 * scale  # 1e-3 voxel beyond the end voxels still counts as inside
    lim = torch.from_numpy(np.ascontiguousarray(np.where(big, 1.0, 0.0)[::-1] + tol[::-1]))
    lim = lim.to(torch.float32)
    src = torch.from_numpy(np.ascontiguousarray(volume.data, dtype=np.float32))[None, None]
    out = np.empty(flat.shape[0], np.float32)
    step = 1 << 22
    with torch.no_grad():
        for a in range(0, flat.shape[0], step):
            p = torch.from_numpy(flat[a:a + step])
            grid = p @ g[:, :3].T + g[:, 3]
            outside = ~(grid.abs() <= lim).all(dim=-1)
            vals = F.grid_sample(src, grid[None, :, None, None, :], mode="bilinear", padding_mode="border",
                                 align_corners=True).reshape(-1)
            vals.masked_fill_(outside, float(fill))
            out[a:a + step] = vals.numpy()
    return out.reshape(lead)


def splat_inverse(
    values: np.ndarray, points_mm: np.ndarray, target_affine: np.ndarray, target_shape: Sequence[int]
) -> Tuple[np.ndarray, np.ndarray]:
    """Scatter ``values`` (N,) located at world ``points_mm`` (N, 3) onto a target grid.

    Returns ``(image, weight)``: the weight-normalised image (0 where weight < 1e-3) and the summed
    trilinear weights. ``points_mm`` may also be given as three (N,) coordinate arrays ``(x, y, z)``.

    >>> img, w = splat_inverse(np.array([2.0]), np.array([[1.5, 0.0, 0.0]]), np.eye(4), (3, 1, 1))
    >>> img.ravel().tolist(), w.ravel().tolist()
    ([0.0, 2.0, 2.0], [0.0, 0.5, 0.5])
    """
    shape = tuple(int(s) for s in target_shape)
    if isinstance(points_mm, np.ndarray) and points_mm.ndim == 2 and points_mm.shape[1] == 3:
        cols = [points_mm[:, r] for r in range(3)]
    else:
        cols = [np.asarray(c) for c in points_mm]
    import torch

    inv = np.linalg.inv(np.asarray(target_affine, np.float64)).astype(np.float32)  # ~1e-5 voxel
    cols = [np.asarray(c, np.float32) for c in cols]
    vals = np.asarray(values, np.float32).reshape(-1)
    # padded accumulation grid: target voxel i is padded voxel i + 1, so base in [-1, n - 1] fits
    padded = tuple(n + 2 for n in shape)
    strides = (padded[1] * padded[2], padded[2], 1)
    vox, bases = [], []
    keep = np.ones(vals.shape[0], bool)
    for r in range(3):
        v = inv[r, 0] * cols[0]
        v += inv[r, 1] * cols[1]
        v += inv[r, 2] * cols[2]
        v += inv[r, 3]
        b = np.floor(v)
        keep &= (b >= -1) & (b < shape[r])  # False for NaN too
        vox.append(v)
        bases.append(b)
    if not keep.all():
        vox, bases, vals = [v[keep] for v in vox], [b[keep] for b in bases], vals[keep]
    flat0 = np.zeros(vals.shape[0], np.int64)
    w_axis = []
    for r in range(3):
        flat0 += (bases[r].astype(np.int64) + 1) * strides[r]
        f = torch.from_numpy(vox[r] - bases[r])
        w_axis.append((1.0 - f, f))
    del vox, bases
    size = int(np.prod(padded))
    # float32 accumulation: a target voxel sums ~8 contributions (relative error ~1e-7)
    num = torch.zeros(size, dtype=torch.float32)
    den = torch.zeros(size, dtype=torch.float32)
    base_t = torch.from_numpy(flat0)
    vals_t = torch.from_numpy(vals)
    for corner in np.ndindex(2, 2, 2):  # index_add_: no grid-sized temporaries per corner
        w = w_axis[0][corner[0]] * w_axis[1][corner[1]]
        w *= w_axis[2][corner[2]]
        idx = base_t + int(corner[0] * strides[0] + corner[1] * strides[1] + corner[2])
        den.index_add_(0, idx, w)
        w *= vals_t
        num.index_add_(0, idx, w)
    inner = (slice(1, -1),) * 3
    num_g = num.numpy().reshape(padded)[inner]
    den_g = np.ascontiguousarray(den.numpy().reshape(padded)[inner])
    img = np.zeros(shape, np.float32)
    np.divide(num_g, den_g, out=img, where=den_g >= _MIN_WEIGHT)
    return img, den_g


def _displacement(ctx: TaskContext, coords: np.ndarray) -> np.ndarray:
    """``coords - world`` of every output voxel, float32, without materialising the world grid."""
    disp = np.empty_like(coords)
    for r, (pi, pj, pk) in enumerate(ctx.world_axes()):
        d = disp[..., r]
        np.subtract(coords[..., r], (pi + pj).astype(np.float32), out=d)  # (X, Y, 1): small
        d -= pk.astype(np.float32)
    return disp


def run_reg(ctx: TaskContext) -> Dict[str, Volume]:
    """Registration outputs; ``atlas_warped``/``subject_in_atlas`` only when ``ctx.atlas`` is set."""
    raw = _reg_raw(ctx)
    how = METHOD_NAMES[ctx.reg_method]
    coords = ctx.channels_to_output(raw, "linear", 0.0)  # scaling commutes with the mapping
    coords *= np.float32(REG_SCALE)
    disp = _displacement(ctx, coords)
    coords, disp = ctx.mask(coords, 0.0, inplace=True), ctx.mask(disp, 0.0, inplace=True)
    out = {
        "reg_atlas_coords": ctx.volume(coords, task="reg", kind="coordinates", units="atlas RAS mm", method=how),
        "reg_displacement": ctx.volume(disp, task="reg", kind="vector", units="RAS mm", intent="displacement",
                                       method=how),
    }
    atlas = ctx.atlas
    if atlas is None:
        ctx.warnings.append("no atlas template available: atlas_warped and subject_in_atlas were not computed")
        return out
    if atlas.data.ndim != 3:
        atlas = atlas.with_data(np.asarray(atlas.data)[..., 0])
    if ctx.mask_background:  # only the foreground is kept: sample only there
        fg_out = np.asarray(ctx.foreground_out, bool)
        warped = np.zeros(fg_out.shape, np.float32)
        warped[fg_out] = sample_at(atlas, coords[fg_out])
    else:
        warped = sample_at(atlas, coords)
    out["atlas_warped"] = ctx.volume(warped, task="reg", kind="image", units="atlas intensity units", method=how)
    src_raw, src_img = _splat_sources(raw, ctx.net_image, ctx.net_affine)
    fg = src_img > 0
    cols = [np.asarray(src_raw[r][fg], np.float32) * np.float32(REG_SCALE) for r in range(3)]
    values = ctx.denormalise(src_img[fg])
    inv_img, _w = splat_inverse(values, cols, atlas.affine, atlas.shape)
    out["subject_in_atlas"] = Volume(
        inv_img, atlas.affine.copy(),
        {**ctx.meta, "task": "reg", "kind": "image", "units": "input intensity units",
         "method": f"trilinear splatting of the 1 mm subject image through the map ({how})"},
    )
    return out


def _splat_sources(raw: np.ndarray, image: np.ndarray, affine: np.ndarray):
    """(3, X, Y, Z) coordinates and the image on a grid of at most 1 mm: a coarser network grid is
    trilinearly refined first (same box), so that splatting into the 1 mm atlas leaves no holes.

    >>> r, im = _splat_sources(np.zeros((3, 2, 2, 2), np.float32), np.ones((2, 2, 2), np.float32),
    ...                        np.diag([2.0, 2.0, 2.0, 1.0]))
    >>> r.shape, im.shape
    ((3, 4, 4, 4), (4, 4, 4))
    """
    factor = int(round(float(np.linalg.norm(np.asarray(affine)[:3, :3], axis=0).max())))
    if factor <= 1:
        return raw, image
    import torch

    stack = torch.from_numpy(np.concatenate([np.asarray(raw[:3], np.float32),
                                             np.asarray(image, np.float32)[None]], 0))[None]
    fine = torch.nn.functional.interpolate(stack, scale_factor=factor, mode="trilinear", align_corners=False)[0]
    return fine[:3].numpy(), fine[3].numpy()
