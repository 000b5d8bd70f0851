"""``brainfm eval-table``: compute the evaluation table of a model (all rows or some) on the shared
development data and write ``eval_table.json``, ``eval_table.md`` (markdown for the model card, a
reproducing command per row) and montage PNGs into the output folder.

Example: ``brainfm eval-table --model BrainFMCore/brainfm/models/bundled/brainfm-compact.safetensors
--data ../shared/data -o eval_out`` (add ``--rows segmentation synthesis`` for a subset,
``--device cuda`` on a GPU; the speed row always measures a 2-core CPU in a child process). With
``--samseg-python ENV/bin/python`` (SAMSEG installed in its own environment: ``python -m venv ENV &&
ENV/bin/pip install samseg``) the segmentation and resolution rows get a SAMSEG peer column: its wall
time, peak memory and merged-17 Dice on the same scan; the robustness row gets the Dice between SAMSEG's
own labels of each pair of contrasts.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import brainfm.evaluation  # noqa: F401 - the evaluation part; without it `brainfm` lists this command as not available

HELP = "compute the model-card evaluation table (Dice, PSNR/SSIM, N4, registration, CT, speed)"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``eval-table``.

    >>> sub = argparse.ArgumentParser().add_subparsers()
    >>> a = add_parser(sub).parse_args(["--model", "bundled", "--data", "data", "-o", "out", "--rows", "speed"])
    >>> a.rows, a.device, a.samseg_python
    (['speed'], 'auto', None)
    """
    from brainfm.evaluation.table import ROWS

    p = subparsers.add_parser("eval-table", help=HELP, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model file (native .safetensors/.json, official .pth) or a model-store name")
    p.add_argument("--data", required=True, help="shared data root (e.g. ../shared/data)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS, help="rows to compute (default: all)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (speed row: always CPU)")
    p.add_argument("--progress", default="bar", choices=("bar", "machine", "none"))
    p.add_argument("--samseg-python", default=None,
                   help="Python of a separate environment with SAMSEG (pip install samseg) to add SAMSEG as a "
                        "peer column of the segmentation, robustness and resolution rows (default: $BRAINFM_SAMSEG_PYTHON; "
                        "left out when unset)")
    return p


def main(args: argparse.Namespace) -> int:
    """Run the table and print the markdown."""
    from brainfm.cli.progress import ProgressReporter
    from brainfm.evaluation.table import run_table

    model = Path(args.model)
    if not model.is_file():  # a model-store name (brainfm models list), bundled, default or a registry id
        from brainfm.models.registry import resolve_model

        model = resolve_model(args.model)
    reporter = ProgressReporter(args.progress)
    try:
        doc = run_table(model, Path(args.data), Path(args.output), rows=args.rows, device=args.device,
                        progress=reporter, command_model=args.model, command_data=args.data,
                        samseg_python=args.samseg_python)
    finally:
        reporter.close()
    print((Path(args.output) / "eval_table.md").read_text())
    bad = [r["row"] for r in doc["rows"] if r["status"] == "error"]
    return 1 if bad else 0
