"""``brainfm evaluate``: Dice / PSNR / L1 of a model on held-out prepared subjects (synthetic inputs
drawn with fixed seeds, so numbers are comparable between models and runs); writes a JSON report.

Example: ``brainfm evaluate --model runs/x/model/brainfm-compact.safetensors --prepared data/prepared
--subjects training_seg_19 training_seg_20 -o eval.json``
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict

from brainfm.io.atomic import atomic_output

HELP = "evaluate a model on held-out prepared subjects (Dice, PSNR) -> JSON"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``evaluate``."""
    p = subparsers.add_parser("evaluate", help=HELP, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="native/official model file, model-store name, registry id, or a training run/checkpoint folder")
    p.add_argument("--prepared", required=True, help="folder of prepared subjects")
    p.add_argument("--subjects", nargs="*", default=[], help="subject names (default: the last --n-val)")
    p.add_argument("--n-val", type=int, default=2)
    p.add_argument("--size", type=int, default=None,
                   help="window size in voxels of the model's grid (default: 128 mm worth, e.g. 64 at 2 mm)")
    p.add_argument("--samples", type=int, default=4, help="synthetic samples per subject")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("-o", "--output", help="JSON report path (default: print only)")
    p.add_argument("--progress", choices=("bar", "machine", "none"), default="none")
    return p


def load_any(spec: str) -> Any:
    """A BrainFMNet from a model file/registry id or a training checkpoint (folder); the name of its
    segmentation label scheme is attached as ``net.label_scheme`` (None when unknown)."""
    from brainfm.training.checkpoint import latest_checkpoint, load_checkpoint, read_meta

    p = Path(spec)
    if p.is_dir():
        found = p if (p / "meta.json").is_file() else latest_checkpoint(p)
        if found is not None:
            from brainfm.training.config import TrainConfig
            from brainfm.training.trainer import build_model

            cfg = TrainConfig.from_dict(read_meta(found).get("config") or {})
            net = build_model(cfg)
            load_checkpoint(found, model=net, restore_rng=False)
            net.label_scheme = getattr(cfg.model, "label_scheme", None)
            net.voxel_mm = float(cfg.model.voxel_mm)
            return net
    from brainfm.models import load_model
    from brainfm.models.registry import resolve_model

    loaded = load_model(resolve_model(spec))
    loaded.net.label_scheme = loaded.info.label_scheme
    loaded.net.voxel_mm = float(loaded.info.voxel_mm)
    return loaded.net


def main(args: argparse.Namespace) -> int:
    import torch

    from brainfm.training.data import GeneratorSource, list_prepared, split_subjects
    from brainfm.training.dist import DistInfo, select_device
    from brainfm.training.evaluate import evaluate_batches, summarize

    device = select_device(args.device, DistInfo())
    net = load_any(args.model).to(device)
    files = list_prepared(args.prepared)
    _, val = split_subjects(files, n_val=args.n_val, val_names=args.subjects)
    if not val:
        val = files
    amp = torch.bfloat16 if device.type == "cuda" else None
    from brainfm.training.evaluate import class_map_to

    seg_ch = net.config.heads.get("segmentation")
    cmap = class_map_to("fs33", int(seg_ch), source_scheme=getattr(net, "label_scheme", None)) if seg_ch else None
    per_subject: Dict[str, Dict[str, float]] = {}
    vox = float(getattr(net, "voxel_mm", 1.0))
    size = args.size or max(16, int(round(128 / vox / 16)) * 16)
    for f in val:
        one = GeneratorSource([f], [f], size=size, n_samples=args.samples, device=device, seed=args.seed,
                              val_samples=args.samples, voxel_mm=vox)
        per_subject[f.name.split(".")[0]] = evaluate_batches(net, one.val_batches(), autocast_dtype=amp, class_map=cmap)
    keys = sorted({k for m in per_subject.values() for k in m if k != "n_batches"})
    metrics: Dict[str, Any] = {k: sum(m[k] for m in per_subject.values() if k in m)
                               / max(1, sum(1 for m in per_subject.values() if k in m)) for k in keys}
    report = {"model": str(args.model), "segmentation_classes": seg_ch, "subjects": [f.name for f in val], "size": size,
              "voxel_mm": vox,
              "samples": args.samples, "seed": args.seed, "mean": metrics, "per_subject": per_subject}
    print(summarize(metrics))
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(out) as tmp, open(tmp, "w") as f:
            json.dump(report, f, indent=1)
    return 0
