"""Synthesis row: T1->T2, T1->FLAIR, T2->T1, FLAIR->T1 on the co-registered stroke trio.

Each synthesis is fitted linearly to the real target inside the brain (both images non-zero: the
trio is brain-extracted) and scored by PSNR and SSIM there (:func:`metrics.fitted_scores`). The
baseline is the input image itself after the same fit; the goal is to beat it on every pair.
The product's synthesis is measured (``synth_method`` auto); when that was fitted to the scan
(:mod:`brainfm.tasks.synthfit`), the model's head is scored beside it (``head`` of each pair).

>>> PAIRS[0], TASK_OF["T2"]
(('T1', 'T2'), 't2')
>>> import numpy as np
>>> t = np.random.default_rng(0).random((12, 12, 12)) + 0.1
>>> sorted(baseline_scores(t, t))
['psnr', 'ssim']
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from brainfm.evaluation import datasets
from brainfm.evaluation.metrics import fitted_scores
from brainfm.evaluation.rows import HEAD_WORDS, has_task, na_row, row
from brainfm.tasks.synthesis import METHOD_NAMES as SYNTH_METHOD_NAMES

GOAL = "beat the baseline (input after the same linear fit) on every pair, PSNR and SSIM"
PAIRS: Tuple[Tuple[str, str], ...] = (("T1", "T2"), ("T1", "FLAIR"), ("T2", "T1"), ("FLAIR", "T1"))
TASK_OF = {"T1": "t1", "T2": "t2", "FLAIR": "flair"}
OUTPUT_OF = {"T1": "synth_t1", "T2": "synth_t2", "FLAIR": "synth_flair"}


def brain_mask(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Voxels where both (brain-extracted) images are non-zero."""
    return (np.asarray(source) > 0) & (np.asarray(target) > 0)


def baseline_scores(source: np.ndarray, target: np.ndarray) -> Dict[str, float]:
    """PSNR/SSIM of the input itself after the linear fit (the anchor of every pair)."""
    return fitted_scores(source, target, brain_mask(source, target))


def score_synthesis(predictor: Any, source: Any, target: Any, contrast: str,
                    **predict_options: Any) -> Tuple[Dict[str, float], Any]:
    """``(scores, prediction)``: ``predictor`` synthesises ``contrast`` (``"T1"``, ``"T2"`` or ``"FLAIR"``)
    from the Volume ``source``, scored against the Volume ``target`` by PSNR / SSIM after the linear fit
    inside :func:`brain_mask`. ``predict_options`` go to ``predict`` (e.g. ``synth_method="head"``)."""
    pred = predictor.predict(source, tasks=[TASK_OF[contrast]], **predict_options)
    src, tgt = np.asarray(source.data, np.float64), np.asarray(target.data, np.float64)
    return fitted_scores(np.asarray(pred[OUTPUT_OF[contrast]].data, np.float64), tgt, brain_mask(src, tgt)), pred


def trio_paths(data_root: Path) -> Dict[str, Path]:
    """{"T1": path, "T2": path, "FLAIR": path} of the stroke subject's co-registered scans."""
    return {c: datasets.data_path(data_root, f"stroke_{c.lower()}") for c in ("T1", "T2", "FLAIR")}


def load_trio(data_root: Path) -> Dict[str, Any]:
    """{"T1": Volume, "T2": Volume, "FLAIR": Volume} of the stroke subject (:func:`trio_paths`)."""
    from brainfm.io import read_volume

    return {c: read_volume(path) for c, path in trio_paths(data_root).items()}


def measure_baselines(data_root: Path) -> Dict[str, Dict[str, float]]:
    """Baseline scores of the 4 pairs, keyed ``"T1->T2"`` etc."""
    trio = load_trio(data_root)
    return {f"{s}->{t}": baseline_scores(np.asarray(trio[s].data, np.float64), np.asarray(trio[t].data, np.float64))
            for s, t in PAIRS}


def mean_ssim(predictor: Any, data_root: Path) -> Optional[float]:
    """Mean SSIM (after the linear fit, in the brain) of the product's synthesis over the four pairs of
    :data:`PAIRS`: the synthesis figure of :func:`brainfm.evaluation.quality.measure_quality`; None when
    the model lacks a head of one of the target contrasts."""
    if not all(has_task(predictor, TASK_OF[t]) for _, t in PAIRS):
        return None
    trio = load_trio(data_root)
    return float(np.mean([score_synthesis(predictor, trio[s], trio[t], t)[0]["ssim"] for s, t in PAIRS]))


def evaluate_synthesis(predictor: Any, data_root: Path, *, anchors: Optional[Dict[str, Any]] = None,
                       montage_path: Optional[Path] = None) -> Dict[str, Any]:
    """The synthesis row; pairs whose target head is missing are reported as n/a."""
    needed = sorted({TASK_OF[t] for _, t in PAIRS})
    if not any(has_task(predictor, t) for t in needed):
        return na_row("synthesis", "T1/T2/FLAIR", GOAL)
    trio = load_trio(data_root)
    pairs: Dict[str, Any] = {}
    baselines: Dict[str, Any] = {}
    montage: Dict[str, Any] = {}
    beat_all = True
    for s, t in PAIRS:
        key = f"{s}->{t}"
        src, tgt = np.asarray(trio[s].data, np.float64), np.asarray(trio[t].data, np.float64)
        base = baseline_scores(src, tgt)
        baselines[key] = base
        if not has_task(predictor, TASK_OF[t]):
            pairs[key] = {"status": f"n/a: model has no {HEAD_WORDS[TASK_OF[t]]} head"}
            beat_all = False
            continue
        sc, pred = score_synthesis(predictor, trio[s], trio[t], t)
        out = pred[OUTPUT_OF[t]]
        beat = sc["psnr"] > base["psnr"] and sc["ssim"] > base["ssim"]
        beat_all = beat_all and beat
        pairs[key] = {**sc, "baseline": base, "beats_baseline": bool(beat),
                      "method": pred.metadata.get("synth_method")}
        if pred.metadata.get("synth_method") == SYNTH_METHOD_NAMES["fit"]:
            pairs[key]["head"] = score_synthesis(predictor, trio[s], trio[t], t, synth_method="head")[0]
        montage[f"{s}_to_{t}"] = out
    if montage_path is not None and montage:
        from brainfm.report.montage import write_montage

        # the 8-bit real images would be drawn as label maps: show them as float images
        real = {f"real_{c}": trio[c].with_data(np.asarray(trio[c].data, np.float32)) for c in ("T2", "FLAIR")}
        write_montage(trio["T1"], {**real, **montage}, montage_path)
    anchor = {"baseline": baselines, "stored": dict((anchors or {}).get("synthesis_baseline", {}))}
    parts = [f"{k} {v['psnr']:.1f}/{v['ssim']:.3f} (base {v['baseline']['psnr']:.1f}/{v['baseline']['ssim']:.3f}"
             + (f"; head {v['head']['psnr']:.1f}/{v['head']['ssim']:.3f}" if "head" in v else "") + ")"
             for k, v in pairs.items() if "psnr" in v]
    methods = {v["method"] for v in pairs.values() if v.get("method")}
    how = f"{methods.pop()}: " if len(methods) == 1 else ""
    return row("synthesis", metrics={"pairs": pairs}, anchor=anchor, goal=GOAL, passed=beat_all,
               headline=f"{how}PSNR dB/SSIM: " + "; ".join(parts) if parts else "n/a")
