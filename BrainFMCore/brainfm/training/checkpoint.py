"""Training checkpoints with exact resume, written atomically, without pickle.

A checkpoint is a folder ``<run>/checkpoints/step_<NNNNNNNN>/`` holding
``model-NN.safetensors`` (fp32 weights, sharded under ``max_file_mb``), ``ema-NN.safetensors`` (the moving
average of the weights, :mod:`brainfm.training.ema`, when the run keeps one), ``optim-NN.safetensors``
(AdamW moments and step counters; fp32 for exact resume or bf16 for half the size) and ``meta.json``
(step, config, architecture, optimizer param groups, scheduler state, RNG states of python/numpy/torch
CPU/CUDA and of the data generator, SHA-256 of every file). ``<run>/checkpoints/latest`` names the newest.
Nothing is unpickled on load, so a checkpoint from an untrusted source cannot run code.

>>> import torch, tempfile
>>> from brainfm.training.checkpoint import save_checkpoint, load_checkpoint, latest_checkpoint
>>> net = torch.nn.Linear(3, 2); opt = torch.optim.AdamW(net.parameters())
>>> d = tempfile.mkdtemp()
>>> p = save_checkpoint(d, model=net, optimizer=opt, step=7)
>>> latest_checkpoint(d) == p
True
>>> load_checkpoint(p, model=torch.nn.Linear(3, 2))["step"]
7
"""
from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from brainfm.errors import CheckpointError
from brainfm.io.atomic import atomic_folder, atomic_output
from brainfm.models.hashing import sha256_file

FORMAT = "brainfm-train-ckpt-1"
PathLike = Union[str, Path]


# --------------------------------------------------------------------------------------- RNG states
def capture_rng_state(generator: Optional[torch.Generator] = None) -> Dict[str, Any]:
    """JSON-serialisable RNG states of python, numpy (legacy global), torch CPU/CUDA and ``generator``."""
    py = random.getstate()
    npst = np.random.get_state()
    state: Dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [npst[0], npst[1].tolist(), int(npst[2]), int(npst[3]), float(npst[4])],
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }
    if generator is not None:
        state["generator"] = generator.get_state().tolist()
        state["generator_device"] = str(generator.device)
    return state


def restore_rng_state(state: Dict[str, Any], generator: Optional[torch.Generator] = None) -> None:
    """Inverse of :func:`capture_rng_state` (missing entries are left alone)."""
    if "python" in state:
        v, s, g = state["python"]
        random.setstate((v, tuple(s), g))
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    if "torch" in state:
        torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
    if generator is not None and "generator" in state:
        generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))


# --------------------------------------------------------------------------------------- helpers
_sha256 = sha256_file


