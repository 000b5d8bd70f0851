"""Finish a training run: export, evaluate, write the model card's history row, and bundle the weights
into the package (and commit them) only when the evaluation improves on the bundled model.

    python Training/bundle_model.py --run runs/cpu --data ../shared/data [--no-commit] [--hardware TEXT]
    python Training/bundle_model.py --measure-only [--weights last|average]   # a point of the curve

Called by `bash Training/cpu_train.sh finish` (after a clean stop) and after a GPU window. Steps:
1. the newest checkpoint of --run -> fp16 native model in <run>/export/ (the moving average of the
   weights when the run keeps one; provenance: steps, CPU-hours, GPU-minutes, totals carried over from
   the weights the run started from);
2. quality on the development data (brainfm.evaluation.quality: merged-17 Dice on the real T1 and on
   the held-out label maps) -> <run>/export/quality.json;
3. better than the bundled model, measured again with the same code (never a lower quality level;
   within a level, the mean of real-T1 and held-out Dice, see `better`)? -> write it to
   BrainFMCore/brainfm/models/bundled/ with its quality, record its SHA-256 in registry.json; if not,
   and the bundled weights now measure differently from their sidecar, the sidecar gets the new values;
4. a row in the model card's "Training history" table (shipped or not), and the points measured
   during the run (<run>/quality.jsonl, from --measure-only) and this one added to the learning curve
   (Training/training_curve.py: training_curve.csv and .png beside the model card);
5. one git commit of exactly those files (weights only when they improved), unless --no-commit.

--measure-only (`bash Training/cpu_train.sh eval`) does steps 1-2 on the latest checkpoint of a run
that may still be training and appends the point to <run>/quality.jsonl; nothing in the repository
changes.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import training_curve  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "BrainFMCore" / "brainfm"
BUNDLED = PKG / "models" / "bundled"
CARD = BUNDLED / "MODEL_CARD.md"
REGISTRY = PKG / "models" / "registry.json"
NAME = "brainfm-compact"
HISTORY_HEADING = "## Training history"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_totals(run: Path, meta: Dict[str, Any]) -> Dict[str, float]:
    """Steps / CPU-hours / GPU-minutes of this run plus those of the weights it started from."""
    origin = run / "origin.json"
    before = json.loads(origin.read_text()).get("totals", {}) if origin.is_file() else {}
    extra = meta.get("extra") or {}
    cpu_h = float(extra.get("cpu_seconds", 0.0)) / 3600.0
    gpu_min = float(extra.get("gpu_seconds", 0.0)) / 60.0
    return {"steps": int(before.get("steps", 0)) + int(meta["step"]),
            "cpu_hours": round(float(before.get("cpu_hours", 0.0)) + cpu_h, 2),
            "gpu_minutes": round(float(before.get("gpu_minutes", 0.0)) + gpu_min, 1),
            "run_steps": int(meta["step"])}


def portable(value: Any) -> Any:
    """``value`` with every absolute path made relative to the repository (or cut to its name), so the
    shipped sidecar names no folder of the machine that trained it."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        path = Path(value)
        try:
            return str(path.resolve().relative_to(REPO))
        except ValueError:
            return path.name
    return value


def recent_losses(run: Path, n: int = 50) -> Dict[str, float]:
    p = run / "log.csv"
    if not p.is_file():
        return {}
    rows = [r for r in csv.DictReader(open(p, newline="")) if r.get("loss")][-n:]
    mean = lambda k: round(sum(float(r[k]) for r in rows if r.get(k)) / max(1, sum(1 for r in rows if r.get(k))), 3)  # noqa: E731
    return {"loss": mean("loss"), "seg_ce": mean("seg_ce"), "seg_dice": mean("seg_dice")} if rows else {}


# the loss terms of each task, as the learning curve names them
TASK_TERMS = {"segmentation": ("seg_ce", "seg_dice"), "synthesis": ("image", "image_grad"),
              "bias field": ("bias_field_log",), "distance": ("distance",),
              "registration": ("registration", "registration_grad"), "super-resolution": ("sr", "sr_grad")}


