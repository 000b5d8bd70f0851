"""Dice / PSNR / L1 of a model on held-out prepared subjects (``brainfm evaluate``).

The inputs are synthetic images drawn by the generator with fixed seeds from each subject's label
map, so the numbers are comparable between models and runs. :func:`load_for_evaluation` accepts a
model file, a model-store name, a registry id, or a training run / checkpoint folder;
:func:`evaluate_heldout` returns the report (mean and per-subject metrics) and
:func:`write_report` saves it as JSON.

>>> default_window(1.0), default_window(2.0)   # 128 mm worth of voxels, a multiple of 16
(128, 64)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import torch

PathLike = Union[str, Path]


def default_window(voxel_mm: float) -> int:
    """Window size in voxels of the model's grid: 128 mm worth, a multiple of 16, at least 16."""
    return max(16, int(round(128 / float(voxel_mm) / 16)) * 16)


def load_for_evaluation(spec: str) -> torch.nn.Module:
    """A BrainFMNet from a model file / store name / registry id or a training checkpoint (folder);
    the name of its segmentation label scheme is attached as ``net.label_scheme`` (None when
    unknown) and its grid as ``net.voxel_mm``."""
    from brainfm.training.restore import find_checkpoint, model_from_checkpoint

    p = Path(spec)
    if p.is_dir():
        found = find_checkpoint(p)
        if found is not None:
            net, cfg, _meta = model_from_checkpoint(found)
            net.label_scheme = getattr(cfg.model, "label_scheme", None)
            net.voxel_mm = float(cfg.model.voxel_mm)
            return net
    from brainfm.models import load_model
    from brainfm.models.registry import resolve_model

    loaded = load_model(resolve_model(spec))
    loaded.net.label_scheme = loaded.info.label_scheme
    loaded.net.voxel_mm = float(loaded.info.voxel_mm)
    return loaded.net


def evaluate_heldout(net: torch.nn.Module, prepared: PathLike, *, device: torch.device,
                     subjects: Sequence[str] = (), n_val: int = 2, size: Optional[int] = None,
                     samples: int = 4, seed: int = 0, model_name: str = "") -> Dict[str, Any]:
    """Evaluate ``net`` (on ``device``) on held-out subjects of the ``prepared`` folder: ``subjects``
    by name, else the last ``n_val`` (all when that leaves none). Returns the report: ``model``,
    ``segmentation_classes``, ``subjects``, ``size``, ``voxel_mm``, ``samples``, ``seed``, ``mean``
    (metric -> mean over subjects) and ``per_subject``."""
    from brainfm.training.data import GeneratorSource, list_prepared, split_subjects
    from brainfm.training.evaluate import class_map_to, evaluate_batches

    files = list_prepared(prepared)
    _, val = split_subjects(files, n_val=n_val, val_names=list(subjects))
    if not val:
        val = files
    amp = torch.bfloat16 if device.type == "cuda" else None
    seg_ch = net.config.heads.get("segmentation")
    cmap = class_map_to("fs33", int(seg_ch), source_scheme=getattr(net, "label_scheme", None)) if seg_ch else None
    per_subject: Dict[str, Dict[str, float]] = {}
    vox = float(getattr(net, "voxel_mm", 1.0))
    size = size or default_window(vox)
    for f in val:
        one = GeneratorSource([f], [f], size=size, n_samples=samples, device=device, seed=seed,
                              val_samples=samples, voxel_mm=vox)
        per_subject[f.name.split(".")[0]] = evaluate_batches(net, one.val_batches(), autocast_dtype=amp, class_map=cmap)
    keys = sorted({k for m in per_subject.values() for k in m if k != "n_batches"})
    metrics: Dict[str, Any] = {k: sum(m[k] for m in per_subject.values() if k in m)
                               / max(1, sum(1 for m in per_subject.values() if k in m)) for k in keys}
    return {"model": model_name, "segmentation_classes": seg_ch, "subjects": [f.name for f in val], "size": size,
            "voxel_mm": vox, "samples": samples, "seed": seed, "mean": metrics, "per_subject": per_subject}


def write_report(report: Dict[str, Any], path: PathLike) -> Path:
    """Write ``report`` as indented JSON to ``path`` atomically (its folder is created)."""
    from brainfm.io.atomic import atomic_output

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out) as tmp:
        Path(tmp).write_text(json.dumps(report, indent=1))
    return out
