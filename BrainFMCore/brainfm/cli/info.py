"""``brainfm info``: versions, devices, threads, model and atlas status (``--json`` for tools).

The model is never loaded: the weights file is located, its size and SHA-256 reported and
compared with the registry, the model store or the native sidecar (or ``--sha256``) when an
expected value is known; format, heads, label scheme, voxel size and quality come from the
model store or the native sidecar.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from typing import Any, Dict, Optional

from brainfm._version import __version__

HELP = "show versions, devices, model and atlas status"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("info", help=HELP, description=HELP)
    p.add_argument("--model", default="default",
                   help="model to check: default (the best available), a stored model name, a registry id or a path")
    p.add_argument("--sha256", default=None, help="expected SHA-256 of the weights")
    p.add_argument("--atlas", default=None, help="atlas to check (path or id; default: BRAINFM_ATLAS or cache)")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def _torch_info() -> Dict[str, Any]:
    try:
        import torch
    except ImportError as e:  # pragma: no cover - torch is a dependency
        return {"installed": False, "error": str(e)}
    cuda = torch.cuda.is_available()
    gpus = []
    if cuda:
        for i in range(torch.cuda.device_count()):
            prop = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": prop.name, "memory_gb": round(prop.total_memory / 1e9, 2)})
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return {"installed": True, "version": torch.__version__, "cuda_available": cuda,
            "cuda_version": torch.version.cuda, "gpus": gpus, "mps_available": mps,
            "threads": torch.get_num_threads()}


def _model_info(spec: str, expected: Optional[str]) -> Dict[str, Any]:
    from brainfm.errors import BrainFMError
    from brainfm.models import registry, selection
    from brainfm.models.hashing import cached_sha256

    out: Dict[str, Any] = {"spec": spec}
    try:
        path = registry.resolve_model(spec)
    except BrainFMError as e:
        out.update(available=False, message=str(e))
        return out
    out.update(available=True, path=str(path))
    files = [path]
    if path.suffix == ".safetensors":
        sidecar = path.with_suffix(".json")
        if sidecar.is_file():
            files.append(sidecar)
    out["size_bytes"] = sum(f.stat().st_size for f in files if f.is_file())
    known = selection.describe_file(path) or {}
    for key in ("name", "format", "heads", "tasks", "label_scheme", "voxel_mm", "quality", "quality_text"):
        if known.get(key) is not None:
            out[key] = known[key]
    if path.is_file():
        digest = cached_sha256(path)
        out["sha256"] = digest
        if expected is None:
            entry = registry.entry_for_file(path)  # the registered file itself, not a namesake elsewhere
            expected = (entry or {}).get("sha256") or known.get("sha256")
        if expected:
            out["verification"] = "verified" if digest.lower() == expected.lower() else "MISMATCH"
            out["expected_sha256"] = expected
        else:
            out["verification"] = "no expected checksum known"
    return out


def _atlas_info(spec: Optional[str]) -> Dict[str, Any]:
    """Atlas status without downloading anything."""
    from brainfm.models import registry

    env = os.environ.get("BRAINFM_ATLAS")
    candidate = spec or env
    if candidate and os.path.isfile(candidate):
        return {"available": True, "path": candidate, "source": "--atlas" if spec else "BRAINFM_ATLAS"}
    try:
        entry = registry.get_entry(registry.DEFAULT_ATLAS_ID)
    except Exception as e:  # noqa: BLE001 - reporting only
        return {"available": False, "message": str(e)}
    cached = registry.cache_dir() / "atlases" / entry["filename"]
    if cached.is_file():
        return {"available": True, "path": str(cached), "source": "cache"}
    from brainfm.models.templates import ICBM_TEMPLATE_NAME, icbm_template_path

    failed = registry.last_download_failure(cached)
    message = (f"not downloaded yet; it is fetched from {entry.get('url')} on first use of the reg task, or set "
               "BRAINFM_ATLAS / pass --atlas" + (f" (the last download failed: {failed})" if failed else ""))
    if icbm_template_path() is not None:
        message += f"; until then a fitted registration uses the {ICBM_TEMPLATE_NAME}"
    return {"available": False, "message": message}


def collect(args: argparse.Namespace) -> Dict[str, Any]:
    """Everything ``brainfm info`` reports, as a dict.

    >>> args = add_parser(argparse.ArgumentParser().add_subparsers()).parse_args(["--model", "no_such_model.pth"])
    >>> info = collect(args)
    >>> info["brainfm"] == __version__, info["model"]["available"], "cuda_available" in info["torch"]
    (True, False, True)
    """
    from brainfm.models import registry

    return {
        "brainfm": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "cpu_count": os.cpu_count(),
        "torch": _torch_info(),
        "model": _model_info(args.model, args.sha256),
        "atlas": _atlas_info(args.atlas),
        "cache_dir": str(registry.cache_dir()),
    }


def _text(info: Dict[str, Any]) -> str:
    t, m, a = info["torch"], info["model"], info["atlas"]
    lines = [
        f"brainfm      {info['brainfm']}",
        f"python       {info['python']} ({info['platform']})",
        f"torch        {t.get('version')}  threads {t.get('threads')}  CPUs {info['cpu_count']}",
        f"CUDA         {'available, CUDA ' + str(t.get('cuda_version')) if t.get('cuda_available') else 'not available'}",
    ]
    lines += [f"  GPU {g['index']}      {g['name']} ({g['memory_gb']} GB)" for g in t.get("gpus", [])]
    lines.append(f"MPS          {'available' if t.get('mps_available') else 'not available'}")
    if m.get("available"):
        name = f"{m['name']}: " if m.get("name") else ""
        lines.append(f"model        {name}{m['path']} ({m['size_bytes'] / 1e6:.1f} MB)")
        if m.get("format"):
            tasks = ",".join(t for t in m.get("tasks") or [] if t != "feat") or "features only"
            lines.append(f"  format     {m['format']}, {len(m.get('heads') or {})} heads (tasks {tasks}), labels "
                         f"{m.get('label_scheme') or '-'}, voxel {float(m.get('voxel_mm') or 1.0):g} mm")
            lines.append(f"  quality    {m.get('quality_text') or 'unmeasured'}")
        if "sha256" in m:
            lines.append(f"  SHA-256    {m['sha256']} ({m['verification']})")
    else:
        lines.append(f"model        {m['spec']}: not available: {m['message']}")
    lines.append(f"atlas        {a['path'] + ' (' + a['source'] + ')' if a.get('available') else a.get('message')}")
    lines.append(f"cache        {info['cache_dir']}")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    info = collect(args)
    sys.stdout.write(json.dumps(info, indent=2) + "\n" if args.json else _text(info))
    return 0
