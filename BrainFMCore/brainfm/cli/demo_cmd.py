"""``brainfm demo -o OUT``: the main job of the README.

Makes the sample scan (``OUT/sample_scan.nii.gz``, see :mod:`brainfm.demo`), then runs ALL tasks
of the best available model (the official BrainFM model once added with ``brainfm models add``,
else the bundled compact model when its quality is at least preview; see
:mod:`brainfm.models.selection`) or of ``--model``, and writes the case folder
``OUT/sample_scan/`` (outputs, ``seg_volumes.csv``, ``summary.json``, ``montage.png``). When no
model is available it stops with the :class:`~brainfm.errors.ModelNotAvailableError` message
that says how to get one (exit 3) after writing only the sample scan: no output is ever faked.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from brainfm.cli.run import add_model_options, process_cases, run_with_reporting

HELP = "make the sample scan and run every task on it (the main job)"
SAMPLE_NAME = "sample_scan.nii.gz"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``demo`` on an ``argparse`` sub-parser collection (the ``run`` model options included).

    >>> a = add_parser(argparse.ArgumentParser().add_subparsers()).parse_args(["-o", "demo_out"])
    >>> a.output, a.seed, a.model, a.tasks
    ('demo_out', 0, 'default', 'all')
    """
    p = subparsers.add_parser("demo", help=HELP, description=__doc__.split("\n\n")[0] if __doc__ else HELP)
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample-scan degradation")
    add_model_options(p)
    return p


def _say_which_model(args: argparse.Namespace) -> None:
    """One line on stderr naming the model ``default`` stands for (nothing in machine mode)."""
    from brainfm.errors import ModelNotAvailableError
    from brainfm.models.selection import default_model

    if args.model != "default" or args.progress == "machine":
        return
    try:
        chosen = default_model()
    except ModelNotAvailableError:
        return  # reported with the how-to message once the sample scan is written
    sys.stderr.write(f"brainfm demo: using {chosen.reason} (--model {chosen.spec})\n")


def main(args: argparse.Namespace) -> int:
    from brainfm.demo import make_sample_scan
    from brainfm.errors import InputError

    out_root = Path(args.output).expanduser()
    if out_root.exists() and not out_root.is_dir():
        raise InputError(f"output {out_root} exists and is not a folder; -o takes a folder")
    out_root.mkdir(parents=True, exist_ok=True)
    args.frame = None
    _say_which_model(args)

    def body(reporter, token) -> int:
        scan_path = out_root / SAMPLE_NAME
        if not scan_path.is_file() or args.overwrite:
            reporter(0.0, "making the sample scan")
            make_sample_scan(scan_path, seed=args.seed)
        code, run = process_cases(args, [scan_path], out_root, reporter=reporter, token=token,
                                  extra={"demo": {"sample_scan": str(scan_path), "seed": args.seed}})
        runs.append(run)
        return code

    runs: list = []
    code = run_with_reporting(args, body)
    if args.progress != "machine" and code == 0 and runs and runs[0]["cases"]:
        sys.stderr.write(f"brainfm demo: outputs in {runs[0]['cases'][0]['folder']} "
                         "(open montage.png for a first look)\n")
    return code
