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

from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from brainfm.tasks.context import TaskContext
from brainfm.volume import Volume


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 0 (channels), float32."""
    return torch.softmax(torch.from_numpy(np.asarray(logits, np.float32)), dim=0).numpy()


def labels_from_logits(logits: np.ndarray, fs_values: Sequence[int]) -> np.ndarray:
    """Arg-max channel mapped to label numbers (int32); ties go to the lowest channel."""
    lut = np.asarray(list(fs_values), np.int32)
    if lut.shape[0] != logits.shape[0]:
        raise ValueError(f"label scheme has {lut.shape[0]} classes but the head has {logits.shape[0]} channels")
    idx = torch.argmax(torch.from_numpy(np.ascontiguousarray(logits, np.float32)), dim=0).numpy()
    return lut[idx]


def _scheme_values(ctx: TaskContext, n_channels: int):
    scheme = ctx.scheme
    if scheme is None:
        try:
            from brainfm.labels import scheme_for_channels

            scheme = scheme_for_channels(n_channels)
        except Exception as exc:  # noqa: BLE001 - labels layer missing or unknown channel count
            ctx.warnings.append(
                f"no label scheme for a {n_channels}-class segmentation head ({exc}); "
                "writing channel indices as labels"
            )
            return None, list(range(n_channels))
    return scheme, list(getattr(scheme, "fs_values"))


def _volume_table(labels: Volume, scheme: Any) -> List[Dict[str, Any]]:
    try:
        from brainfm.labels import structure_volumes
    except ImportError:  # pragma: no cover - labels layer always present in the package
        structure_volumes = None
    if structure_volumes is not None:
        return list(structure_volumes(labels, scheme=scheme))
    voxel_mm3 = float(abs(np.linalg.det(labels.affine[:3, :3])))
    values, counts = np.unique(labels.data, return_counts=True)
    return [
        {"value": int(v), "name": str(v), "voxels": int(c), "volume_mm3": float(c) * voxel_mm3}
        for v, c in zip(values, counts)
        if v != 0
    ]


def run_seg(ctx: TaskContext) -> Dict[str, Volume]:
    """``seg`` (int32 FreeSurfer numbers), optional ``seg_probabilities``; fills ``tables["seg_volumes"]``."""
    logits = ctx.task_head("seg")
    scheme, fs_values = _scheme_values(ctx, logits.shape[0])
    labels_net = labels_from_logits(logits, fs_values)
    seg = np.rint(np.asarray(ctx.to_output(labels_net, "nearest", 0), np.float64)).astype(np.int32)
    seg = ctx.mask(seg, 0)
    meta = dict(task="seg", kind="label", units="FreeSurfer label number",
                label_scheme=getattr(scheme, "name", None))
    out = {"seg": ctx.volume(seg, **meta)}
    seg_in = _on_input_grid(ctx, labels_net, seg)
    ctx.tables["seg_volumes"] = _volume_table(seg_in, scheme)
    if ctx.return_probabilities:
        probs = softmax(logits)
        data = ctx.channels_to_output(probs, "linear", 0.0)
        out["seg_probabilities"] = ctx.volume(
            data, task="seg", kind="probabilities", units="probability",
            channel_labels=[int(v) for v in fs_values],
        )
    return out


def _on_input_grid(ctx: TaskContext, labels_net: np.ndarray, seg_out: np.ndarray) -> Volume:
    """The segmentation on the input grid (reuses the output when the output grid is the input grid)."""
    in_aff = ctx.input_affine if ctx.input_affine is not None else ctx.out_affine
    in_shape: Optional[tuple] = ctx.input_shape
    if in_shape is None or (tuple(in_shape) == tuple(seg_out.shape) and np.allclose(in_aff, ctx.out_affine)):
        return Volume(seg_out, ctx.out_affine.copy())
    seg_in = np.rint(np.asarray(ctx.to_input(labels_net, "nearest", 0), np.float64)).astype(np.int32)
    if ctx.mask_background and ctx.foreground_in is not None:
        seg_in = np.where(ctx.foreground_in, seg_in, 0).astype(np.int32)
    return Volume(seg_in, np.asarray(in_aff, float).copy())
