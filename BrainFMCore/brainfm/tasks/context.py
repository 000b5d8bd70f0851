"""What every task post-processor receives: raw head outputs on the network grid plus the means to
put results on the output grid (the input grid, or the 1 mm network frame).

Post-processors are pure functions ``run(ctx) -> dict[str, Volume]``; they never modify ``ctx.raw``.

>>> import numpy as np
>>> from brainfm.tasks.context import TaskContext
>>> raw = {"T1": np.full((1, 4, 4, 4), 0.5, np.float32)}
>>> img = np.ones((4, 4, 4), np.float32)
>>> ctx = TaskContext.identity(raw, img, np.eye(4))
>>> ctx.volume(ctx.head("T1")[0]).shape
(4, 4, 4)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from brainfm.volume import Volume

# (array on the network grid, order "linear"|"nearest", fill) -> array on the target grid
GridMap = Callable[[np.ndarray, str, float], np.ndarray]


def _identity(arr: np.ndarray, order: str, fill: float) -> np.ndarray:
    return arr


@dataclass
class TaskContext:
    """Inputs shared by the task post-processors.

    Attributes:
        raw: head name -> raw output ``(C, X, Y, Z)`` float32 on the network grid.
        heads: task name -> head name used for it (e.g. ``t1 -> "image"`` for Brain-ID models).
        net_image: the normalised [0, 1] network input ``(X, Y, Z)``.
        net_affine: network-frame affine (RAS, 1 mm).
        norm_range: ``(lo, hi)`` removed by the min-max normalisation (after any CT clamp).
        out_affine, out_shape: the output grid.
        image_out: the input image on the output grid, in input intensity units.
        foreground_out: boolean mask on the output grid (normalised input > 0, the reference's
            ``input != 0``; for a scan whose background is noise, the head mask,
            :func:`brainfm.inference.headmask.head_mask`).
        to_output: maps a network-grid array ``(X, Y, Z)`` to the output grid.
        to_input: maps a network-grid array to the INPUT grid (tables are always on the input grid).
        input_affine, input_shape: the input grid; foreground_in: the foreground mask on it.
        scheme: label scheme of the segmentation head (``brainfm.labels.LabelScheme``) or None.
        atlas: atlas template Volume or None.
        return_probabilities, mask_background: options of ``predict``.
        max_distance: distance clamp (mm), 3.0 like the reference.
        output_exact: True when ``to_output`` copies voxel values without interpolation (same
            grid, or an axis permutation/flip with an integer shift): post-processors may then
            apply voxel-wise transforms after mapping instead of before (same result, less work).
        output_channels: optional ``(C, X, Y, Z) -> (X', Y', Z', C)`` version of ``to_output``
            (e.g. :meth:`brainfm.geometry.GridMapper.channels`).
        output_points: optional ``(C, X, Y, Z), voxels (N, 3) -> (N, C)`` version of
            ``output_channels`` at some output voxels only (e.g. :meth:`brainfm.geometry.GridMapper.points`).
        head_out, head_in: boolean masks of the head (:func:`brainfm.inference.headmask.head_mask`)
            on the output / input grid; labels are never painted outside them (None: no restriction).
        fine_factor: the network grid's voxel edge in mm when it is coarser than 1 mm (2 for the
            compact model), else 1. Then ``fine_to_output`` / ``fine_to_input`` map arrays of the
            1 mm grid over the same box (``factor`` times the network shape) instead.
        labels: head name -> ``(channel indices (X, Y, Z), number of channels)`` when the label
            decision was already taken while blending (the logits are then not in ``raw``).
        decided: the segmentation's label decision on the output grid once a task has taken it
            (:func:`brainfm.tasks.segmentation.decide`), shared by ``seg`` and the fitted bias field.
        bias_method: ``"head"`` (the model's bias-field head) or ``"fit"`` (a field fitted to the
            segmentation, :mod:`brainfm.tasks.biasfit`); see :func:`brainfm.tasks.bias.resolve_method`.
        seg_method: ``"head"`` (the model's labels) or ``"fit"`` (refined to the scan's intensities,
            :mod:`brainfm.tasks.segrefine`), applied by :func:`brainfm.tasks.segmentation.decide`.
        reg_method: ``"head"`` (the model's registration head) or ``"fit"`` (a map fitted to the
            segmentations of the scan and of the atlas, :mod:`brainfm.tasks.regfit`).
        synth_method: ``"head"`` (the model's synthesis) or ``"fit"`` (the model's contrast per tissue on
            the scan's detail, :mod:`brainfm.tasks.synthfit`; needs the refined segmentation).
        atlas_labels: the model's segmentation of the atlas template (FreeSurfer numbers), which
            ``reg_method "fit"`` needs.
        tables, warnings: filled by the post-processors.
    """

    raw: Dict[str, np.ndarray]
    heads: Dict[str, str]
    net_image: np.ndarray
    net_affine: np.ndarray
    norm_range: Tuple[float, float]
    out_affine: np.ndarray
    out_shape: Tuple[int, int, int]
    image_out: np.ndarray
    foreground_out: np.ndarray
    to_output: GridMap = _identity
    to_input: GridMap = _identity
    input_affine: Optional[np.ndarray] = None
    input_shape: Optional[Tuple[int, int, int]] = None
    foreground_in: Optional[np.ndarray] = None
    scheme: Any = None
    atlas: Optional[Volume] = None
    return_probabilities: bool = False
    mask_background: bool = True
    max_distance: float = 3.0
    output_exact: bool = False
    output_channels: Optional[Callable[..., np.ndarray]] = None
    output_points: Optional[Callable[..., np.ndarray]] = None
    head_out: Optional[np.ndarray] = None
    head_in: Optional[np.ndarray] = None
    fine_factor: int = 1
    fine_to_output: GridMap = _identity
    fine_to_input: GridMap = _identity
    meta: Dict[str, Any] = field(default_factory=dict)
    labels: Dict[str, Tuple[np.ndarray, int]] = field(default_factory=dict)
    decided: Any = None
    seg_method: str = "head"
    bias_method: str = "head"
    reg_method: str = "head"
    synth_method: str = "head"
    atlas_labels: Optional[Volume] = None
    tables: Dict[str, List[Dict[str, Any]]] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)
    _bg: Optional[Tuple[np.ndarray, np.ndarray]] = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def identity(cls, raw: Dict[str, np.ndarray], net_image: np.ndarray, affine: np.ndarray, **kw: Any) -> "TaskContext":
        """A context whose output grid is the network grid (intensities already normalised)."""
        heads = kw.pop("heads", {})
        shape = tuple(int(s) for s in net_image.shape[:3])
        return cls(
            raw=raw,
            heads=heads,
            net_image=net_image,
            net_affine=np.asarray(affine, float),
            norm_range=kw.pop("norm_range", (0.0, 1.0)),
            out_affine=np.asarray(affine, float),
            out_shape=shape,  # type: ignore[arg-type]
            image_out=kw.pop("image_out", net_image),
            foreground_out=kw.pop("foreground_out", net_image > 0),
            input_affine=np.asarray(affine, float),
            input_shape=shape,  # type: ignore[arg-type]
            output_exact=kw.pop("output_exact", True),
            **kw,
        )

    # -- helpers ----------------------------------------------------------------------------
    def head(self, name: str) -> np.ndarray:
        """Raw output of head ``name`` (``KeyError`` with the available names otherwise)."""
        if name not in self.raw:
            raise KeyError(f"raw output {name!r} not computed (have: {sorted(self.raw)})")
        return self.raw[name]

    def task_head(self, task: str) -> np.ndarray:
        """Raw output of the head serving ``task``."""
        return self.head(self.heads.get(task, task))

    def volume(self, data: np.ndarray, **meta: Any) -> Volume:
        """A Volume on the output grid."""
        return Volume(data, self.out_affine.copy(), {**self.meta, **meta})

    def channels_to_output(self, arr: np.ndarray, order: str = "linear", fill: float = 0.0, *,
                           dtype=np.float32) -> np.ndarray:
        """``(C, X, Y, Z)`` on the network grid -> a new ``(X', Y', Z', C)`` array on the output grid."""
        if self.output_channels is not None:
            return np.asarray(self.output_channels(arr, order, fill, dtype=dtype))
        out: Optional[np.ndarray] = None
        for c in range(arr.shape[0]):
            comp = np.asarray(self.to_output(np.ascontiguousarray(arr[c]), order, fill))
            if out is None:
                out = np.empty(comp.shape + (arr.shape[0],), dtype)
            out[..., c] = comp
        assert out is not None, "no channels"
        return out

    def channels_at_output(self, arr: np.ndarray, voxels: np.ndarray, order: str = "linear",
                           fill: float = 0.0, *, dtype=np.float32) -> np.ndarray:
        """``(C, X, Y, Z)`` on the network grid -> a new ``(N, C)`` array: the rows of
        :meth:`channels_to_output` at the output voxels ``voxels`` (``(N, 3)`` indices), computed
        only there when ``output_points`` is given."""
        vox = np.asarray(voxels)
        if self.output_points is not None:
            return np.asarray(self.output_points(arr, vox, order, fill, dtype=dtype))
        out = np.empty((vox.shape[0], arr.shape[0]), dtype)
        step = 6  # channels mapped together: never the whole (X', Y', Z', C) array
        for c in range(0, arr.shape[0], step):
            out[:, c:c + step] = self.channels_to_output(arr[c:c + step], order, fill, dtype=dtype)[
                vox[:, 0], vox[:, 1], vox[:, 2]]
        return out

    def shares_input(self, arr: np.ndarray) -> bool:
        """True when ``arr`` may share memory with an input of the context (raw outputs, images,
        masks), i.e. when it must be copied before being modified in place."""
        others = list(self.raw.values()) + [self.net_image, self.image_out, self.foreground_out]
        others += [idx for idx, _ in self.labels.values()]
        if self.foreground_in is not None:
            others.append(self.foreground_in)
        return any(np.may_share_memory(arr, o) for o in others if isinstance(o, np.ndarray))

    def private(self, arr: np.ndarray, dtype=None) -> np.ndarray:
        """``arr`` as a writeable array of ``dtype`` that no input of the context shares (copied
        only when needed)."""
        arr = np.asarray(arr)
        if dtype is not None and arr.dtype != np.dtype(dtype):
            return arr.astype(dtype)
        if not arr.flags.writeable or self.shares_input(arr):
            return arr.copy()
        return arr

    @property
    def background_out(self) -> np.ndarray:
        """``~foreground_out``, computed once (recomputed if ``foreground_out`` is replaced)."""
        if self._bg is None or self._bg[0] is not self.foreground_out:
            self._bg = (self.foreground_out, ~np.asarray(self.foreground_out, bool))
        return self._bg[1]

    def mask(self, data: np.ndarray, fill: float = 0.0, *, inplace: bool = False) -> np.ndarray:
        """``data`` with voxels outside the input foreground set to ``fill`` (if masking is on).

        ``inplace=True`` modifies ``data`` itself unless it shares memory with an input of the
        context (then a copy is masked); the default returns a new array.
        """
        if not self.mask_background:
            return data
        out = self.private(data) if inplace else np.array(data, copy=True)
        bg = self.background_out if out.ndim == 3 else self.background_out[..., None]
        np.copyto(out, np.asarray(fill, out.dtype), where=bg)
        return out

    def denormalise(self, arr: np.ndarray) -> np.ndarray:
        """Undo the min-max normalisation: ``arr * (hi - lo) + lo`` (input intensity units)."""
        lo, hi = self.norm_range
        out = np.multiply(arr, np.float32(hi - lo), dtype=np.float32)
        out += np.float32(lo)
        return out

    def world_axes(self) -> Tuple[Tuple[np.ndarray, np.ndarray, np.ndarray], ...]:
        """World RAS mm of the output grid without materialising it: for each world axis ``r`` three
        broadcastable float64 terms of shapes ``(X,1,1)``, ``(1,Y,1)``, ``(1,1,Z)`` whose sum is
        ``world_out()[..., r]``."""
        a = self.out_affine
        idx = [np.arange(n, dtype=np.float64) for n in self.out_shape]
        return tuple(
            ((a[r, 0] * idx[0] + a[r, 3])[:, None, None], (a[r, 1] * idx[1])[None, :, None],
             (a[r, 2] * idx[2])[None, None, :])
            for r in range(3)
        )

    def world_out(self) -> np.ndarray:
        """World RAS mm of every output voxel, ``(X, Y, Z, 3)`` float64."""
        out = np.empty(tuple(self.out_shape) + (3,), np.float64)
        for r, (pi, pj, pk) in enumerate(self.world_axes()):
            out[..., r] = pi + pj + pk
        return out