def objective_label(weights: Dict[str, float]) -> str:
    """How the loss terms were weighted, in words for the curve: ``equal weights``, or the tasks of
    the largest weight up to 1 first (a term left out has the objective's default weight), then any
    task weighted above 1 with its factor. Terms differ in scale (the bias field's log-field MSE is
    about 0.01), so a weight above 1 compensates a small term rather than putting its task first.

    >>> cpu = {"image": 0.2, "image_grad": 0.2, "seg_ce": 1.0, "seg_dice": 1.0, "bias_field_log": 0.2,
    ...        "distance": 0.2, "registration": 0.2, "registration_grad": 0.2, "sr": 0.2, "sr_grad": 0.2}
    >>> objective_label(cpu)
    'segmentation first'
    >>> objective_label({**cpu, "image": 1.0, "image_grad": 1.0})
    'segmentation + synthesis first'
    >>> objective_label({**cpu, "image": 1.0, "image_grad": 1.0, "bias_field_log": 20.0})
    'segmentation + synthesis first, bias field x20'
    >>> objective_label({})  # the objective's defaults: every term at 1
    'equal weights'
    """
    from brainfm.training.objectives import BrainFMObjective

    full = BrainFMObjective(weights).w  # the weights the objective applies, its defaults included
    task_weight = {task: max(float(full[k]) for k in terms) for task, terms in TASK_TERMS.items()}
    raised = [f"{task} x{w:g}" for task, w in task_weight.items() if w > 1.0]
    rest = {task: w for task, w in task_weight.items() if w <= 1.0}
    top = max(rest.values()) if rest else 0.0
    first = [task for task, w in rest.items() if w == top]
    head = "equal weights" if len(first) == len(rest) else " + ".join(first) + " first"
    return ", ".join([head] + raised)


def curve_point(q: Dict[str, Any], totals: Dict[str, Any], *, date: str, hardware: str, weights: str,
                objective: str, input_antialias: bool = True, test_time_flip: bool = False) -> Dict[str, Any]:
    """A row of the learning curve (Training/training_curve.py) from a measurement."""
    return {"date": date, "hardware": hardware, "steps": totals["steps"], "cpu_hours": totals["cpu_hours"],
            "gpu_minutes": totals["gpu_minutes"], "weights": weights, "objective": objective,
            "input_antialias": bool(input_antialias), "input_aligned": True, "test_time_flip": bool(test_time_flip),
            "real_t1_dice17": q.get("real_t1_dice17"), "heldout_dice17": q.get("heldout_dice17")}


def run_points(run: Path) -> List[Dict[str, Any]]:
    """The points measured during the run (``<run>/quality.jsonl``)."""
    p = run / "quality.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.is_file() else []


def bundled_quality() -> Optional[Dict[str, Any]]:
    """The quality stored in the bundled model's sidecar (None when nothing is bundled)."""
    j = BUNDLED / f"{NAME}.json"
    if not j.is_file():
        return None
    return json.loads(j.read_text()).get("quality") or {}


def remeasure_bundled(data: str) -> Optional[Dict[str, Any]]:
    """The bundled weights measured again with today's code (the comparison is then between two
    measurements of the same kind); None when nothing is bundled."""
    from brainfm.evaluation.quality import measure_quality

    w = BUNDLED / f"{NAME}.safetensors"
    return measure_quality(w, data) if w.is_file() else None


def refresh_bundled_quality(quality: Dict[str, Any]) -> Path:
    """Store a new measurement of the bundled weights in their sidecar (the weights stay as they are)."""
    j = BUNDLED / f"{NAME}.json"
    meta = json.loads(j.read_text())
    meta["quality"] = {**(meta.get("quality") or {}), **quality}
    tmp = j.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, j)
    return j


