"""Segmentation post-processing (``seg``): softmax over the channels (of the blended logits when
tiled), arg-max channel -> FreeSurfer label number through the label scheme's ``fs_values``
(int32), optional probabilities ``(X, Y, Z, C)`` and the table of structure volumes (mm^3) computed
on the INPUT grid. Labels are resampled nearest-neighbour, probabilities linearly. Voxels outside
the input foreground are set to 0 when masking is on (reference demo behaviour).

>>> import numpy as np
>>> logits = np.zeros((3, 1, 1, 2), np.float32); logits[2, 0, 0, 0] = 5; logits[1, 0, 0, 1] = 5
>>> labels_from_logits(logits, [0, 17, 53]).ravel().tolist()
[53, 17]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from brainfm.labels.checks import volume_checks
from brainfm.tasks import methods
from brainfm.tasks.context import TaskContext
from brainfm.volume import Volume, voxel_sizes

if TYPE_CHECKING:  # pragma: no cover
    from brainfm.tasks.segrefine import Tissues


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 0 (channels), float32."""
    return torch.softmax(torch.from_numpy(np.asarray(logits, np.float32)), dim=0).numpy()


def channel_indices(logits: np.ndarray) -> np.ndarray:
    """Arg-max channel of ``(C, X, Y, Z)`` logits, ties to the lowest channel, as the smallest
    unsigned/signed type that also holds ``C`` (uint8 up to 254 channels).

    >>> channel_indices(np.array([[[[0.0, 2.0]]], [[[1.0, 2.0]]]], np.float32)).ravel().tolist()
    [1, 0]
    """
    arr = np.asarray(logits, np.float32)
    if any(s < 0 for s in arr.strides):  # torch views cannot have negative strides
        arr = np.ascontiguousarray(arr)
    t = torch.from_numpy(arr)  # any memory layout (e.g. blended bands, channels-last outputs): no copy
    idx = torch.max(t, dim=0).indices  # first maximum, like argmax (and ~2x faster on CPU)
    dtype = torch.uint8 if logits.shape[0] < 255 else torch.int32
    return idx.to(dtype).numpy()


def refined_channel_indices(logits: np.ndarray, factor: int, *, slab: int = 8) -> np.ndarray:
    """Arg-max channel on a grid ``factor`` times finer over the same box, with the logits interpolated
    trilinearly (``align_corners=False``, clamped at the borders: the values of upsampling the whole
    volume at once with ``F.interpolate``), without making the fine logits of the whole volume.

    Each fine voxel lies in the cell of 2 x 2 x 2 coarse voxels it is interpolated from. Where the
    arg-max of the eight is one channel, it is the channel of the fine voxel as well (its logit is the
    largest at every corner, so in every mix of them), so it is copied. Only the cells whose corners
    disagree, the boundaries, are interpolated, ``slab`` coarse planes of them (along x) at a time.

    >>> lg = np.zeros((2, 2, 1, 1), np.float32); lg[1, 1] = 4.0    # channel 1 wins in the second voxel
    >>> fine = refined_channel_indices(lg, 2)
    >>> fine.shape, fine[:, 0, 0].tolist()             # the boundary moves to the logits' crossing
    ((4, 2, 2), [0, 1, 1, 1])
    """
    import torch.nn.functional as F

    from brainfm.geometry.subdivide import cell_weights

    c, f = int(logits.shape[0]), int(factor)
    n = tuple(int(s) for s in logits.shape[1:])
    dtype = np.uint8 if c < 255 else np.int32
    t = torch.from_numpy(np.ascontiguousarray(logits, np.float32))
    corner = F.pad(t[None], (1, 1, 1, 1, 1, 1), mode="replicate")[0]  # the clamped borders as cells
    best = torch.max(corner, dim=0).indices.to(torch.uint8 if c < 255 else torch.int32)  # first maximum
    low = best[:-1, :-1, :-1]  # cell (i, j, k): corners i..i+1, j..j+1, k..k+1 of ``corner``
    agree = torch.ones(low.shape, dtype=torch.bool)
    shifts = [(dx, dy, dz) for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)]
    for dx, dy, dz in shifts[1:]:
        agree &= low == best[dx:dx + low.shape[0], dy:dy + low.shape[1], dz:dz + low.shape[2]]
    cells = np.empty(tuple(low.shape) + (f, f, f), dtype)  # the f**3 fine voxels of every cell
    cells[...] = low.numpy()[..., None, None, None]
    # fine voxel i of an axis lies in cell (i + off) // f, at this weight of the cell's upper corner
    off = (f + 1) // 2
    w = (np.arange(f) - off + 0.5) / f + 0.5
    weights = cell_weights(w, w, w)
    todo = torch.nonzero(~agree)  # C order: x-planes of cells one after the other
    per = max(1, int(slab)) * low.shape[1] * low.shape[2]
    for s in range(0, todo.shape[0], per):
        cx, cy, cz = todo[s:s + per].unbind(1)
        corners = torch.stack([corner[:, cx + dx, cy + dy, cz + dz] for dx, dy, dz in shifts])  # (8, C, m)
        fine = (weights @ corners.reshape(8, -1)).reshape(f ** 3, c, -1)
        cells[cx.numpy(), cy.numpy(), cz.numpy()] = torch.max(fine, dim=1).indices.T.reshape(-1, f, f, f).numpy()
    whole = cells.transpose(0, 3, 1, 4, 2, 5).reshape(tuple((s + 1) * f for s in n))
    return np.ascontiguousarray(whole[off:off + n[0] * f, off:off + n[1] * f, off:off + n[2] * f])


