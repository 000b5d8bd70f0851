"""Running the network once for all requested heads: whole volume or tiled, with OOM fallback.

The backbone runs under autocast when a reduced precision is chosen; the 1x1x1 heads are always
applied in fp32 to the (cast back) final feature. Only the requested head outputs, plus the
feature when ``want_feat``, are kept; everything else is freed as soon as possible. On the CPU the
tiles run in the ``channels_last_3d`` memory format when asked (the model must have been converted
with ``net.to(memory_format=torch.channels_last_3d)``).

Tiles are blended by :class:`~brainfm.inference.tiling.TileAccumulator` band by band; ``reduce``
stores an output compactly as soon as its rows are final (``"argmax"``: the segmentation label
decision, 1 byte per voxel; ``"float16"``: features). Segmentation is blended as **logits**.

With ``test_time_flip`` every tile also runs mirrored left-right (axis 0 of the RAS network frame) and
each head output is averaged with the mirrored-back output (:func:`brainfm.models.mirror.mirror_output`;
segmentation channels swapped with ``lr_partner``); the feature is the one of the unmirrored input.

>>> import numpy as np, torch
>>> from brainfm.inference.forward import run_network
>>> class Toy(torch.nn.Module):
...     def forward(self, x, *, heads=None):
...         return {"feat": x.repeat(1, 2, 1, 1, 1), "T1": 2 * x}
>>> out = run_network(Toy(), np.ones((8, 8, 8), np.float32), heads=["T1"], want_feat=False,
...                   device=torch.device("cpu"))
>>> float(out["T1"].max())
2.0
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import torch

from brainfm.errors import ResourceError
from brainfm.inference.device import autocast
from brainfm.inference.tiling import MIN_TILE, TileAccumulator, plan_tiles
from brainfm.models.heads import head_float
from brainfm.models.mirror import can_mirror, mirror_output
from brainfm.progress import CancelToken, ProgressCallback, ensure_callback

#: advice used when the caller gives none (true on every device)
OOM_HINT = ("free memory (close other programs), request fewer tasks (--tasks) or force smaller tiles "
            "(--tile-size, tile_size=)")


def is_oom(exc: BaseException) -> bool:
    """True for CUDA/MPS/CPU out-of-memory errors raised by torch."""
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    if isinstance(exc, (RuntimeError, MemoryError)):
        msg = str(exc).lower()
        return isinstance(exc, MemoryError) or "out of memory" in msg or "can't allocate memory" in msg
    return False


def _head_conv(net: torch.nn.Module, name: str) -> torch.nn.Module:
    head = getattr(net, "head", None)
    conv = getattr(head, f"final_conv_{name}", None) if head is not None else None
    if conv is None:
        raise KeyError(f"the model has no head {name!r}")
    return conv


def forward_tile(
    net: torch.nn.Module,
    x: torch.Tensor,
    heads: Sequence[str],
    want_feat: bool,
    amp_dtype: Optional[torch.dtype] = None,
    channels_last: bool = False,
    test_time_flip: bool = False,
    lr_partner: Sequence[int] = (),
) -> Dict[str, torch.Tensor]:
    """One forward of ``x`` (1, 1, X, Y, Z): requested raw head outputs (+ ``feat``), fp32
    (channels-last strides when ``channels_last``); with ``test_time_flip``, each head averaged with
    its output for the mirrored input (see the module docstring)."""
    res = _forward_once(net, x, heads, want_feat, amp_dtype, channels_last)
    if not test_time_flip:
        return res
    both = [h for h in heads if can_mirror(h, int(res[h].shape[1]), lr_partner=lr_partner)]
    if not both:
        return res
    mirrored = _forward_once(net, x.flip(2), both, False, amp_dtype, channels_last)
    with torch.inference_mode():
        for h in both:
            back = mirror_output(h, mirrored.pop(h), lr_partner=lr_partner)
            res[h] = res[h].add_(back).mul_(0.5)
            del back
    return res


def _forward_once(
    net: torch.nn.Module,
    x: torch.Tensor,
    heads: Sequence[str],
    want_feat: bool,
    amp_dtype: Optional[torch.dtype],
    channels_last: bool,
) -> Dict[str, torch.Tensor]:
    heads = list(heads)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        if amp_dtype is None:
            out = net(x, heads=heads)
            res = {h: out[h].float() for h in heads}
            if want_feat:
                res["feat"] = out["feat"].float()
            del out
            return res
        with autocast(x.device, amp_dtype):
            out = net(x, heads=[])
        feat = out["feat"].float()
        del out
        res = {}
        image_input = getattr(net.head, "image_input", None)  # TaskHeads; other networks' heads read the feature
        for h in heads:
            conv = _head_conv(net, h)
            res[h] = head_float(conv, feat, image=image_input(h, x) if image_input is not None else None)
        if want_feat:
            res["feat"] = feat
        return res


def run_network(
    net: torch.nn.Module,
    image: np.ndarray,
    *,
    heads: Sequence[str],
    want_feat: bool,
    device: torch.device,
    amp_dtype: Optional[torch.dtype] = None,
    tile_size: Optional[int] = None,
    tile_overlap: float = 0.25,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    reduce: Optional[Dict[str, str]] = None,
    channels_last: bool = False,
    test_time_flip: bool = False,
    lr_partner: Sequence[int] = (),
) -> Dict[str, np.ndarray]:
    """Raw outputs ``name -> (C, X, Y, Z)`` float32 for the normalised network-frame ``image``.

    ``tile_size=None`` runs the whole volume at once; otherwise cubic tiles of that edge with
    ``tile_overlap`` and cosine blending. ``reduce`` (name -> ``"argmax"`` / ``"float16"``) stores
    outputs compactly (see :class:`~brainfm.inference.tiling.TileAccumulator`; an ``argmax`` output
    is ``(X, Y, Z)`` channel indices). ``cancel`` is checked between tiles. ``test_time_flip``:
    average every head with its output for the left-right mirrored input (``lr_partner``: the
    segmentation head's partner channels, :attr:`brainfm.labels.LabelScheme.lr_partner`).
    """
    cb = ensure_callback(progress)
    shape = tuple(int(s) for s in image.shape[:3])
    tiles = [tuple(slice(0, n) for n in shape)] if tile_size is None else plan_tiles(shape, tile_size, tile_overlap)
    acc = TileAccumulator(shape, tiles, reduce=reduce)
    src = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    n = len(tiles)
    for i, sl in enumerate(tiles):
        if cancel is not None:
            cancel.raise_if_cancelled()
        cb(i / n, f"network forward, tile {i + 1}/{n}" if n > 1 else "network forward")
        x = src[sl][None, None].contiguous().to(device)
        out = forward_tile(net, x, heads, want_feat, amp_dtype, channels_last, test_time_flip, lr_partner)
        del x
        acc.add(sl, out)  # type: ignore[arg-type]
        del out
    if cancel is not None:
        cancel.raise_if_cancelled()
    cb(1.0, "network forward done")
    return acc.result()


def run_with_fallback(
    net: torch.nn.Module,
    image: np.ndarray,
    *,
    tile_size: Optional[int],
    fallback_tile_size: int,
    advice: Optional[str] = None,
    **kw,
) -> "tuple[Dict[str, np.ndarray], Optional[int]]":
    """:func:`run_network`, retried once with smaller tiles after an out-of-memory error.

    The retry uses ``fallback_tile_size`` (whole volume first) or half the tile edge (tiled first,
    never below 16). Returns ``(outputs, tile size actually used or None for whole volume)``; a
    second OOM raises :class:`ResourceError` ending with ``advice`` (what the caller can change;
    default :data:`OOM_HINT`).
    """
    device: torch.device = kw["device"]
    try:
        return run_network(net, image, tile_size=tile_size, **kw), tile_size
    except Exception as exc:  # noqa: BLE001 - filtered by is_oom
        if not is_oom(exc):
            raise
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    _empty_cache(device)
    retry = fallback_tile_size if tile_size is None else max(MIN_TILE, (tile_size // 2 // 16) * 16 or MIN_TILE)
    try:
        return run_network(net, image, tile_size=retry, **kw), retry
    except Exception as exc:  # noqa: BLE001
        if not is_oom(exc):
            raise
        _empty_cache(device)
        raise ResourceError(
            f"out of memory on {device} even with {retry}^3 tiles ({first}); {advice or OOM_HINT}"
        ) from None


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        try:
            torch.mps.empty_cache()
        except Exception:  # pragma: no cover - best effort
            pass