def better(new: Dict[str, Any], old: Optional[Dict[str, Any]]) -> bool:
    """Whether measured weights ``new`` should replace the bundled ones (``old``).

    Never for a lower quality level (a preview model is not replaced by a below-preview one); a higher
    level always; within a level, a higher mean of the real-T1 and held-out Dice (by more than 0.002),
    so that a single real scan does not decide alone; on a tie, the better synthesis when both sides
    measured it (``synth_ssim``, the mean SSIM of the stroke trio's four pairs, by more than 0.005: the
    synthesis heads can improve while the segmentation stays where it was), else the higher real-T1
    Dice. The held-out
    Dice is that of the model's own labels (``heldout_head_dice17``) when both sides have it: the
    renderings draw the deep grey nuclei and the ventral DC with one intensity, so the refinement to
    the scan's intensities can hand a whole structure to another one, and its held-out Dice swings
    between neighbouring weights (0.887 and 0.821 at steps 19,750 and 20,122, own labels 0.752 and
    0.753).

    >>> better({"real_t1_dice17": 0.30, "heldout_dice17": 0.30}, {"real_t1_dice17": 0.31, "heldout_dice17": 0.20})
    True
    >>> better({"real_t1_dice17": 0.69, "heldout_dice17": 0.90}, {"real_t1_dice17": 0.71, "heldout_dice17": 0.5})
    False
    >>> better({"real_t1_dice17": 0.81, "heldout_dice17": 0.82, "heldout_head_dice17": 0.76},
    ...        {"real_t1_dice17": 0.80, "heldout_dice17": 0.89, "heldout_head_dice17": 0.75})
    True
    >>> better({"real_t1_dice17": 0.820, "heldout_dice17": 0.85, "synth_ssim": 0.64},
    ...        {"real_t1_dice17": 0.821, "heldout_dice17": 0.85, "synth_ssim": 0.60})
    True
    """
    from brainfm.models.quality import LEVELS, quality_level

    if old is None:
        return True
    real = lambda q: float(q.get("real_t1_dice17") or 0)  # noqa: E731
    key = "heldout_head_dice17" if new.get("heldout_head_dice17") is not None and \
        old.get("heldout_head_dice17") is not None else "heldout_dice17"
    mean = lambda q: (real(q) + float(q.get(key) or 0)) / 2  # noqa: E731
    level_new, level_old = (LEVELS.index(quality_level(real(q))) for q in (new, old))
    if level_new != level_old:
        return level_new > level_old
    if abs(mean(new) - mean(old)) > 0.002:
        return mean(new) > mean(old)
    if new.get("synth_ssim") is not None and old.get("synth_ssim") is not None and \
            abs(float(new["synth_ssim"]) - float(old["synth_ssim"])) > 0.005:
        return float(new["synth_ssim"]) > float(old["synth_ssim"])
    return real(new) > real(old)


def append_history_row(row: List[str]) -> None:
    text = CARD.read_text()
    lines = text.splitlines()
    i = next(k for k, l in enumerate(lines) if l.startswith(HISTORY_HEADING))
    j = next(k for k in range(i + 1, len(lines)) if lines[k].startswith("|"))  # table header
    k = j
    while k + 1 < len(lines) and lines[k + 1].startswith("|"):
        k += 1
    lines.insert(k + 1, "| " + " | ".join(row) + " |")
    tmp = CARD.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, CARD)


