"""Environment diagnostics for the "copy diagnostics" box: a dict and a formatted text.

Torch is probed in a child process by default (importing torch/CUDA into Slicer's own process
just to show a version would lock files and cost memory); versions come from package metadata.

>>> from BrainFMSceneLib.diagnostics import collect_diagnostics, format_diagnostics
>>> info = collect_diagnostics(torch_probe=lambda: {"torch": None})
>>> "Python" in format_diagnostics(info)
True
"""
from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from BrainFMSceneLib import __version__ as LIB_VERSION
from BrainFMSceneLib.install import installed_version

_PROBE = r"""
import json
out = {"torch": None}
try:
    import torch
    out["torch"] = torch.__version__
    out["cuda_build"] = torch.version.cuda
    out["cuda_available"] = bool(torch.cuda.is_available())
    out["gpus"] = []
    if out["cuda_available"]:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out["gpus"].append({"index": i, "name": p.name, "memory_gb": round(p.total_memory / 2**30, 2)})
    mps = getattr(torch.backends, "mps", None)
    out["mps_available"] = bool(mps is not None and mps.is_available())
except Exception as exc:
    out["torch_error"] = f"{type(exc).__name__}: {exc}"
print("BRAINFM_DIAG " + json.dumps(out))
"""


def probe_torch(python: Optional[str] = None, *, timeout: float = 120.0) -> Dict[str, Any]:
    """Torch version, CUDA build, availability and GPUs, measured in a child interpreter."""
    exe = python or shutil.which("PythonSlicer") or sys.executable
    try:
        proc = subprocess.run([exe, "-c", _PROBE], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"torch": None, "torch_error": f"probe failed: {exc}"}
    for line in proc.stdout.splitlines():
        if line.startswith("BRAINFM_DIAG "):
            return json.loads(line[len("BRAINFM_DIAG "):])
    return {"torch": None, "torch_error": (proc.stderr or proc.stdout)[-500:]}


def _free_gb(path: Path) -> Optional[float]:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return round(shutil.disk_usage(str(p)).free / 2**30, 1)
    except OSError:
        return None


def collect_diagnostics(*, registry: Any = None, model_choice: Any = None, python: Optional[str] = None,
                        torch_probe: Optional[Callable[[], Dict[str, Any]]] = None,
                        verify_model: bool = True) -> Dict[str, Any]:
    """Everything support needs to know, as a JSON-serialisable dict.

    :param registry: a :class:`BrainFMSceneLib.registry.ModelRegistry` (cache folder, model choices).
    :param model_choice: the selected :class:`~BrainFMSceneLib.registry.ModelChoice` (path + checksum).
    :param torch_probe: callable returning the torch part (default: :func:`probe_torch`).
    :param verify_model: compute the model file's SHA-256 (slow for large files).
    """
    info: Dict[str, Any] = {
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "brainfmlib": LIB_VERSION,
        "brainfm": installed_version("brainfm"),
        "numpy": installed_version("numpy"),
        "SimpleITK": installed_version("SimpleITK"),
    }
    info.update((torch_probe or (lambda: probe_torch(python)))())
    if registry is not None:
        cache = registry.cache_dir()
        info["cache_dir"] = str(cache)
        info["cache_free_gb"] = _free_gb(cache)
    if model_choice is not None:
        model: Dict[str, Any] = {"id": model_choice.id, "title": model_choice.title, "path": model_choice.path,
                                 "available": model_choice.available, "expected_sha256": model_choice.sha256}
        if not model_choice.available:
            model["status"] = model_choice.message or "not available"
        elif verify_model and model_choice.path:
            from BrainFMSceneLib.registry import sha256_file

            actual = sha256_file(model_choice.path)
            model["sha256"] = actual
            if model_choice.sha256:
                model["status"] = "checksum OK" if actual == model_choice.sha256.lower() else "CHECKSUM MISMATCH"
            else:
                model["status"] = "no reference checksum"
        info["model"] = model
    return info


def format_diagnostics(info: Dict[str, Any]) -> str:
    """Plain-text report (one ``key: value`` per line) for the diagnostics box / bug reports."""
    lines: List[str] = [
        f"Python: {info.get('python')} ({info.get('python_executable')})",
        f"Platform: {info.get('platform')}",
        f"BrainFM package: {info.get('brainfm') or 'not installed'} (Slicer library {info.get('brainfmlib')})",
        f"NumPy: {info.get('numpy') or 'not installed'}; SimpleITK: {info.get('SimpleITK') or 'not installed'}",
    ]
    if info.get("torch"):
        cuda = info.get("cuda_build") or "CPU-only build"
        lines.append(f"PyTorch: {info['torch']} (CUDA build: {cuda})")
        lines.append(f"CUDA available: {'yes' if info.get('cuda_available') else 'no'}"
                     + ("; MPS available" if info.get("mps_available") else ""))
        for gpu in info.get("gpus") or []:
            lines.append(f"GPU {gpu['index']}: {gpu['name']}, {gpu['memory_gb']} GB")
    else:
        lines.append("PyTorch: not installed" + (f" ({info['torch_error']})" if info.get("torch_error") else ""))
    if "cache_dir" in info:
        lines.append(f"Cache folder: {info['cache_dir']} (free: {info.get('cache_free_gb')} GB)")
    model = info.get("model")
    if model:
        lines.append(f"Model: {model.get('title')} [{model.get('id')}] {model.get('path') or ''}".rstrip())
        lines.append(f"Model status: {model.get('status', 'available')}"
                     + (f"; SHA-256 {model['sha256']}" if model.get("sha256") else ""))
    return "\n".join(lines)