def _holes(idx: np.ndarray, fs_values: Sequence[int]) -> Optional[Tuple[int, np.ndarray]]:
    """``(background channel, holes)``: the background of the channel indices ``idx`` that the labels
    surround (:func:`brainfm.tasks.segrefine.enclosed`); None when there is none, or no background channel."""
    from brainfm.tasks.segrefine import enclosed

    values = [int(v) for v in fs_values]
    if 0 not in values or len(values) < 2:
        return None
    bg = values.index(0)
    holes = enclosed(idx == bg)
    return (bg, holes) if holes.any() else None


def fill_holes(idx: np.ndarray, logits: np.ndarray, fs_values: Sequence[int], *, factor: int = 1) -> int:
    """No background inside the brain: channel indices ``idx`` (of ``logits``' grid, or of the grid
    ``factor`` times finer over the same box, :func:`refined_channel_indices`) that are background
    and surrounded by the labels (:func:`brainfm.tasks.segrefine.enclosed`) get, in place, the most
    probable other channel (the logits interpolated there as for :func:`refined_channel_indices`).
    Returns how many voxels changed. The refined labels follow the same rule (:func:`refine`).

    >>> lg = np.zeros((3, 7, 7, 7), np.float32); lg[0] = 5.0; lg[1, 1:6, 1:6, 1:6] = 9.0  # brain in background
    >>> lg[1, 3, 3, 3] = 2.0; lg[2, 3, 3, 3] = 3.0
    >>> idx = np.argmax(lg, 0); int(idx[3, 3, 3])          # background inside channel 1
    0
    >>> fill_holes(idx, lg, [0, 2, 4]), int(idx[3, 3, 3])   # the next most probable: channel 2
    (1, 2)
    """
    from scipy import ndimage

    found = _holes(idx, fs_values)
    if found is None:
        return 0
    bg, holes = found
    pts = np.argwhere(holes)
    f = int(factor)
    if f == 1:
        scores = logits[:, pts[:, 0], pts[:, 1], pts[:, 2]].T.copy()
    else:  # trilinear, align_corners=False, clamped at the borders: F.interpolate's values
        src = np.clip((pts + 0.5) / f - 0.5, 0, np.asarray(logits.shape[1:]) - 1).T
        scores = np.stack([ndimage.map_coordinates(ch, src, order=1, mode="nearest") for ch in logits], 1)
    scores[:, bg] = -np.inf
    idx[holes] = np.argmax(scores, 1).astype(idx.dtype)
    return int(pts.shape[0])


