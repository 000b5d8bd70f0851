"""Device and precision selection, CPU capabilities, memory budgets and the forward memory model.

``select_device("auto")`` prefers CUDA, then Apple MPS, then the CPU. Asking for a device that this
torch build or machine does not have raises :class:`~brainfm.errors.ResourceError` with a message
that says what to use instead.

``precision="auto"`` (the default) resolves per device with :func:`resolve_precision`:

- CPU: **bf16** only on CPUs with native bfloat16 arithmetic (x86 ``avx512_bf16`` or ``amx_bf16``,
  see :func:`cpu_has_native_bf16`) and only for a model whose bf16 agreement with fp32 was measured
  (its quality entry :data:`BF16_QUALITY_KEY`); measured on an AMD EPYC with AVX512-BF16 (3x3x3 conv3d
  forward+backward, 16/32 channels at 64^3): fp32 + channels_last 47/62 GFLOP/s, bf16 +
  channels_last 64/84 GFLOP/s. Without native support bf16 is emulated and *slower* (measured on
  an Intel Xeon with AVX-512 but no BF16, compact model training step: fp32 + channels_last
  1.63 s, bf16 + channels_last 4.20 s), so ``auto`` keeps fp32 there. Everywhere else: fp32.
- CUDA: fp16 (half-precision tensor cores). MPS: fp32 (pass ``bf16``/``fp16`` explicitly).

The agreement of bf16 with fp32 is documented in DESIGN.md ("Precision"); ``fp32`` can always be
forced. On the CPU, compact-width networks run in the ``channels_last_3d`` memory format
(:func:`use_channels_last`): same numbers up to float rounding, 1.4-1.6x faster on AVX-512 CPUs.

>>> from brainfm.inference.device import select_device, autocast_dtype
>>> select_device("cpu").type
'cpu'
>>> autocast_dtype("fp32", select_device("cpu")) is None
True
>>> str(autocast_dtype("bf16", select_device("cpu")))
'torch.bfloat16'
>>> resolve_precision("auto", select_device("cpu")) in ("fp32", "bf16")
True
"""
from __future__ import annotations

import contextlib
import functools
import os
import platform
from typing import ContextManager, FrozenSet, Optional

import torch

from brainfm.errors import InputError, ResourceError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# Peak memory of a no-grad forward, bytes per input voxel, for the official-size model
# (6 levels, f_maps 64) in fp32. Measured with Testing/benchmarks/bench_inference.py on this
# implementation (CPU, 2 threads): peak RSS increase 0.48 GB at 64^3 (1845 B/voxel) and 0.83 GB at
# 96^3 (935 B/voxel), i.e. ~0.3 GB fixed + ~560 B/voxel marginal. The reference code needs ~3.0 KB.
# The budget model uses 1500 B/voxel: conservative for head-sized volumes (>= 1.5x the measured
# total at 96^3) and leaves room for GPU workspaces and allocator fragmentation.
_BYTES_PER_VOXEL_REF = 1500.0
_REF_F_MAPS = 64


