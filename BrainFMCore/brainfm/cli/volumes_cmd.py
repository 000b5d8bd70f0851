"""``brainfm volumes``: the structure volumes of every case of an output folder in one CSV.

    brainfm volumes out/                      # writes out/seg_volumes_all.csv
    brainfm volumes out/ -o cohort.csv        # or any file

``brainfm run`` writes the same table at the end of a batch; this command rebuilds it, e.g. after runs
on several machines or GPUs into one folder (see :mod:`brainfm.report.cohort`).
"""
from __future__ import annotations

import argparse
import sys

HELP = "gather the structure volumes of every case of an output folder into one CSV"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``volumes`` on an ``argparse`` sub-parser collection.

    >>> p = add_parser(argparse.ArgumentParser().add_subparsers())
    >>> vars(p.parse_args(["out/", "-o", "all.csv"]))
    {'folder': 'out/', 'output': 'all.csv'}
    """
    p = subparsers.add_parser("volumes", help=HELP, description=HELP)
    p.add_argument("folder", help="output folder of `brainfm run` (one sub-folder per case)")
    p.add_argument("-o", "--output", default=None,
                   help="file to write (default: FOLDER/seg_volumes_all.csv)")
    return p


def main(args: argparse.Namespace) -> int:
    """Write the table; prints its path and the number of cases. Exit 2 when the folder is missing or
    holds no segmented case."""
    from pathlib import Path

    from brainfm.errors import InputError
    from brainfm.report.cohort import cohort_rows, write_cohort_table

    folder = Path(args.folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder (give the output folder of `brainfm run`)")
    table = cohort_rows(folder)
    path = write_cohort_table(folder, path=args.output, table=table)
    if path is None:
        raise InputError(f"{folder}: no case folder with structure volumes (seg_volumes.csv and summary.json); "
                         "run `brainfm run ... --tasks seg` into it first")
    n = len(table[1])
    sys.stdout.write(f"wrote {path} ({n} case{'s' if n != 1 else ''})\n")
    return 0