def set_registry_sha(sha: str) -> None:
    data = json.loads(REGISTRY.read_text())
    for e in data["entries"]:
        if e.get("id") == NAME:
            e["sha256"] = sha
    tmp = REGISTRY.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, REGISTRY)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(REPO / "runs" / "cpu"))
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--no-commit", action="store_true")
    ap.add_argument("--hardware", default=None, help="text for the history row (default: this CPU)")
    ap.add_argument("--measure-only", action="store_true",
                    help="measure the latest checkpoint into <run>/quality.jsonl; change nothing else")
    ap.add_argument("--weights", choices=("average", "last"), default="average",
                    help="with --measure-only: the moving average (the exported model) or the last weights")
    args = ap.parse_args(argv)

    from brainfm.evaluation.quality import measure_quality
    from brainfm.models import save_native
    from brainfm.models.common import BRAINFM_OUTPUT_UNITS, ModelInfo
    from brainfm.training.checkpoint import latest_checkpoint
    from brainfm.training.export import trained_input_antialias, trained_test_time_flip
    from brainfm.training.restore import model_from_checkpoint

    run = Path(args.run)
    ck = latest_checkpoint(run)
    if ck is None:
        print(f"bundle_model: no checkpoint in {run}", file=sys.stderr)
        return 2
    use_average = args.weights == "average"
    net, cfg, meta = model_from_checkpoint(ck, use_average=use_average)  # the exported model
    antialias = trained_input_antialias(cfg.model.voxel_mm)
    flip = trained_test_time_flip(cfg)
    weights_kind = "average" if use_average and meta["groups"].get("ema") else "last"
    totals = run_totals(run, meta)
    losses = recent_losses(run)
    today = datetime.date.today().isoformat()
    hardware = args.hardware or f"{cpu_name()}, {os.cpu_count()} cores"
    objective = objective_label(cfg.loss.weights)
    provenance = {"trained_by": "brainfm.training", "step": int(meta["step"]), "totals": totals,
                  "recipe": portable(cfg.to_dict()), "recent_losses": losses, "date": today, "hardware": hardware}

    def info(quality: Dict[str, Any]) -> ModelInfo:
        return ModelInfo(name=NAME, version=f"{today}-step{totals['steps']}", format="native", sha256="",
                         config=net.config, label_scheme=cfg.model.label_scheme, atlas={"name": "gca"},
                         provenance=provenance, output_units=dict(BRAINFM_OUTPUT_UNITS),
                         voxel_mm=float(cfg.model.voxel_mm), quality=quality,
                         input_antialias=antialias, test_time_flip=flip)

    export = run / ("measure" if args.measure_only else "export")
    weights, _ = save_native(net, export / NAME, info=info({}), fp16=True)
    q = measure_quality(weights, args.data)
    (export / "quality.json").write_text(json.dumps(q, indent=1))
    point = curve_point(q, totals, date=today, hardware=hardware, weights=weights_kind, objective=objective,
                        input_antialias=antialias, test_time_flip=flip)
    if args.measure_only:
        with open(run / "quality.jsonl", "a") as f:
            f.write(json.dumps(point) + "\n")
        print(json.dumps({"checkpoint": str(ck), "weights": weights_kind, "totals": totals, "quality": q}))
        return 0
    stored = bundled_quality()
    old = remeasure_bundled(args.data) if stored is not None else None
    ship = better(q, old)
    print(json.dumps({"checkpoint": str(ck), "totals": totals, "losses": losses, "quality": q,
                      "bundled_quality": old, "bundled_quality_stored": stored, "ship": ship}))
    files = [CARD]
    changed = lambda a, b: any(a.get(k) != b.get(k) for k in ("real_t1_dice17", "heldout_dice17", "level"))  # noqa: E731
    if not ship and old is not None and stored is not None and changed(old, stored):
        files.append(refresh_bundled_quality(old))  # what the product shows must be today's measurement
    if ship:
        w, j = save_native(net, BUNDLED / NAME, info=info(q), fp16=True)
        from brainfm.models.registry import sha256_file

        set_registry_sha(sha256_file(w))
        files += [w, j, REGISTRY]
    compute = (f"{totals['cpu_hours']:.2f} CPU-h" + (f" + {totals['gpu_minutes']:.0f} GPU-min" if totals["gpu_minutes"] else "")
               + " in all")
    append_history_row([today, hardware, compute, str(totals["steps"]),
                        f"{losses.get('loss', float('nan')):.3f} / {losses.get('seg_ce', float('nan')):.3f}",
                        f"{q.get('heldout_dice17', float('nan')):.3f}", f"{q['real_t1_dice17']:.3f}",
                        ("yes, " + q["level"]) if ship else "no (not better)"])
    curve_csv, curve_png = BUNDLED / training_curve.CURVE_CSV.name, BUNDLED / training_curve.CURVE_PNG.name
    rows = training_curve.add_points(run_points(run) + [point], curve_csv)
    training_curve.plot_curve(rows, curve_png)
    (run / "quality.jsonl").unlink(missing_ok=True)  # its points are in the curve now
    files += [curve_csv, curve_png]
    if not args.no_commit:
        rel = [str(Path(f).resolve().relative_to(REPO)) for f in files]
        subprocess.run(["git", "-C", str(REPO), "add", "--", *rel], check=True)
        msg = (f"Bundled model: {totals['steps']} steps, real-T1 merged-17 Dice {q['real_t1_dice17']:.3f}"
               if ship else f"Model card: training history row ({today}, Dice {q['real_t1_dice17']:.3f}, not shipped)")
        subprocess.run(["git", "-C", str(REPO), "commit", "-q", "-m", msg, "--", *rel], check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