def fill_holes_nearest(idx: np.ndarray, fs_values: Sequence[int]) -> int:
    """:func:`fill_holes` for a decision whose logits were not kept (a 1 mm model's labels, decided
    while its tiles were blended): background that the labels surround gets, in place, the channel of
    the nearest voxel that is not background. Returns how many voxels changed.

    >>> idx = np.zeros((7, 7, 7), np.uint8); idx[1:6, 1:6, 1:6] = 1; idx[1:6, 4:6, 1:6] = 2
    >>> idx[3, 2, 3] = 0                                      # a hole next to channel 1
    >>> fill_holes_nearest(idx, [0, 2, 4]), int(idx[3, 2, 3])
    (1, 1)
    """
    from scipy import ndimage

    found = _holes(idx, fs_values)
    if found is None:
        return 0
    bg, holes = found
    pts = np.argwhere(holes)  # the labels around the holes lie within one voxel of their box
    lo, hi = np.maximum(pts.min(0) - 1, 0), np.minimum(pts.max(0) + 2, idx.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    sub = idx[box]
    nearest = ndimage.distance_transform_edt(sub == bg, return_distances=False, return_indices=True)
    inside = holes[box]
    sub[inside] = sub[tuple(ix[inside] for ix in nearest)]
    return int(pts.shape[0])


def labels_from_logits(logits: np.ndarray, fs_values: Sequence[int]) -> np.ndarray:
    """Arg-max channel mapped to label numbers (int32); ties go to the lowest channel."""
    lut = np.asarray(list(fs_values), np.int32)
    if lut.shape[0] != logits.shape[0]:
        raise ValueError(f"label scheme has {lut.shape[0]} classes but the head has {logits.shape[0]} channels")
    return lut[channel_indices(logits)]


def _scheme_values(ctx: TaskContext, n_channels: int):
    """``(scheme, FreeSurfer number per channel)``: the scheme the predictor decided, else the one
    :func:`brainfm.labels.decide_scheme` gives for the head's channel count; channel indices (with
    a warning) when there is none."""
    try:
        from brainfm.labels import decide_scheme

        scheme = decide_scheme(ctx.scheme, n_channels=n_channels)
    except Exception as exc:  # noqa: BLE001 - labels layer missing or unknown channel count
        ctx.warnings.append(
            f"no label scheme for a {n_channels}-class segmentation head ({exc}); "
            "writing channel indices as labels"
        )
        return None, list(range(n_channels))
    return scheme, list(getattr(scheme, "fs_values"))


def volume_rows(counts: Dict[int, int], voxel_mm3: float, scheme: Any) -> List[Dict[str, Any]]:
    """Rows ``{value, name, voxels, volume_mm3}`` from voxel counts per label number, in the order and
    format of :func:`brainfm.labels.structure_volumes` (every scheme structure, then any other
    value found; background 0 left out).

    >>> volume_rows({17: 8}, 0.5, None)
    [{'value': 17, 'name': 'Left-Hippocampus', 'voxels': 8, 'volume_mm3': 4.0}]
    """
    from brainfm.labels.volumes import rows_from_counts

    return rows_from_counts(counts, voxel_mm3, scheme=scheme)


def _count(idx: np.ndarray, lut: np.ndarray) -> Dict[int, int]:
    """Voxels per label number of a channel-index map (index ``len(lut) - 1`` = outside/background)."""
    flat = np.ascontiguousarray(idx).reshape(-1)
    if flat.dtype == np.uint8:  # torch counts uint8 without widening to int64 first (~5x faster)
        counts = torch.bincount(torch.from_numpy(flat), minlength=lut.shape[0]).numpy()
    else:
        counts = np.bincount(flat, minlength=lut.shape[0])
    out: Dict[int, int] = {}
    for ch, n in enumerate(counts[: lut.shape[0]]):
        if n:
            v = int(lut[ch])
            out[v] = out.get(v, 0) + int(n)
    return out


#: what ``seg_method`` accepts (:mod:`brainfm.tasks.methods`), and what each resolved method is called
METHODS = methods.METHODS
METHOD_NAMES = {"head": "model head", "fit": "model head refined to the scan's intensities"}


def check_method(method: str) -> str:
    """``method`` lower-cased, one of :data:`METHODS`; :class:`~brainfm.errors.InputError` otherwise."""
    return methods.check_method(method, option="seg_method")


def resolve_method(method: str, *, coarse_grid: bool, ct: bool = False) -> str:
    """``"head"`` or ``"fit"`` for a requested ``seg_method``: ``auto`` refines the labels of a model
    that works on a grid coarser than 1 mm (its outlines are smooth; the scan's 1 mm intensities are
    not) unless the input is CT (its grey / white matter contrast is a few HU, below its noise).

    >>> resolve_method("auto", coarse_grid=True), resolve_method("auto", coarse_grid=False)
    ('fit', 'head')
    >>> resolve_method("auto", coarse_grid=True, ct=True), resolve_method("fit", coarse_grid=False)
    ('head', 'fit')
    """
    return methods.resolve(method, option="seg_method", head_reliable=not coarse_grid, has_seg=True,
                           fit_allowed=not ct)


@dataclass
class Decided:
    """The label decision on the output grid, shared by the tasks that need it (``seg``, the fitted
    bias field): channel indices on the network (or fine) grid and on the output grid (index ``n_ch``
    = background, masked like ``seg``), the lookup to FreeSurfer numbers and the grid map to the input.
    ``refined``: the output-grid labels were refined to the scan's intensities (``seg_method`` fit,
    :func:`refine`); ``idx_net`` is then the model's decision before the refinement, and ``tissues``
    the tissue model fitted to the scan (:class:`brainfm.tasks.segrefine.Tissues`)."""

    idx_net: np.ndarray
    idx_out: np.ndarray
    lut: np.ndarray
    scheme: Any
    n_ch: int
    to_input: Any
    refined: bool = False
    tissues: Optional["Tissues"] = None

    def labels_out(self, dtype=np.int32) -> np.ndarray:
        """FreeSurfer numbers on the output grid (``np.int16`` holds every FreeSurfer number in half
        the memory)."""
        return self.lut.astype(dtype)[self.idx_out]


def decide(ctx: TaskContext) -> Decided:
    """The label decision of ``ctx`` (taken once, then kept in ``ctx.decided``).

    Arg-max on the network grid (or the 1 mm grid of a coarse model), background that the labels
    surround given the next most probable structure (:func:`fill_holes`; the nearest structure,
    :func:`fill_holes_nearest`, when the arg-max was taken while blending; the refinement has its own
    rule), nearest mapping to the output grid and masking of the indices (outside the input foreground
    and the head: background).
    """
    if isinstance(ctx.decided, Decided):
        return ctx.decided
    decided = ctx.labels.get(ctx.heads.get("seg", "seg"))
    if decided is not None:  # arg-max already taken while blending (compact accumulation)
        idx_net, n_ch = decided
        logits = None
    else:
        logits = ctx.task_head("seg")
        n_ch = int(logits.shape[0])
    scheme, fs_values = _scheme_values(ctx, n_ch)
    lut = np.asarray(list(fs_values) + [0], np.int32)  # extra entry: outside / masked -> 0
    if lut.shape[0] != n_ch + 1:
        raise ValueError(f"label scheme has {lut.shape[0] - 1} classes but the head has {n_ch} channels")
    if ctx.fine_factor > 1:  # a coarse network grid: decide the labels on the 1 mm grid of the same box
        if logits is None:
            raise ValueError("a coarse network grid decides labels on the 1 mm grid and needs the logits")
        idx_net = refined_channel_indices(logits, ctx.fine_factor)
        to_output, to_input = ctx.fine_to_output, ctx.fine_to_input
    else:
        if logits is not None:
            idx_net = channel_indices(logits)
        to_output, to_input = ctx.to_output, ctx.to_input
    if logits is None:  # decided while blending: no scores to rank the other structures by
        fill_holes_nearest(idx_net, fs_values)
    elif ctx.seg_method != "fit":  # the refinement has its own rule (refine)
        fill_holes(idx_net, logits, fs_values, factor=ctx.fine_factor)
    idx_out = ctx.private(to_output(idx_net, "nearest", n_ch))
    if np.may_share_memory(idx_out, idx_net):  # same grid: idx_net is mapped again below, unmasked
        idx_out = idx_out.copy()
    if ctx.mask_background:
        np.copyto(idx_out, np.asarray(n_ch, idx_out.dtype), where=ctx.background_out)
        if ctx.head_out is not None:  # never a label outside the head
            np.copyto(idx_out, np.asarray(n_ch, idx_out.dtype), where=~np.asarray(ctx.head_out, bool))
    tissues = refine(ctx, idx_out, logits, lut=lut) if ctx.seg_method == "fit" else None
    ctx.decided = Decided(idx_net, idx_out, lut, scheme, n_ch, to_input, tissues is not None, tissues)
    return ctx.decided


#: labelled voxels whose probabilities are sampled together by :func:`refine` (33 channels: 35 MB)
PRIOR_CHUNK = 1 << 18


def refine(ctx: TaskContext, idx_out: np.ndarray, logits: Optional[np.ndarray], *, lut: np.ndarray) -> Optional["Tissues"]:
    """Refine the labelled voxels of ``idx_out`` (in place) to the scan's intensities
    (:func:`brainfm.tasks.segrefine.fit_tissues`): the model's probabilities on the output grid are
    the prior; the intensities are the input's on the output grid, divided by the bias field fitted to
    the model's labels (:func:`brainfm.tasks.biasfit.fit_log_field`; raw when that fit is not
    possible). Background never lies inside the brain: background voxels that the model's labels
    surround (:func:`~brainfm.tasks.segrefine.enclosed`; e.g. dark, enlarged ventricles the head took
    for background) are refined too, without the background in their prior, and background the
    refinement leaves enclosed gets the most probable tissue group other than background.
    Returns the fitted :class:`brainfm.tasks.segrefine.Tissues`, or None, with a warning
    (``ctx.seg_method`` then ``"head"``), when the logits were not kept or there is nothing to refine."""
    from brainfm.tasks.biasfit import fit_log_field
    from brainfm.tasks.segrefine import GroupedPrior, Tissues, enclosed, fit_tissues, present_groups

    fs_values = [int(v) for v in lut[:-1]]  # ``lut``: channel -> FreeSurfer number, last entry outside (0)
    n_ch = len(fs_values)
    labelled = lut[idx_out] != 0  # the structures: background and outside the head stay as they are
    if logits is None or not labelled.any():
        why = "the logits were not kept" if logits is None else "no voxel is labelled"
        ctx.warnings.append(f"segmentation: the refinement to the scan's intensities was skipped ({why}); "
                            "the model's labels are used")
        ctx.seg_method = "head"
        return None
    bg_ch = fs_values.index(0) if 0 in fs_values else None
    # the model's background inside the brain (masked voxels, outside the input's foreground or the
    # head, stay background: never a label there)
    holes = enclosed(~labelled) & (idx_out == bg_ch) if bg_ch is not None else None
    if holes is not None and holes.any():
        labelled |= holes
    else:
        holes = None
    image = np.asarray(ctx.image_out, np.float32)
    try:
        log_field = fit_log_field(image, lut[idx_out].astype(np.int16), voxel_mm=voxel_sizes(ctx.out_affine))
        values = image[labelled] / np.exp(log_field[labelled])
    except ValueError:  # too few labelled voxels for a field: the raw intensities
        values = image[labelled]
    # the model's probabilities on its own grid, interpolated: a 2 mm boundary stays uncertain over
    # 2 mm, where the scan's intensities decide. Sampled at the labelled voxels only, a chunk at a time,
    # and kept per tissue group (GroupedPrior): no (voxels, channels) array of the whole scan
    # stored with the channels of a voxel side by side (a (C, X, Y, Z) view of (X, Y, Z, C)): the
    # sampling on a subdivided grid reads each voxel as one row (brainfm.geometry.subdivide)
    probs = np.moveaxis(np.ascontiguousarray(np.moveaxis(softmax(logits), 0, -1)), -1, 0)
    flat = np.flatnonzero(labelled)
    groups = present_groups(fs_values)
    grouped = GroupedPrior.empty(flat.size, int(groups.max()) + 1, n_ch)
    # (a context that can only map whole grids maps them once: one chunk)
    chunk = PRIOR_CHUNK if ctx.output_points is not None else max(1, flat.size)
    for start in range(0, flat.size, chunk):
        vox = np.stack(np.unravel_index(flat[start:start + chunk], labelled.shape), 1)
        prior = ctx.channels_at_output(probs, vox, "linear", 0.0)
        if holes is not None:  # inside the brain, no background
            prior[holes.reshape(-1)[flat[start:start + chunk]], bg_ch] = 0.0
        prior /= np.maximum(prior.sum(1, keepdims=True), np.float32(1e-12))
        grouped.fill(start, prior, groups)
    del probs, flat
    indices, posteriors = fit_tissues(grouped, values, fs_values)
    idx_out[labelled] = indices.astype(idx_out.dtype)
    if bg_ch is not None:
        _close_holes(idx_out, labelled, lut, posteriors, grouped.best_idx, int(groups[bg_ch]))
    return Tissues(labelled, posteriors, np.asarray(values, np.float32))


def _close_holes(idx_out: np.ndarray, labelled: np.ndarray, lut: np.ndarray, posteriors: np.ndarray,
                 best_idx: np.ndarray, bg_group: int) -> None:
    """Background that the refined labels surround gets (in place) the most probable structure of its
    most probable tissue group other than background (``posteriors`` and ``best_idx``: per labelled
    voxel, in the C order of ``labelled``)."""
    from brainfm.tasks.segrefine import enclosed

    if posteriors.shape[1] < 2:
        return
    holes = enclosed(lut[idx_out] == 0) & labelled
    if not holes.any():
        return
    rows = np.flatnonzero(holes[labelled])
    q = posteriors[rows]  # a copy (fancy indexing)
    q[:, bg_group] = -1.0
    idx_out[holes] = best_idx[rows, np.argmax(q, 1)].astype(idx_out.dtype)


def run_seg(ctx: TaskContext) -> Dict[str, Volume]:
    """``seg`` (int32 FreeSurfer numbers), optional ``seg_probabilities``; fills ``tables["seg_volumes"]``.

    Works on channel indices (uint8) until the end (:func:`decide`), one table lookup to label
    numbers, and the structure volumes counted with ``bincount`` on the input grid.
    """
    d = decide(ctx)
    idx_net, idx_out, lut, scheme, n_ch = d.idx_net, d.idx_out, d.lut, d.scheme, d.n_ch
    logits = None if ctx.labels.get(ctx.heads.get("seg", "seg")) is not None else ctx.task_head("seg")
    fs_values = [int(v) for v in lut[:-1]]
    seg = d.labels_out()
    meta = dict(task="seg", kind="label", units="FreeSurfer label number",
                label_scheme=getattr(scheme, "name", None))
    if not getattr(scheme, "anatomical", True):  # a user's own labels: their names and colours travel along
        meta.update(units="label number", label_table=[
            [int(v), n, *map(int, c)] for v, n, c in zip(scheme.fs_values, scheme.names, scheme.colors) if v])
    out = {"seg": ctx.volume(seg, **meta)}
    in_aff = np.asarray(ctx.input_affine if ctx.input_affine is not None else ctx.out_affine, float)
    in_shape = ctx.input_shape
    if in_shape is None or (tuple(in_shape) == tuple(seg.shape) and np.allclose(in_aff, ctx.out_affine)):
        idx_in = idx_out
    elif d.refined:  # the refined labels exist on the output grid only: count them there
        idx_in, in_aff = idx_out, np.asarray(ctx.out_affine, float)
    else:
        idx_in = ctx.private(d.to_input(idx_net, "nearest", n_ch))
        if ctx.mask_background and ctx.foreground_in is not None:
            np.copyto(idx_in, np.asarray(n_ch, idx_in.dtype), where=~np.asarray(ctx.foreground_in, bool))
        if ctx.mask_background and ctx.head_in is not None:
            np.copyto(idx_in, np.asarray(n_ch, idx_in.dtype), where=~np.asarray(ctx.head_in, bool))
    voxel_mm3 = float(abs(np.linalg.det(in_aff[:3, :3])))
    rows = ctx.tables["seg_volumes"] = volume_rows(_count(idx_in, lut), voxel_mm3, scheme)
    if getattr(scheme, "anatomical", True):  # the checks know FreeSurfer's anatomy, not a user's own labels
        ctx.warnings += [f"segmentation check: {found}; look at the segmentation"
                         for found in volume_checks({r["value"]: r["volume_mm3"] for r in rows})]
    if ctx.return_probabilities:
        if logits is None:
            raise ValueError("segmentation probabilities need the logits, but only the label decision was kept")
        probs = softmax(logits)
        data = ctx.channels_to_output(probs, "linear", 0.0)
        out["seg_probabilities"] = ctx.volume(
            data, task="seg", kind="probabilities", units="probability",
            channel_labels=[int(v) for v in fs_values],
        )
    return out
