"""Device and precision selection, memory budgets and the per-voxel memory model.

``select_device("auto")`` prefers CUDA, then Apple MPS, then the CPU. Asking for a device that this
torch build or machine does not have raises :class:`~brainfm.errors.ResourceError` with a message
that says what to use instead.

>>> from brainfm.inference.device import select_device, autocast_dtype
>>> select_device("cpu").type
'cpu'
>>> autocast_dtype("fp32", select_device("cpu")) is None
True
>>> str(autocast_dtype("bf16", select_device("cpu")))
'torch.bfloat16'
"""
from __future__ import annotations

import contextlib
import os
from typing import ContextManager, Optional

import torch

from brainfm.errors import InputError, ResourceError

PRECISIONS = ("fp32", "bf16", "fp16")

# Peak memory of a no-grad forward, bytes per input voxel, for the official-size model
# (6 levels, f_maps 64) in fp32. Measured with Testing/benchmarks/bench_inference.py on this
# implementation (CPU, 2 threads): peak RSS increase 0.48 GB at 64^3 (1845 B/voxel) and 0.83 GB at
# 96^3 (935 B/voxel), i.e. ~0.3 GB fixed + ~560 B/voxel marginal. The reference code needs ~3.0 KB.
# The budget model uses 1500 B/voxel: conservative for head-sized volumes (>= 1.5x the measured
# total at 96^3) and leaves room for GPU workspaces and allocator fragmentation.
_BYTES_PER_VOXEL_REF = 1500.0
_REF_F_MAPS = 64


def _cuda_message(device: str) -> str:
    if torch.version.cuda is None:
        why = "this torch build is CPU-only (no CUDA support)"
    else:
        why = "no CUDA GPU is visible to torch (driver missing or CUDA_VISIBLE_DEVICES empty)"
    return f"device {device!r} was requested but {why}; use device='cpu' (--device cpu)"


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def select_device(device: str = "auto") -> torch.device:
    """Resolve a device name: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N``, ``mps``.

    >>> select_device("cpu")
    device(type='cpu')
    """
    if not isinstance(device, (str, torch.device)):
        raise InputError(f"device must be a string such as 'auto', 'cpu', 'cuda:0' or 'mps', got {device!r}")
    name = str(device).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(
            f"unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ResourceError(_cuda_message(name))
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ResourceError(
                f"device {name!r} was requested but only {count} CUDA device(s) exist "
                f"(cuda:0..cuda:{count - 1}); pick one of them or use device='cpu'"
            )
        return dev
    if dev.type == "mps":
        if not _mps_available():
            raise ResourceError(
                f"device {name!r} was requested but Apple MPS is not available on this machine; "
                "use device='cpu' (--device cpu)"
            )
        return dev
    raise InputError(f"unsupported device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for ``precision`` on ``device`` (None for fp32).

    fp16 is only allowed on CUDA (CPU fp16 convolutions are slow and inaccurate); bf16 on CPU and CUDA
    (and MPS when torch supports it).
    """
    p = str(precision).lower()
    if p not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if p == "fp32":
        return None
    if p == "fp16":
        if device.type != "cuda":
            raise InputError(
                f"precision 'fp16' needs a CUDA GPU (device is {device.type!r}); use 'bf16' or 'fp32' instead"
            )
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InputError("this GPU does not support bf16; use precision 'fp16' or 'fp32'")
    return torch.bfloat16


def autocast(device: torch.device, dtype: Optional[torch.dtype]) -> ContextManager:
    """``torch.autocast`` for the backbone, or a null context for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _meminfo_available_bytes() -> Optional[int]:
    try:
        with open("/proc/meminfo", "r", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_memory_bytes(device: torch.device) -> int:
    """Memory the forward may use now: free GPU memory on CUDA, available RAM otherwise."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    avail = _meminfo_available_bytes()
    if avail is None:
        try:
            avail = int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            avail = 8 * 1024**3  # unknown platform (macOS has no SC_AVPHYS_PAGES): assume 8 GiB
    return int(avail)


def default_budget_bytes(device: torch.device) -> int:
    """60 % of the available RAM (CPU/MPS) or of the free GPU memory (CUDA)."""
    return int(0.6 * available_memory_bytes(device))


def forward_bytes_per_voxel(f_maps: int, *, autocast_dtype_: Optional[torch.dtype] = None) -> float:
    """Conservative peak bytes per input voxel of a no-grad forward (activations only, no weights).

    Scales linearly with ``f_maps`` (every level's width is ``f_maps * 2**k``); halved activations
    under bf16/fp16 are credited only by 25 % because GroupNorm runs in fp32 under autocast.

    >>> round(forward_bytes_per_voxel(64))
    1500
    >>> forward_bytes_per_voxel(8) < forward_bytes_per_voxel(64)
    True
    """
    est = _BYTES_PER_VOXEL_REF * max(int(f_maps), 1) / _REF_F_MAPS
    if autocast_dtype_ is not None:
        est *= 0.75
    return max(est, 64.0)


def set_threads(threads: Optional[int]) -> None:
    """Set torch's intra-op CPU threads (None leaves torch's default)."""
    if threads is None:
        return
    if int(threads) < 1:
        raise InputError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(int(threads))
