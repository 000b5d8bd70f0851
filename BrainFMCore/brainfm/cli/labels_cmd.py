"""``brainfm labels``: export label tables.

    brainfm labels --format slicer-csv -o brainfm56.csv --scheme brainfm56
    brainfm labels --format fs-lut -o lut.txt            # every label of every scheme
"""
from __future__ import annotations

import argparse
import sys

HELP = "export label tables (Slicer colour CSV, FreeSurfer LUT)"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``labels`` on an ``argparse`` sub-parser collection.

    >>> import tempfile
    >>> out = tempfile.mkdtemp() + "/fs33_lut.txt"
    >>> args = add_parser(argparse.ArgumentParser().add_subparsers()).parse_args(
    ...     ["--format", "fs-lut", "--scheme", "fs33", "-o", out])
    >>> main(args)  # doctest: +ELLIPSIS
    wrote .../fs33_lut.txt
    0
    """
    from brainfm.labels import SCHEMES

    p = subparsers.add_parser("labels", help=HELP, description=HELP)
    p.add_argument("--format", choices=("slicer-csv", "fs-lut"), default="slicer-csv",
                   help="slicer-csv: Slicer >= 5.10 colour table with SNOMED CT terminology; "
                        "fs-lut: FreeSurferColorLUT text format")
    p.add_argument("-o", "--output", required=True, help="file to write")
    p.add_argument("--scheme", choices=sorted(SCHEMES), default=None,
                   help="only the labels of this scheme (default: all schemes)")
    return p


def main(args: argparse.Namespace) -> int:
    """Write the chosen table; prints its path."""
    from brainfm.labels import write_freesurfer_lut, write_slicer_color_csv

    writer = write_slicer_color_csv if args.format == "slicer-csv" else write_freesurfer_lut
    path = writer(args.output, scheme=args.scheme)
    sys.stdout.write(f"wrote {path}\n")
    return 0
