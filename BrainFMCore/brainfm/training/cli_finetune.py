"""``brainfm finetune``: adapt a pretrained model to a folder of real images with labels (or target
images). Modes: ``head`` (frozen backbone, new 1x1x1 head), ``encoder`` (frozen encoder), ``full``.

Example: ``brainfm finetune --model default --data mydata --task seg --mode head --out ft_run``
with ``mydata/images/*.nii.gz`` and ``mydata/labels/*.nii.gz`` (FreeSurfer numbers, same names).
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Dict

HELP = "fine-tune a model on images + labels (or images + target images)"


DEFAULTS = {"model": "default", "task": "seg", "mode": "head", "head": None, "label_scheme": "fs33",
            "steps": 500, "minutes": 0.0, "lr": 1e-3, "size": 96, "n_samples": 2, "name": "brainfm-finetuned",
            "device": "auto", "resume": "auto"}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``finetune`` (options left out come from ``--config``, then from DEFAULTS)."""
    p = subparsers.add_parser("finetune", help=HELP, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML with any of the options below (e.g. Training/configs/finetune.yaml)")
    p.add_argument("--model", help="base model: default (the best available), a model-store name, a registry id, or a path")
    p.add_argument("--data", required=True, help="folder with images/ and labels/ (or targets/)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, log, model/)")
    p.add_argument("--task", choices=("seg", "image"))
    p.add_argument("--mode", choices=("head", "encoder", "full"))
    p.add_argument("--head", help="image head to train (T1, T2, FLAIR, CT, image); seg uses 'segmentation'")
    p.add_argument("--label-scheme", help="classes of the new segmentation head (default fs33)")
    p.add_argument("--steps", type=int)
    p.add_argument("--minutes", type=float)
    p.add_argument("--lr", type=float)
    p.add_argument("--size", type=int, help="crop size in voxels (lower on out-of-memory)")
    p.add_argument("--n-samples", type=int, help="crops per step (lower on out-of-memory)")
    p.add_argument("--name", help="name of the written model")
    p.add_argument("--device")
    p.add_argument("--resume")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--progress", choices=("bar", "machine", "none"), default="bar")
    return p


def resolve_options(args: argparse.Namespace) -> Dict[str, Any]:
    """Command line > --config YAML > DEFAULTS."""
    from brainfm.errors import InputError

    conf: Dict[str, Any] = {}
    if getattr(args, "config", None):
        import yaml

        try:
            conf = yaml.safe_load(open(args.config)) or {}
        except (OSError, yaml.YAMLError) as e:
            raise InputError(f"cannot read fine-tuning config {args.config}: {e}") from None
        unknown = sorted(set(conf) - set(DEFAULTS))
        if unknown:
            raise InputError(f"unknown fine-tuning config keys {unknown}; known: {sorted(DEFAULTS)}")
    out = {}
    for k, d in DEFAULTS.items():
        v = getattr(args, k, None)
        out[k] = v if v is not None else conf.get(k, d)
    return out


def main(args: argparse.Namespace) -> int:
    from brainfm.training.cli_train import _reporter
    from brainfm.training.finetune import finetune

    o = resolve_options(args)
    rep = _reporter(args.progress)
    model = o.pop("model")
    res = finetune(model, args.data, args.out, overrides=args.set, progress=rep, **o)
    if rep is not None:
        rep.close()
    print(json.dumps({"model": str(res.native_model), "step": res.step, "val": res.val}))
    return 0
