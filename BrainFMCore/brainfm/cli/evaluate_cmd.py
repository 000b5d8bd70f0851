"""``brainfm evaluate``: Dice / PSNR / L1 of a model on held-out prepared subjects (synthetic inputs
drawn with fixed seeds, so numbers are comparable between models and runs); writes a JSON report.

Example: ``brainfm evaluate --model runs/x/model/brainfm-compact.safetensors --prepared data/prepared
--subjects training_seg_19 training_seg_20 -o eval.json``
"""
from __future__ import annotations

import argparse
from typing import Any

import brainfm.training  # noqa: F401 - the training part; without it `brainfm` lists this command as not available

HELP = "evaluate a model on held-out prepared subjects (Dice, PSNR) -> JSON"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``evaluate``.

    >>> sub = argparse.ArgumentParser().add_subparsers()
    >>> a = add_parser(sub).parse_args(["--model", "m.safetensors", "--prepared", "prepared"])
    >>> a.n_val, a.samples, a.size, a.output
    (2, 4, None, None)
    """
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


def main(args: argparse.Namespace) -> int:
    """Evaluate; prints the metrics and writes the JSON report when ``-o`` is given."""
    from brainfm.training.dist import DistInfo, select_device
    from brainfm.training.evaluate import summarize
    from brainfm.training.heldout import evaluate_heldout, load_for_evaluation, write_report

    device = select_device(args.device, DistInfo())
    net = load_for_evaluation(args.model).to(device)
    report = evaluate_heldout(net, args.prepared, device=device, subjects=args.subjects, n_val=args.n_val,
                              size=args.size, samples=args.samples, seed=args.seed, model_name=str(args.model))
    print(summarize(report["mean"]))
    if args.output:
        write_report(report, args.output)
    return 0