def _write_shards(tensors: Dict[str, torch.Tensor], folder: Path, stem: str, max_bytes: int) -> List[str]:
    from safetensors.torch import save_file

    shards: List[Dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in tensors.items():
        nb = v.numel() * v.element_size()
        if shards[-1] and size + nb > max_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nb
    names = []
    for i, sh in enumerate(shards):
        name = f"{stem}-{i:02d}.safetensors"
        save_file(sh, str(folder / name), metadata={"format": FORMAT})
        names.append(name)
    return names


def _read_shards(folder: Path, names: List[str], device: Union[str, torch.device]) -> Dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    out: Dict[str, torch.Tensor] = {}
    for n in names:
        try:
            out.update(load_file(str(folder / n), device=str(device)))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"checkpoint file {folder / n} is unreadable or truncated: {e}") from None
    return out


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP / DataParallel wrappers."""
    return getattr(model, "module", model)


# --------------------------------------------------------------------------------------- save
def save_checkpoint(run_dir: PathLike, *, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                    scheduler: Any = None, step: int, config: Optional[Dict[str, Any]] = None,
                    architecture: Optional[Dict[str, Any]] = None, generator: Optional[torch.Generator] = None,
                    extra: Optional[Dict[str, Any]] = None, optim_dtype: str = "fp32",
                    max_file_mb: float = 16.0, keep_last: int = 2,
                    averaged: Optional[torch.nn.Module] = None) -> Path:
    """Write ``<run_dir>/checkpoints/step_<step>/`` atomically and point ``latest`` at it.

    ``averaged`` (an :class:`~torch.optim.swa_utils.AveragedModel`) is saved as the group ``ema``.
    Keeps the newest ``keep_last`` checkpoints (0 keeps all). Returns the checkpoint folder.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{int(step):08d}"
    with atomic_folder(final) as tmp:  # a complete checkpoint replaces an older one of that step, or none
        max_bytes = max(1, int(max_file_mb * 1024 * 1024) - 65536)  # leave room for headers
        net = unwrap(model)
        weights = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in net.state_dict().items()}
        files = {"model": _write_shards(weights, tmp, "model", max_bytes)}
        if averaged is not None:
            avg = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in averaged.state_dict().items()}
            files["ema"] = _write_shards(avg, tmp, "ema", max_bytes)
        meta: Dict[str, Any] = {
            "format": FORMAT, "step": int(step), "time": time.time(), "config": config or {},
            "architecture": architecture or {}, "param_names": list(weights),
            "rng": capture_rng_state(generator), "extra": extra or {}, "optim_dtype": optim_dtype,
        }
        if optimizer is not None:
            sd = optimizer.state_dict()
            odt = torch.bfloat16 if optim_dtype == "bf16" else None
            flat = {}
            for pid, st in sd["state"].items():
                for name, t in st.items():
                    if not torch.is_tensor(t):
                        t = torch.tensor(t)
                    t = t.detach().to("cpu", copy=True).contiguous()
                    if odt is not None and t.is_floating_point() and t.dim() > 0:
                        t = t.to(odt)
                    flat[f"{pid}.{name}"] = t
            files["optim"] = _write_shards(flat, tmp, "optim", max_bytes) if flat else []
            meta["optimizer"] = {"param_groups": sd["param_groups"], "class": type(optimizer).__name__}
        if scheduler is not None:
            meta["scheduler"] = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
        meta["files"] = {n: _sha256(tmp / n) for group in files.values() for n in group}
        meta["groups"] = files
        (tmp / "meta.json").write_text(json.dumps(meta))
    _write_latest(root, final.name)
    if keep_last > 0:
        for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _write_latest(root: Path, name: str) -> None:
    with atomic_output(root / "latest") as tmp:
        tmp.write_text(name + "\n")


def latest_checkpoint(run_dir: PathLike) -> Optional[Path]:
    """Newest complete checkpoint folder of a run (or a ``checkpoints`` folder), None if there is none."""
    d = Path(run_dir)
    root = d if (d / "latest").exists() or d.name == "checkpoints" else d / "checkpoints"
    if (root / "latest").is_file():
        cand = root / (root / "latest").read_text().strip()
        if (cand / "meta.json").is_file():
            return cand
    found = sorted(p for p in root.glob("step_*") if (p / "meta.json").is_file())
    return found[-1] if found else None


