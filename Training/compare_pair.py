"""Compare two runs forked from one checkpoint, step by step (brainfm.training.paired).

    python Training/compare_pair.py runs/cpu runs/cpu-hidden --after 16887

prints, for the segmentation and total losses and the speed, the mean of each run over the steps both
logged after ``--after`` and the mean difference (second - first) with its standard error.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

KEYS = ("seg_ce", "seg_dice", "loss", "it_per_s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("first", help="run folder (holds log.csv)")
    ap.add_argument("second", help="run folder forked from the same checkpoint")
    ap.add_argument("--after", type=int, default=0, help="only steps after this one (the fork's step)")
    ap.add_argument("--until", type=int, default=None, help="only steps up to this one")
    ap.add_argument("--keys", nargs="+", default=list(KEYS), help=f"logged values to compare (default {KEYS})")
    a = ap.parse_args(argv)
    from brainfm.training.paired import paired_difference
    from brainfm.training.runlog import read_csv_log

    logs = []
    for run in (a.first, a.second):
        p = Path(run) / "log.csv"
        if not p.is_file():
            print(f"compare_pair: {p} does not exist", file=sys.stderr)
            return 2
        logs.append(read_csv_log(p))
    print(f"{'value':<10} {'steps':>5} {'first':>9} {'second':>9} {'second-first':>13} {'± s.e.':>8}")
    for key in a.keys:
        r = paired_difference(logs[0], logs[1], key, after=a.after, until=a.until)
        print(f"{key:<10} {r['n']:>5} {r['mean_a']:>9.4f} {r['mean_b']:>9.4f} {r['diff']:>+13.4f} {r['sem']:>8.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
