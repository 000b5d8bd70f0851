"""``brainfm finetune``: adapt a pretrained model to a folder of real images with labels (or target
images). Modes: ``head`` (frozen backbone, new 1x1x1 head), ``encoder`` (frozen encoder), ``full``.

Example: ``brainfm finetune --model default --data mydata --task seg --mode head --out ft_run``
with ``mydata/images/*.nii.gz`` and ``mydata/labels/*.nii.gz`` (FreeSurfer numbers, same names).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict

import brainfm.training  # noqa: F401 - the training part; without it `brainfm` lists this command as not available

HELP = "fine-tune a model on images + labels (or images + target images)"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``finetune`` (options left out come from ``--config``, then from
    :data:`brainfm.training.finetune_options.FINETUNE_DEFAULTS`)."""
    from brainfm.training.finetune_options import FOREGROUND_SHARE

    p = subparsers.add_parser("finetune", help=HELP, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML with any of the options below (e.g. Training/configs/finetune.yaml)")
    p.add_argument("--model", help="base model: default (the best available), a model-store name, a registry id, or a path")
    p.add_argument("--data", required=True, help="folder with images/ and labels/ (or targets/)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, log, model/)")
    p.add_argument("--task", choices=("seg", "image"))
    p.add_argument("--mode", choices=("head", "encoder", "full"))
    p.add_argument("--head", help="image head to train (T1, T2, FLAIR, CT, image); seg uses 'segmentation'")
    p.add_argument("--label-scheme",
                   help="classes of the new segmentation head: fs33 (the default; labels are FreeSurfer numbers), "
                        "auto (one class per value found in your label maps, FreeSurfer's names where it has "
                        "them), or a label table naming labels of your own (a Slicer colour-table .csv or a "
                        "FreeSurfer LUT .txt); a model of your own labels writes them with their names and "
                        "colours and fits nothing to FreeSurfer anatomy")
    p.add_argument("--steps", type=int)
    p.add_argument("--minutes", type=float)
    p.add_argument("--lr", type=float, help="learning rate (default 1e-2 for a new head on cached features, "
                                            "1e-3 otherwise)")
    p.add_argument("--size", type=int, help="crop size in voxels (lower on out-of-memory); with the feature "
                                            "cache of mode head a segmentation step takes random voxels instead")
    p.add_argument("--n-samples", type=int, help="crops per step (lower on out-of-memory)")
    p.add_argument("--name", help="name of the written model")
    p.add_argument("--head-hidden", type=int, metavar="WIDTH",
                   help="width of the per-voxel hidden layer of the new head (default 32; 0: a plain 1x1x1 "
                        "head): it starts as the plain head and can learn what one linear layer cannot")
    p.add_argument("--head-image", action=argparse.BooleanOptionalAction,
                   help="seg: the new head reads the scan's intensity beside the backbone's features, so it can "
                        "learn what the features do not keep, such as the brightness of a lesion (the default; "
                        "--no-head-image: the features alone)")
    p.add_argument("--foreground-share", type=float, metavar="SHARE",
                   help="seg, mode head with the feature cache: share (0-1) of each training sample's voxels drawn from "
                        "the labelled voxels, so a small label (a lesion) is in every sample (default "
                        f"{FOREGROUND_SHARE}; 0: none); the written head takes back "
                        "what this does to the labels' frequencies as far as the model's labels of the validation "
                        "scans score best "
                        "(printed as prior_weight)")
    p.add_argument("--feature-cache", action=argparse.BooleanOptionalAction,
                   help="mode head: compute the frozen backbone's features of each image once and train the "
                        "head on them (the default; --no-feature-cache runs the backbone at every step)")
    p.add_argument("--device")
    p.add_argument("--resume")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--progress", choices=("bar", "machine", "none"), default="bar")
    return p


def resolve_options(args: argparse.Namespace) -> Dict[str, Any]:
    """Command line > --config YAML > defaults (:func:`brainfm.training.finetune_options.finetune_options`).

    >>> sub = argparse.ArgumentParser().add_subparsers()
    >>> o = resolve_options(add_parser(sub).parse_args(["--data", "d", "--out", "o", "--steps", "20"]))
    >>> o["steps"], o["model"], o["task"]
    (20, 'default', 'seg')
    """
    from brainfm.training.finetune_options import FINETUNE_DEFAULTS, finetune_options

    return finetune_options({key: getattr(args, key, None) for key in FINETUNE_DEFAULTS},
                            config=getattr(args, "config", None))


def main(args: argparse.Namespace) -> int:
    """Fine-tune; prints a JSON line with the written model, the step reached and the validation."""
    from brainfm.cli.progress import ProgressReporter
    from brainfm.training.finetune import finetune

    o = resolve_options(args)
    reporter = ProgressReporter(args.progress)
    model = o.pop("model")
    try:
        res = finetune(model, args.data, args.out, overrides=args.set, progress=reporter, **o)
    finally:
        reporter.close()
    print(json.dumps({"model": str(res.native_model), "step": res.step, "val": res.val, "prior_weight": res.prior_weight}))
    if res.native_model is not None:
        print(f"brainfm: to use it: brainfm models add {res.native_model}, then --model "
              f"{Path(res.native_model).stem} (or pick it in the Slicer model selector)", file=sys.stderr)
    return 0