# --------------------------------------------------------------------------------------- load
def read_meta(path: PathLike) -> Dict[str, Any]:
    """``meta.json`` of a checkpoint folder, with a clear error when it is missing or corrupt."""
    p = Path(path)
    if not (p / "meta.json").is_file():
        raise CheckpointError(f"{p} is not a BrainFM training checkpoint (no meta.json)")
    try:
        meta = json.loads((p / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{p / 'meta.json'} is corrupt: {e}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{p} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def verify_files(path: PathLike, meta: Dict[str, Any]) -> None:
    """Raise :class:`CheckpointError` when a file listed in the checkpoint's ``meta`` is missing or
    fails its SHA-256."""
    p = Path(path)
    for name, digest in meta.get("files", {}).items():
        if not (p / name).is_file():
            raise CheckpointError(f"checkpoint {p} is incomplete: {name} is missing")
        if _sha256(p / name) != digest:
            raise CheckpointError(f"checkpoint file {p / name} is corrupt (SHA-256 mismatch)")


def load_checkpoint(path: PathLike, *, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                    scheduler: Any = None, generator: Optional[torch.Generator] = None,
                    architecture: Optional[Dict[str, Any]] = None, restore_rng: bool = True,
                    verify: bool = True, averaged: Optional[torch.nn.Module] = None,
                    use_average: bool = False) -> Dict[str, Any]:
    """Restore model (strict), optimizer, scheduler and RNG states; returns the checkpoint's meta.

    ``averaged`` (an :class:`~torch.optim.swa_utils.AveragedModel`) receives the checkpoint's moving
    average when it has one (it is left as it is otherwise). ``use_average`` loads that average into
    ``model`` instead of the last weights (for export and evaluation; the last weights when the
    checkpoint has no average).

    Raises :class:`CheckpointError` naming every mismatch when the checkpoint was written for another
    architecture (``architecture`` dict or tensor names/shapes) or a file fails its SHA-256 check.
    """
    p = Path(path)
    meta = read_meta(p)
    if verify:
        verify_files(p, meta)
    if architecture is not None and meta.get("architecture"):
        from brainfm.models.config import OPTIONAL_FIELDS

        # the optional parts (recorded only when set) also count when only the checkpoint has them
        optional = {k: None for k in OPTIONAL_FIELDS if k in meta["architecture"] and k not in architecture}
        diffs = [f"{k}: checkpoint {meta['architecture'].get(k)!r} vs model {v!r}"
                 for k, v in {**architecture, **optional}.items() if meta["architecture"].get(k) != v]
        if diffs:
            raise CheckpointError(f"checkpoint {p} was trained with another architecture: " + "; ".join(diffs)
                                  + " (to start a new model use another --out, or --resume none)")
    net = unwrap(model)
    dev = next(iter(net.state_dict().values())).device if net.state_dict() else "cpu"
    has_average = bool(meta["groups"].get("ema"))
    avg = _read_shards(p, meta["groups"]["ema"], "cpu") if has_average and (use_average or averaged is not None) else {}
    if use_average and has_average:
        from brainfm.training.ema import averaged_weights

        weights = averaged_weights(avg)
    else:
        weights = _read_shards(p, meta["groups"]["model"], "cpu")
    own = net.state_dict()
    problems = [f"missing {k}" for k in own if k not in weights]
    problems += [f"unexpected {k}" for k in weights if k not in own]
    problems += [f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(v.shape)}"
                 for k, v in own.items() if k in weights and weights[k].shape != v.shape]
    if problems:
        more = f" (+{len(problems) - 12} more)" if len(problems) > 12 else ""
        raise CheckpointError(f"checkpoint {p} does not match the model architecture: "
                              + "; ".join(problems[:12]) + more)
    net.load_state_dict({k: v.to(dev) for k, v in weights.items()}, strict=True)
    if averaged is not None and has_average:
        adev = next(iter(averaged.state_dict().values())).device
        try:
            averaged.load_state_dict({k: v.to(adev) for k, v in avg.items()}, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"the weight average in {p} does not match the model: {e}") from None
    if optimizer is not None and "optimizer" in meta:
        state, groups = read_optimizer_state(p, meta)
        own_groups = optimizer.state_dict()["param_groups"]
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in own_groups]:
            raise CheckpointError(f"optimizer state in {p} covers another set of parameters "
                                  "(different trainable layers or architecture)")
        optimizer.load_state_dict({"state": state, "param_groups": groups})  # casts to the param dtype/device
        for st in optimizer.state.values():  # keep the 'step' counters on CPU as torch does by default
            for name, t in list(st.items()):
                if name == "step" and torch.is_tensor(t):
                    st[name] = t.to("cpu", torch.float32)
    if scheduler is not None:
        restore_scheduler(scheduler, meta)
    if restore_rng and meta.get("rng"):
        restore_rng_state(meta["rng"], generator)
    return meta


def read_optimizer_state(path: PathLike, meta: Dict[str, Any]
                         ) -> Tuple[Dict[int, Dict[str, torch.Tensor]], List[Dict[str, Any]]]:
    """The optimizer's per-parameter state ``{index: {name: tensor}}`` and its param groups (betas as
    tuples), as saved in the checkpoint folder ``path`` (empty state when it saved none)."""
    flat = _read_shards(Path(path), meta["groups"].get("optim", []), "cpu")
    state: Dict[int, Dict[str, torch.Tensor]] = {}
    for key, t in flat.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = t
    groups = [dict(g) for g in meta["optimizer"]["param_groups"]]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return state, groups


def restore_scheduler(scheduler: Any, meta: Dict[str, Any]) -> None:
    """Load the checkpoint's scheduler state (its ``lr_lambdas`` come from the live scheduler)."""
    if "scheduler" in meta:
        sd = dict(meta["scheduler"])
        sd["lr_lambdas"] = [None] * len(getattr(scheduler, "lr_lambdas", [None]))
        scheduler.load_state_dict(sd)