def _cpuinfo_flags() -> FrozenSet[str]:
    try:
        with open("/proc/cpuinfo", "r", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_features() -> FrozenSet[str]:
    """CPU feature names relevant to the fast path: ``avx2``, ``avx512f``, ``avx512_vnni``,
    ``avx512_bf16``, ``amx_bf16`` (from torch's CPU probes, else ``/proc/cpuinfo`` flags).

    >>> isinstance(cpu_features(), frozenset)
    True
    """
    probes = {"avx2": "_is_avx2_supported", "avx512f": "_is_avx512_supported",
              "avx512_vnni": "_is_vnni_supported", "avx512_bf16": "_is_avx512_bf16_supported",
              "amx_bf16": "_is_amx_tile_supported"}
    found = set()
    cpu = getattr(torch, "cpu", None)
    known = False
    for name, fn in probes.items():
        probe = getattr(cpu, fn, None)
        if callable(probe):
            known = True
            try:
                if probe():
                    found.add(name)
            except Exception:  # noqa: BLE001 - a probe that fails means "not available"
                pass
    if not known:
        flags = _cpuinfo_flags()
        found |= {n for n in probes if n in flags}
        if "avx512f" in flags:
            found.add("avx512f")
    return frozenset(found)


def cpu_has_native_bf16() -> bool:
    """True on x86 CPUs that compute in bfloat16 natively (``avx512_bf16`` or AMX), where bf16
    autocast is faster than fp32; False elsewhere (emulated bf16 is slower than fp32)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    return bool({"avx512_bf16", "amx_bf16"} & cpu_features())


#: the ``quality`` entry of a model (:attr:`brainfm.models.ModelInfo.quality`) that declares its bf16
#: outputs measured to agree with fp32 within :data:`BF16_TOLERANCE`
BF16_QUALITY_KEY = "bf16_agrees_with_fp32"
#: agreement a model must show before ``auto`` uses bf16 for it: max relative error of every
#: continuous output and fraction of voxels whose label changes (bench_fastpath.py, forward section)
BF16_TOLERANCE = {"max_relative_error": 0.01, "labels_changed": 0.005}


def resolve_precision(precision: str, device: torch.device, *, bf16_validated: bool = False) -> str:
    """``auto`` -> ``fp16`` on CUDA GPUs; ``bf16`` on CPUs with native bf16 (:func:`cpu_has_native_bf16`) for a model whose
    bf16 agreement with fp32 was measured within :data:`BF16_TOLERANCE` (``bf16_validated``), else
    ``fp32``; other names are checked and returned lower-case.

    Why the model matters: with random weights (the architectures benchmarked before a trained
    model exists) bf16 moved continuous outputs by up to 15-31 % of their range at single voxels
    and changed 2.5-8 % of the labels, which is not a safe default.

    >>> resolve_precision("fp32", torch.device("cpu"))
    'fp32'
    """
    p = str(precision).strip().lower()
    if p not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if p != "auto":
        return p
    if device.type == "cuda":
        return "fp16"
    if device.type == "cpu" and bf16_validated and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


#: widest first level that runs channels_last on the CPU (measured, interleaved A/B, 2 threads,
#: no-grad forward with all heads: f_maps 16 on 80x102x93 1.50x faster; f_maps 64 on 96^3 0.94x)
CHANNELS_LAST_MAX_FMAPS = 32


def use_channels_last(device: torch.device, f_maps: Optional[int] = None) -> bool:
    """Whether the network runs in ``channels_last_3d`` on ``device``: on the CPU for networks up to
    :data:`CHANNELS_LAST_MAX_FMAPS` first-level channels (the compact model: inference 1.5x and
    training step 1.4-1.6x faster on an AVX-512 Xeon; oneDNN's convolutions prefer it at these
    widths), not for the official 64-channel width (no gain measured) and not on CUDA/MPS (cuDNN
    picks its own layouts).

    >>> use_channels_last(torch.device("cpu"), 16), use_channels_last(torch.device("cpu"), 64)
    (True, False)
    """
    if device.type != "cpu":
        return False
    return f_maps is None or int(f_maps) <= CHANNELS_LAST_MAX_FMAPS


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
    """The autocast dtype for ``precision`` on ``device`` (None for fp32; ``auto`` is resolved with
    :func:`resolve_precision`).

    fp16 is only allowed on CUDA (CPU fp16 convolutions are slow and inaccurate); bf16 on CPU and CUDA
    (and MPS when torch supports it).
    """
    p = resolve_precision(precision, device)
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


def resident_bytes() -> int:
    """Resident memory of this process now (bytes; 0 where ``/proc/self/statm`` does not exist).

    >>> resident_bytes() >= 0
    True
    """
    try:
        with open("/proc/self/statm", "r", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError, AttributeError):
        return 0


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


#: forward memory model (no-grad, lean path, fp32): fixed bytes per f_map and bytes per voxel per
#: f_map. Measured peak RSS increase (CPU, 2 threads): f_maps 16 / 5 levels 115 MB at 64^3, 212 MB
#: at 96^3, 417 MB at 128^3 (channels_last; 137/259/519 MB without); f_maps 64 / 6 levels 424-447 MB
#: at 64^3, 807 MB at 96^3, i.e. 10.6-13.4 (f16) and 9.0 (f64) bytes per voxel per f_map marginal.
_FIXED_BYTES = 64e6
_FIXED_BYTES_PER_FMAP = 4e6
_VOXEL_BYTES_PER_FMAP = 15.0


def forward_bytes(voxels: float, f_maps: int, *, autocast_dtype_: Optional[torch.dtype] = None,
                  channels_last: bool = False) -> float:
    """Expected peak bytes of one no-grad forward of ``voxels`` input voxels (activations and
    workspaces, not the head outputs nor the weights): fixed part + a per-voxel part, both
    proportional to ``f_maps`` (measured, see the constants above; ~1.1-1.6x margin).

    >>> round(forward_bytes(96**3, 16) / 1e6)
    340
    >>> forward_bytes(64**3, 64) > forward_bytes(64**3, 16)
    True
    """
    per_voxel = _VOXEL_BYTES_PER_FMAP * max(int(f_maps), 1)
    if autocast_dtype_ is not None:
        per_voxel *= 0.75  # activations halve, GroupNorm statistics and heads stay fp32
    return _FIXED_BYTES + _FIXED_BYTES_PER_FMAP * max(int(f_maps), 1) + per_voxel * float(voxels)


def set_threads(threads: Optional[int]) -> None:
    """Set torch's intra-op CPU threads (None leaves torch's default)."""
    if threads is None:
        return
    if int(threads) < 1:
        raise InputError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(int(threads))
