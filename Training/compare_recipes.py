"""Compare training recipes on equal CPU budgets: held-out and real-T1 Dice per CPU-hour.

Each recipe (a config in Training/configs/recipes/) is trained in turns of ``--chunk`` CPU-minutes
(process CPU time of the training, generator included, counted across resumes), interleaved so that
every recipe has results early. After each turn the exported model is measured through the product
path (:func:`brainfm.evaluation.quality.measure_quality`: merged-17 Dice on the real T1 and on the
held-out label maps) and a row is appended to ``<out>/results.jsonl``; ``<out>/curves.png`` plots
Dice against CPU-hours and against steps. Rerunning continues where it stopped.

    nice -n 19 .venv/bin/python Training/compare_recipes.py --budget 45 --chunk 15
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "Training" / "configs" / "recipes"


def train_turn(config: Path, out: Path, cpu_minutes: float, prepared: str) -> Dict[str, Any]:
    """Train ``config`` in ``out`` until its total CPU time reaches ``cpu_minutes``; the JSON summary."""
    cmd = [sys.executable, "-m", "brainfm", "train", "--config", str(config), "--out", str(out),
           "--prepared", prepared, "--device", "cpu", "--progress", "none",
           "--set", f"run.max_cpu_minutes={cpu_minutes}"]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def done_turns(results: Path) -> List[Dict[str, Any]]:
    if not results.is_file():
        return []
    return [json.loads(line) for line in results.read_text().splitlines() if line.strip()]


def plot(rows: List[Dict[str, Any]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in sorted({r["recipe"] for r in rows}):
        rs = sorted((r for r in rows if r["recipe"] == name), key=lambda r: r["cpu_minutes"])
        for ax, key, lab in ((axes[0], "cpu_hours", "CPU-hours"), (axes[1], "step", "steps")):
            x = [r["cpu_minutes"] / 60 if key == "cpu_hours" else r["step"] for r in rs]
            ax.plot(x, [r["real_t1_dice17"] for r in rs], "o-", label=f"{name}: real T1")
            ax.plot(x, [r["heldout_dice17"] for r in rs], "s--", label=f"{name}: held-out maps")
            ax.set_xlabel(lab)
    for ax in axes:
        ax.set_ylabel("merged-17 Dice")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle("Training recipes on equal CPU budgets")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="*", default=None, help="config names in Training/configs/recipes")
    ap.add_argument("--budget", type=float, default=45.0, help="CPU-minutes per recipe")
    ap.add_argument("--chunk", type=float, default=15.0, help="CPU-minutes between measurements")
    ap.add_argument("--prepared", default=str(REPO / ".devdata" / "prepared"))
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="development data root")
    ap.add_argument("--out", default=str(REPO / "runs" / "compare"))
    args = ap.parse_args(argv)
    from brainfm.evaluation.quality import measure_quality

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    names = args.recipes or sorted(p.stem for p in RECIPES.glob("*.yaml"))
    have = {(r["recipe"], r["cpu_minutes"]) for r in done_turns(results)}
    b = args.chunk
    while b <= args.budget + 1e-9:
        for name in names:
            if (name, b) in have:
                continue
            t0 = time.time()
            summary = train_turn(RECIPES / f"{name}.yaml", out / name, b, args.prepared)
            q = measure_quality(summary["model"], args.data)
            row = {"recipe": name, "cpu_minutes": b, "step": summary["step"], "wall_s": round(time.time() - t0),
                   **{k: q[k] for k in ("real_t1_dice17", "real_t1_dice_lr", "heldout_dice17", "labels_outside_head")}}
            with open(results, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
            plot(done_turns(results), out / "curves.png")
        b += args.chunk
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
