"""Synthesis fitted to the scan: the model's contrast per tissue, the scan's own detail.

A model that works on a 2 mm grid synthesises smooth images. Within one tissue, though, the target
contrast is close to a linear function of the scan's intensity (partial volume, gradual changes of
myelin or iron); what the network has to supply is how each tissue looks in the target contrast.
So, with the tissue model fitted to the scan when its labels were refined
(:class:`brainfm.tasks.segrefine.Tissues`: the posterior of each tissue group at every labelled voxel
and the scan's bias-corrected intensities there), each group gets the linear map
``synthesised ≈ a_g · intensity + b_g`` that best fits the model's synthesis over the group
(least squares weighted by the posteriors), and every labelled voxel gets the posterior-weighted
mix of its groups' maps. Voxels outside the labelled structures keep the model's synthesis, except at
the rim of a masked scan (below).

The maps are fitted at the model's resolution: its synthesis has none of the scan's fine detail, so a
slope fitted against the scan's full-resolution intensities comes out too flat (the detail only adds
variance to the scan's side) and the detail is lost again. On a scan finer than the model's grid in
every direction, the slopes are fitted against the scan smoothed to the model's voxel size
(:func:`at_resolution`: along each axis a Gaussian of σ = √(model voxel² − scan voxel²), inside the
labelled voxels) and applied to the scan at full resolution. Thick slices are fitted as they are.

The edge of a masked scan (brain-extracted, then usually resampled) fades to its zero background over a
voxel or two, and the model labels that rim background. Its 2 mm synthesis there is the brain's, so it
would stay bright where the scan fades. Such a rim voxel is taken as partial volume of the tissue next
to it and of the background: the synthesis is moved towards the output's background by the same
fraction as the scan (:func:`edge_fade`). Whole heads with a noisy background have no such rim.

>>> import numpy as np
>>> y = np.linspace(0.0, 1.0, 100)
>>> post = np.stack([y < 0.5, y >= 0.5], 1).astype(np.float32)        # two tissues, hard posteriors
>>> model = np.where(y < 0.5, 0.8, 0.2)                                # the model: flat per tissue
>>> [round(float(v), 3) for v in transfer_contrast(post, y, model)[[0, 49, 50, 99]]]   # no slope to find
[0.8, 0.8, 0.2, 0.2]
>>> bool(np.allclose(transfer_contrast(post, y, 1.0 - y), 1.0 - y, atol=1e-5))      # a linear contrast, exactly
True
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from brainfm.tasks.context import TaskContext
from brainfm.volume import voxel_sizes

#: a group needs at least this much posterior mass (voxels) for a slope; below it, its mean only
MIN_WEIGHT = 20.0


def transfer_contrast(posteriors: np.ndarray, intensities: np.ndarray, synthesized: np.ndarray, *,
                      fit_intensities: Optional[np.ndarray] = None) -> np.ndarray:
    """The model's synthesis ``synthesized`` ``(N,)`` re-expressed per tissue group as a linear map of
    the scan's ``intensities`` ``(N,)``, fitted by least squares weighted by ``posteriors`` ``(N, G)``
    and mixed by them: float32 ``(N,)``. ``fit_intensities`` ``(N,)``: the scan's values the maps are
    fitted against (the scan at the synthesis's resolution, :func:`at_resolution`); by default
    ``intensities``. The maps are always applied to ``intensities``.

    A group with (almost) constant intensities, or less than :data:`MIN_WEIGHT` voxels of posterior
    mass, gets its weighted mean of ``synthesized`` (no slope).

    >>> smooth = np.linspace(0.0, 5.0, 40); x = smooth + 0.5 * (-1.0) ** np.arange(40)  # coarse + fine detail
    >>> model = 10.0 - smooth; post = np.ones((40, 1), np.float32)   # the model: the coarse contrast only
    >>> bool(np.allclose(transfer_contrast(post, x, model, fit_intensities=smooth), 10.0 - x, atol=1e-4))
    True
    >>> round(float(np.ptp(10.0 - x)), 2), round(float(np.ptp(transfer_contrast(post, x, model))), 2)  # flatter
    (5.74, 5.22)
    """
    import torch

    q = np.asarray(posteriors, np.float32)
    y = np.asarray(intensities, np.float32).reshape(-1)
    s = np.asarray(synthesized, np.float32).reshape(-1)
    if q.ndim != 2 or q.shape[0] != y.shape[0] or s.shape[0] != y.shape[0]:
        raise ValueError(f"posteriors {q.shape}, intensities {y.shape} and synthesis {s.shape} do not match")
    if y.size == 0:
        return np.zeros(0, np.float32)
    # sums per group in one matrix product; centred values keep the (co)variances from sums exact
    s_centre = float(np.median(s))
    y_centre = float(np.median(y))
    yc = torch.from_numpy(y) - y_centre
    sc = torch.from_numpy(s) - s_centre
    if fit_intensities is None:
        yf = yc
    else:
        f = np.asarray(fit_intensities, np.float32).reshape(-1)
        if f.shape != y.shape:
            raise ValueError(f"fit_intensities {f.shape} and intensities {y.shape} do not match")
        yf = torch.from_numpy(f) - y_centre
    stats = torch.stack([torch.ones_like(yf), yf, sc, yf * yf, yf * sc], 1)
    sums = (torch.from_numpy(np.ascontiguousarray(q)).T @ stats).double().numpy()  # (G, 5)
    w = np.maximum(sums[:, 0], 1e-12)
    my, ms = sums[:, 1] / w, sums[:, 2] / w
    var = sums[:, 3] / w - my * my
    cov = sums[:, 4] / w - my * ms
    span = float(np.percentile(y, 99) - np.percentile(y, 1)) or 1.0
    ok = (sums[:, 0] >= MIN_WEIGHT) & (var > (1e-3 * span) ** 2)
    slope = np.where(ok, cov / np.where(ok, var, 1.0), 0.0)
    offset = ms - slope * my  # in centred units
    # the mix: sum_g q_g (a_g yc + b_g), as two matrix-vector products
    a = torch.from_numpy(slope.astype(np.float32))
    b = torch.from_numpy(offset.astype(np.float32))
    qt = torch.from_numpy(np.ascontiguousarray(q))
    out = (qt @ a).mul_(yc).add_(qt @ b).add_(s_centre)
    return out.numpy()


def at_resolution(mask: np.ndarray, intensities: np.ndarray, voxel_mm: Sequence[float], model_mm: float) -> np.ndarray:
    """The scan's ``intensities`` at the voxels of ``mask`` (C order) brought to the resolution of a
    model with voxels of ``model_mm``: along each axis of the grid (voxel sizes ``voxel_mm``) a
    Gaussian of σ = √(model_mm² − voxel²) mm, over the masked voxels only (normalised convolution:
    the background does not darken the edges). float32 ``(N,)``; unchanged when a voxel is not finer
    than ``model_mm`` along some axis (thick slices).

    >>> m = np.zeros((1, 1, 9), bool); m[0, 0, 1:8] = True
    >>> [round(float(v), 2) for v in at_resolution(m, np.array([1.0, 1.0, 1.0, 5.0, 1.0, 1.0, 1.0]), (1, 1, 1), 2.0)]
    [1.33, 1.58, 1.84, 1.96, 1.84, 1.58, 1.33]
    >>> at_resolution(m, np.array([1.0, 1.0, 1.0, 5.0, 1.0, 1.0, 1.0]), (1, 1, 5), 2.0).tolist()[3]
    5.0
    """
    from scipy import ndimage

    values = np.asarray(intensities, np.float32)
    vox = [max(float(v), 1e-6) for v in voxel_mm]
    if max(vox) >= float(model_mm):
        return values.copy()
    mask = np.asarray(mask, bool)
    full = np.zeros(mask.shape, np.float32)
    full[mask] = values
    sigma = [float(np.sqrt(float(model_mm) ** 2 - v ** 2)) / v for v in vox]
    num = ndimage.gaussian_filter(full, sigma, mode="constant")
    den = ndimage.gaussian_filter(mask.astype(np.float32), sigma, mode="constant")
    return (num[mask] / np.maximum(den[mask], 1e-6)).astype(np.float32)


def edge_fade(mask: np.ndarray, foreground: np.ndarray, image: np.ndarray, *, voxel_mm: Sequence[float],
              reach_mm: float, level: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
    """The rim of a masked scan between its labelled voxels and its background, and how far it has
    faded: ``(voxels, fraction)``, the flat (C order) indices of the rim voxels (int64 ``(M,)``) and,
    for each, ``(image − level) / (image at the nearest labelled voxel − level)`` clipped to [0, 1]
    (float32 ``(M,)``).

    A rim voxel is in ``foreground`` but not in ``mask`` (the labelled voxels), and lies within
    ``reach_mm`` of both a labelled voxel and a voxel outside ``foreground`` (the background, at
    ``level``). Distances are measured on the grid with voxel edges ``voxel_mm``; the grid's border is
    not background. Whole-head scans with a noisy background have no voxel at ``level`` near the labels,
    hence no rim.

    >>> m = np.zeros((1, 1, 8), bool); m[0, 0, :4] = True                 # labelled: the first 4 voxels
    >>> img = np.array([[[80.0, 80, 80, 80, 40, 10, 0, 0]]])               # then a fade to the background
    >>> voxels, fraction = edge_fade(m, img > 0, img, voxel_mm=(1, 1, 1), reach_mm=3.0)
    >>> voxels.tolist(), fraction.tolist()
    ([4, 5], [0.5, 0.125])
    >>> edge_fade(m, np.ones_like(m), img + 1, voxel_mm=(1, 1, 1), reach_mm=3.0)[0].size  # no background
    0
    """
    from scipy import ndimage
    from scipy.spatial import cKDTree

    mask = np.asarray(mask, bool)
    fg = np.asarray(foreground, bool)
    image = np.asarray(image)
    if mask.shape != fg.shape or image.shape != fg.shape:
        raise ValueError(f"mask {mask.shape}, foreground {fg.shape} and image {image.shape} do not match")
    none = (np.zeros(0, np.int64), np.zeros(0, np.float32))
    if not mask.any() or fg.all():
        return none
    vox = np.array([max(float(v), 1e-6) for v in voxel_mm], np.float64)
    steps = np.floor(float(reach_mm) / vox).astype(int)
    # a rim voxel lies within reach of a labelled voxel, its background within reach of it: work in the
    # box of the labelled voxels widened twice by the reach
    lo = np.zeros(3, int)
    hi = np.array(mask.shape)
    for axis in range(3):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        lo[axis] = max(int(present[0]) - 2 * int(steps[axis]), 0)
        hi[axis] = min(int(present[-1]) + 2 * int(steps[axis]) + 1, mask.shape[axis])
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    m, f = mask[box], fg[box]
    bg = ~f
    if not bg.any():
        return none

    def around(x: np.ndarray, k: np.ndarray = steps) -> np.ndarray:  # within +-k voxels along each axis
        return ndimage.maximum_filter(x, size=tuple(int(2 * v + 1) for v in k), mode="constant", cval=False)

    def border(x: np.ndarray) -> np.ndarray:  # the voxels of x next to a voxel not in x: the nearest ones
        return x & ~ndimage.binary_erosion(x, border_value=1)

    candidates = f & ~m & around(bg) & around(m)
    if not candidates.any():
        return none
    near = around(candidates)
    rim = np.argwhere(candidates)
    labelled = np.argwhere(border(m) & near)
    bound = float(reach_mm) + 1e-6
    d_lab, nearest = cKDTree(labelled * vox).query(rim * vox, distance_upper_bound=bound)
    ok = np.isfinite(d_lab)
    # the background: within reach for sure when next to the voxel (its 3x3x3 cube within reach)
    close = around(bg, np.ones(3, int))[tuple(rim.T)]
    if float(np.sqrt(np.sum(vox ** 2))) > float(reach_mm):
        close[:] = False
    far = ok & ~close
    if far.any():
        d_bg = cKDTree(np.argwhere(border(bg) & near) * vox).query(rim[far] * vox, distance_upper_bound=bound)[0]
        ok[np.flatnonzero(far)[~np.isfinite(d_bg)]] = False
    rim, nearest = rim[ok] + lo, labelled[nearest[ok]] + lo
    voxels = np.ravel_multi_index(tuple(rim.T), mask.shape).astype(np.int64)
    value = image.reshape(-1)[voxels].astype(np.float64) - float(level)
    reference = image[tuple(nearest.T)].astype(np.float64) - float(level)
    fraction = np.clip(value / np.maximum(reference, 1e-12), 0.0, 1.0)
    return voxels, np.where(reference > 0, fraction, 1.0).astype(np.float32)


def fit_to_scan(ctx: TaskContext, data: np.ndarray, *, what: str, background: float = 0.0) -> bool:
    """Replace the labelled voxels of ``data`` (a synthesis on the output grid, modified in place) by
    :func:`transfer_contrast` of the tissue model fitted when the labels were refined
    (:func:`brainfm.tasks.segmentation.decide`). Returns False, with a warning naming ``what``
    (``ctx.synth_method`` then ``"head"``), when there is no tissue model (the labels were not
    refined). The maps are fitted against the scan at the model's resolution (:func:`at_resolution`;
    the model's voxel: the network grid's). At the rim of a masked scan (:func:`edge_fade`, within one
    model voxel plus one scan voxel of the labels and of the background) the synthesis moves towards
    ``background`` (the output's value outside the foreground) as far as the scan has faded."""
    from brainfm.tasks.segmentation import decide

    tissues = decide(ctx).tissues
    if tissues is None:
        ctx.warnings.append(f"{what}: not fitted to the scan (the segmentation was not refined to the scan's "
                            "intensities); the model's synthesis is used")
        ctx.synth_method = "head"
        return False
    mask = tissues.mask
    if mask.shape != data.shape:
        raise ValueError(f"the tissue model's grid {mask.shape} is not the synthesis grid {data.shape}")
    model_mm = float(np.mean(voxel_sizes(ctx.net_affine)))
    key = f"at_resolution {model_mm:g} mm"  # the same for every synthesis of this prediction: once
    if key not in tissues.derived:
        tissues.derived[key] = at_resolution(mask, tissues.intensities, voxel_sizes(ctx.out_affine), model_mm)
    smooth = tissues.derived[key]
    data[mask] = transfer_contrast(tissues.posteriors, tissues.intensities, data[mask], fit_intensities=smooth)
    if "edge voxels" not in tissues.derived:
        out_mm = voxel_sizes(ctx.out_affine)
        tissues.derived["edge voxels"], tissues.derived["edge fraction"] = edge_fade(
            mask, ctx.foreground_out, ctx.image_out, voxel_mm=out_mm, reach_mm=model_mm + float(max(out_mm)),
            level=float(ctx.norm_range[0]))
    voxels, fraction = tissues.derived["edge voxels"], tissues.derived["edge fraction"]
    rim = np.unravel_index(voxels, data.shape)
    data[rim] = background + fraction * (data[rim] - np.float32(background))
    return True
