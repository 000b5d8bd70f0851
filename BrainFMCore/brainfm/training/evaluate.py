"""Validation metrics (Dice, PSNR, L1) of a network on generator batches of held-out subjects
(Dice and PSNR: the numpy implementations of :mod:`brainfm.metrics`, on the tensors' values).

>>> import torch
>>> from brainfm.training.evaluate import dice_scores, psnr
>>> t = torch.zeros(6, 6, 6, dtype=torch.long); t[:3] = 1
>>> dice_scores(t, t, n_classes=2)
{1: 1.0}
>>> round(psnr(torch.zeros(4), torch.full((4,), 0.1)), 1)
20.0
"""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Mapping, Optional

import numpy as np
import torch

from brainfm.metrics import dice_per_label, psnr_masked
from brainfm.training.objectives import IMAGE_HEADS, target_of


def dice_scores(pred: torch.Tensor, target: torch.Tensor, *, n_classes: int,
                ignore_background: bool = True) -> Dict[int, float]:
    """Hard Dice per class present in ``target`` (class maps of equal shape), not rounded:
    :func:`brainfm.metrics.dice_per_label` over the classes ``1 .. n_classes - 1`` (``0 ..`` with
    ``ignore_background=False``) that ``target`` holds."""
    p, t = _numpy(pred), _numpy(target)
    first = 1 if ignore_background else 0
    present = [int(c) for c in np.unique(t) if first <= c < n_classes]
    return dice_per_label(p, t, labels=present, ndigits=None)


def psnr(pred: torch.Tensor, target: torch.Tensor, *, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over all voxels (``inf`` for identical inputs), not rounded:
    :func:`brainfm.metrics.psnr_masked`."""
    return psnr_masked(_numpy(pred.float()), _numpy(target.float()), data_range=data_range, ndigits=None)


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


def class_map_to(target_scheme: str, n_channels: int, *,
                 source_scheme: Optional[str] = None) -> Optional[torch.Tensor]:
    """Channel -> class index of ``target_scheme`` for a segmentation head of ``n_channels`` whose
    scheme differs (matched by FreeSurfer number; unmatched channels -> 0). None when they agree.
    ``source_scheme`` names the head's scheme (e.g. ``brainid33``, same size as ``fs33`` but another
    channel order); without it the scheme is guessed from the channel count.

    >>> m = class_map_to("fs33", 56)
    >>> int(m.shape[0]), int(m[0])
    (56, 0)
    >>> class_map_to("fs33", 33) is None
    True
    >>> int(class_map_to("fs33", 33, source_scheme="brainid33")[1])  # Brain-ID channel 1 is label 14
    11
    """
    from brainfm.labels import decide_scheme, get_scheme

    tgt = get_scheme(target_scheme)
    src = decide_scheme(source_scheme or None, n_channels=n_channels)
    if src.n_channels != n_channels:
        raise ValueError(f"label scheme {src.name} has {src.n_channels} classes, the head {n_channels}")
    if list(src.fs_values) == list(tgt.fs_values):
        return None
    index = {v: i for i, v in enumerate(tgt.fs_values)}
    return torch.tensor([index.get(v, 0) for v in src.fs_values], dtype=torch.long)


@torch.no_grad()
def evaluate_batches(model: torch.nn.Module, batches: Iterable[Any], *,
                     autocast_dtype: Optional[torch.dtype] = None,
                     class_map: Optional[torch.Tensor] = None) -> Dict[str, float]:
    """Mean metrics over ``batches``: ``dice`` (mean over classes, excl. background), ``psnr_<T1..>``,
    ``l1_distance``, ``l1_registration``, ``l1_bias_field_log``, plus ``n_batches``.

    ``class_map`` maps head channels to target classes when the head uses another label scheme
    (e.g. the official 56-class model evaluated on fs33 targets, see :func:`class_map_to`)."""
    was_training = model.training
    model.eval()
    acc: Dict[str, List[float]] = {}
    try:
        for batch in batches:
            x = batch.inputs
            with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                out = model(x)
            n = int(x.shape[0])
            seg_t = target_of(batch, "segmentation", n)
            if "segmentation" in out and seg_t is not None:
                pred = out["segmentation"].float().argmax(1)
                n_classes = out["segmentation"].shape[1]
                if class_map is not None:
                    pred = class_map.to(pred.device)[pred]
                    n_classes = int(class_map.max()) + 1
                for i in range(n):
                    d = dice_scores(pred[i], seg_t[i, 0].long(), n_classes=max(n_classes, int(seg_t.max()) + 1))
                    if d:
                        acc.setdefault("dice", []).append(sum(d.values()) / len(d))
            for name in IMAGE_HEADS + ("image",):
                tgt = target_of(batch, name if name != "image" else "T1", n)
                if name in out and tgt is not None and tgt.shape[1:] == out[name].shape[1:]:
                    rng = 1.0 if name != "CT" else float(tgt.max() - tgt.min()) or 1.0
                    for i in range(n):
                        acc.setdefault(f"psnr_{name}", []).append(
                            psnr(out[name][i].clamp(0, 1) if name != "CT" else out[name][i], tgt[i],
                                 data_range=rng))
            for name in ("distance", "registration", "bias_field_log"):
                tgt = target_of(batch, name, n)
                if name in out and tgt is not None and tgt.shape == out[name].shape:
                    acc.setdefault(f"l1_{name}", []).append(float((out[name].float() - tgt.float()).abs().mean()))
            acc.setdefault("n_batches", []).append(1.0)
    finally:
        model.train(was_training)
    res = {k: (sum(v) / len(v) if k != "n_batches" else float(len(v))) for k, v in acc.items()}
    return {k: v for k, v in res.items() if math.isfinite(v) or k.startswith("psnr")}


def summarize(metrics: Mapping[str, float]) -> str:
    """One-line human summary, e.g. ``dice 0.812, psnr_T1 24.1 dB``."""
    parts = []
    for k, v in metrics.items():
        if k == "n_batches":
            continue
        parts.append(f"{k} {v:.3f}" + (" dB" if k.startswith("psnr") else ""))
    return ", ".join(parts) or "no metrics"
