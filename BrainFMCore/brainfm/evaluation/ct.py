"""CT-input row: segment the real clinical head CT (thick slices, HU) and report a montage, the
structure volumes and simple plausibility checks (to be confirmed by looking at the montage).

Checks: every merged-17 class found; cerebral WM, cortex and lateral ventricle left/right volume
ratio in [0.67, 1.5]; total of the labelled volume between 300 and 2000 cm^3 (the scan covers
147 mm of the head, so part of the brain can be outside it).

>>> rows = [{"value": 2, "volume_mm3": 200e3}, {"value": 41, "volume_mm3": 210e3}]
>>> lr_ratios(rows)["2"]
0.952
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from brainfm.evaluation import datasets
from brainfm.evaluation.rows import has_task, na_row, row
from brainfm.labels import EVAL17_FS, merge_hemispheres

GOAL = "anatomically plausible labels (montage + structure volumes)"
LR_PAIRS = ((2, 41), (3, 42), (4, 43))  # cerebral WM, cortex, lateral ventricle


def lr_ratios(rows: List[Mapping[str, Any]]) -> Dict[str, Optional[float]]:
    """Left/right volume ratio of the :data:`LR_PAIRS` (None when the right side is empty)."""
    from brainfm.labels.checks import lr_ratios as pair_ratios

    ratios = pair_ratios({int(r["value"]): float(r["volume_mm3"]) for r in rows}, pairs=LR_PAIRS)
    return {str(left): ratio for left, ratio in ratios.items()}


def plausibility(rows: List[Mapping[str, Any]]) -> Dict[str, Any]:
    """The checks of the module docstring as a dict with an ``all_passed`` flag."""
    present = {int(merge_hemispheres([int(r["value"])])[0]) for r in rows if float(r["volume_mm3"]) > 0}
    missing = [v for v in EVAL17_FS if v not in present]
    ratios = lr_ratios(rows)
    total_cm3 = sum(float(r["volume_mm3"]) for r in rows) / 1000.0
    ok_ratio = all(r is not None and 0.67 <= r <= 1.5 for r in ratios.values())
    return {"missing_classes": missing, "lr_ratios": ratios, "labelled_cm3": round(total_cm3, 1),
            "all_passed": bool(not missing and ok_ratio and 300 <= total_cm3 <= 2000)}


def evaluate_ct(predictor: Any, data_root: Path, *, montage_path: Optional[Path] = None) -> Dict[str, Any]:
    """The CT-input row."""
    if not has_task(predictor, "seg"):
        return na_row("CT input", "segmentation", GOAL)
    image = datasets.load(data_root, "ct")
    tasks = ["seg"] + (["ct"] if has_task(predictor, "ct") else [])
    pred = predictor.predict(image, tasks=tasks)
    rows = [r for r in pred.tables.get("seg_volumes", []) if float(r.get("volume_mm3", 0)) > 0]
    checks = plausibility(rows)
    if montage_path is not None:
        from brainfm.report.montage import write_montage

        write_montage(image, {k: v for k, v in pred.outputs.items() if k in ("seg", "synth_ct")}, montage_path)
    return row("CT input", metrics={"structure_volumes": rows, "checks": checks}, goal=GOAL,
               passed=checks["all_passed"], note="heuristic checks; confirm on the montage",
               headline=f"{len(rows)} structures, {checks['labelled_cm3']} cm^3 labelled, "
                        f"L/R ratios {checks['lr_ratios']}, missing {checks['missing_classes']}")
