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
            ``input != 0``).
        to_output: maps a network-grid array ``(X, Y, Z)`` to the output grid.
        to_input: maps a network-grid array to the INPUT grid (tables are always on the input grid).
        input_affine, input_shape: the input grid; foreground_in: the foreground mask on it.
        scheme: label scheme of the segmentation head (``brainfm.labels.LabelScheme``) or None.
        atlas: atlas template Volume or None.
        return_probabilities, mask_background: options of ``predict``.
        max_distance: distance clamp (mm), 3.0 like the reference.
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
    meta: Dict[str, Any] = field(default_factory=dict)
    tables: Dict[str, List[Dict[str, Any]]] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)

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

    def channels_to_output(self, arr: np.ndarray, order: str = "linear", fill: float = 0.0) -> np.ndarray:
        """``(C, X, Y, Z)`` on the network grid -> ``(X', Y', Z', C)`` float32 on the output grid."""
        comps = [np.asarray(self.to_output(np.ascontiguousarray(c), order, fill), np.float32) for c in arr]
        return np.stack(comps, axis=-1)

    def mask(self, data: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """``data`` with voxels outside the input foreground set to ``fill`` (if masking is on)."""
        if not self.mask_background:
            return data
        fg = self.foreground_out if data.ndim == 3 else self.foreground_out[..., None]
        return np.where(fg, data, np.asarray(fill, data.dtype)).astype(data.dtype, copy=False)

    def denormalise(self, arr: np.ndarray) -> np.ndarray:
        """Undo the min-max normalisation: ``arr * (hi - lo) + lo`` (input intensity units)."""
        lo, hi = self.norm_range
        return (arr * (hi - lo) + lo).astype(np.float32)

    def world_out(self) -> np.ndarray:
        """World RAS mm of every output voxel, ``(X, Y, Z, 3)`` float64."""
        idx = np.indices(self.out_shape, dtype=np.float64)
        a = self.out_affine
        return np.einsum("ij,jxyz->xyzi", a[:3, :3], idx) + a[:3, 3]
