"""The learning curve of the bundled model: merged-17 Dice against steps and compute, across runs.

One row per measurement of a checkpoint (``measure_quality``: the voxelmorph real T1 and the held-out
label maps), kept with the model in ``BrainFMCore/brainfm/models/bundled/training_curve.csv`` and drawn
as ``training_curve.png`` (shown in the model card). ``Training/bundle_model.py`` adds the rows:
``--measure-only`` (``bash Training/cpu_train.sh eval``) measures the latest checkpoint of a running
training into ``<run>/quality.jsonl``; ``finish`` moves those rows and its own into the curve.

    python Training/training_curve.py            # redraw the PNG from the CSV
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "BrainFMCore" / "brainfm" / "models" / "bundled"
CURVE_CSV = BUNDLED / "training_curve.csv"
CURVE_PNG = BUNDLED / "training_curve.png"
FIELDS = ["date", "hardware", "steps", "cpu_hours", "gpu_minutes", "weights", "objective",
          "input_antialias", "input_aligned", "test_time_flip", "real_t1_dice17", "heldout_dice17"]
#: columns added after the first rows were written, and the value those rows had
DEFAULTS = {"input_antialias": "True", "input_aligned": "False", "test_time_flip": "False"}


def _filled(r: Mapping[str, Any]) -> Dict[str, str]:
    """A row with the value of :data:`DEFAULTS` for every column it lacks or left empty."""
    return {**{k: ("" if v is None else str(v)) for k, v in r.items()},
            **{k: str(r.get(k) or v) for k, v in DEFAULTS.items()}}


def read_curve(path: Path = CURVE_CSV) -> List[Dict[str, str]]:
    """The rows of the curve (empty when there is none yet)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [_filled(r) for r in csv.DictReader(f)]  # rows older than a column: its default


def add_points(points: Sequence[Mapping[str, Any]], path: Path = CURVE_CSV) -> List[Dict[str, str]]:
    """Add ``points`` (dicts with the keys of :data:`FIELDS`) to the curve, replacing rows measured at
    the same step with the same weights and input handling; rows stay in step order. Written
    atomically; returns the rows."""
    def key(r: Mapping[str, str]) -> tuple:
        return (r["steps"], r["weights"]) + tuple(r[k] for k in DEFAULTS)

    rows = {key(r): r for r in read_curve(path)}
    for p in points:
        row = _filled({k: p.get(k) for k in FIELDS})
        rows[key(row)] = row
    ordered = sorted(rows.values(), key=lambda r: (int(r["steps"]), r["weights"], r["input_aligned"] == "True",
                                                   r["test_time_flip"] == "True", r["input_antialias"] == "False"))
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
        w.writeheader()
        w.writerows(ordered)
    os.replace(tmp, path)
    return ordered


def plot_curve(rows: Sequence[Mapping[str, str]], png: Path = CURVE_PNG, *, preview: float = 0.70,
               release: float = 0.80) -> Optional[Path]:
    """Draw Dice against steps and against CPU-hours (GPU minutes are not on that axis) with the
    preview and release levels; None when there are no rows."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2))
    # how the input reached the network: the measurements before the backbone aligned its input are
    # drawn faded (see the model card)
    series = [(lambda r: r["input_aligned"] == "True" and r["test_time_flip"] == "True",
               "aligned input, flip-averaged", ("tab:green", "tab:olive"), 1.0),
              (lambda r: r["input_aligned"] == "True" and r["test_time_flip"] != "True",
               "aligned input", ("tab:blue", "tab:orange"), 1.0),
              (lambda r: r["input_aligned"] != "True" and r["input_antialias"] == "False",
               "unaligned, not anti-aliased", ("tab:purple", "tab:red"), 0.45),
              (lambda r: r["input_aligned"] != "True" and r["input_antialias"] != "False",
               "unaligned", ("tab:blue", "tab:orange"), 0.3)]
    for weights in ("last", "average"):
        for keep, name, colors, alpha in series:
            rs = [r for r in rows if r["weights"] == weights and keep(_filled(r))]
            if not rs:
                continue
            marker = {"last": "o", "average": "D"}[weights]
            label = f"{weights} weights, {name}"
            a = alpha if weights == "average" else alpha * 0.6
            for ax, key in ((axes[0], "steps"), (axes[1], "cpu_hours")):
                x = [float(r[key]) for r in rs]
                ax.plot(x, [float(r["real_t1_dice17"]) for r in rs], marker + "-", color=colors[0], alpha=a,
                        label=f"real T1 ({label})")
                ax.plot(x, [float(r["heldout_dice17"]) for r in rs], marker + "--", color=colors[1], alpha=a,
                        label=f"held-out maps ({label})")
    changes = [r for prev, r in zip(rows, rows[1:]) if r["objective"] != prev["objective"]]
    for ax, key, label in ((axes[0], "steps", "steps"), (axes[1], "cpu_hours", "CPU-hours")):
        for level, name in ((preview, "preview"), (release, "release")):
            ax.axhline(level, color="grey", lw=0.8, ls=":")
            ax.text(ax.get_xlim()[0], level, f" {name}", va="bottom", fontsize=7, color="grey")
        for r in changes:
            ax.axvline(float(r[key]), color="tab:green", lw=0.8, ls="--")
            ax.text(float(r[key]), 0.02, f" {r['objective']}", fontsize=7, color="tab:green", rotation=90,
                    va="bottom")
        ax.set_xlabel(label)
        ax.set_ylabel("merged-17 Dice")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=3)
    fig.suptitle("brainfm-compact: merged-17 Dice while training")
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    tmp = png.with_name(png.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png)
    return png


def main() -> int:
    out = plot_curve(read_curve())
    print(out or "training_curve: no rows yet")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
