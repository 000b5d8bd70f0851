"""``brainfm prepare LABEL_DIR -o OUT --atlas gca.mgz [--workers N]``: cache label maps for training.

>>> import argparse
>>> from brainfm.cli import prepare_cmd
>>> sub = argparse.ArgumentParser().add_subparsers()
>>> a = prepare_cmd.add_parser(sub).parse_args(["labels", "-o", "out", "--atlas", "gca.mgz"])
>>> a.workers, a.unknown, a.affine_only
(1, 'zero', False)
"""
from __future__ import annotations

import argparse
from typing import Any, Callable, Optional

import brainfm.training  # noqa: F401 - the training part; without it `brainfm` lists this command as not available

HELP = "prepare label maps for training (1 mm RAS crop + atlas registration cache)"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``prepare`` subcommand on ``subparsers``."""
    p = subparsers.add_parser("prepare", help=HELP, description=HELP)
    p.add_argument("label_dir", help="folder of label maps (.nii, .nii.gz, .mgz, ...)")
    p.add_argument("-o", "--output", required=True, help="output folder (created; re-runs skip done subjects)")
    p.add_argument("--atlas", required=True, help="atlas intensity template (e.g. BrainFM's gca.mgz)")
    p.add_argument("--images", default=None, help="optional folder of real images aligned with the labels")
    p.add_argument("--workers", type=int, default=1, help="parallel subjects (default 1)")
    p.add_argument("--unknown", choices=("zero", "reject"), default="zero",
                   help="unknown label values: map to 0 and list them (zero) or stop (reject)")
    p.add_argument("--affine-only", action="store_true", help="skip the B-spline registration")
    p.add_argument("--progress", choices=("bar", "machine", "none"), default="bar")
    p.set_defaults(func=main)
    return p


def progress_printer(kind: str) -> Optional[Callable[[float, str], None]]:
    """The progress callback of ``--progress kind``: machine protocol lines, ``[ 42.0%] message``
    lines (``bar``: one line per subject, readable in logs) or None.

    >>> progress_printer("bar")(0.42, "subject_1")
    [ 42.0%] subject_1
    >>> progress_printer("machine")(0.5, "subject_2")
    BRAINFM_PROGRESS 0.5000 subject_2
    """
    if kind == "none":
        return None
    if kind == "machine":
        from brainfm.progress_protocol import format_progress_line

        return lambda f, m: print(format_progress_line(f, m), flush=True)
    return lambda f, m: print(f"[{100 * f:5.1f}%] {m}", flush=True)


def main(args: argparse.Namespace) -> int:
    """Run the preparation; errors propagate as :class:`brainfm.errors.BrainFMError`."""
    from brainfm.training.prepare import prepare_dataset

    res = prepare_dataset(args.label_dir, args.output, atlas_path=args.atlas, images_dir=args.images,
                          workers=args.workers, unknown=args.unknown, nonlinear=not args.affine_only,
                          progress=progress_printer(args.progress))
    unknown = {k: v["unknown_labels"] for k, v in res["subjects"].items() if v.get("unknown_labels")}
    for name, vals in sorted(unknown.items()):
        print(f"warning: {name}: unknown label values {vals} were set to 0")
    print(f"prepared {len(res['prepared'])}, skipped {len(res['skipped'])} (already done) -> {args.output}")
    return 0
