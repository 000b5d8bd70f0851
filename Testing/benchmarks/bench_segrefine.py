"""Cost of refining the segmentation to the scan's intensities (``seg_method="fit"``), side by side in one process.

On the voxelmorph real T1 (1 mm, 160 x 192 x 224) with the bundled compact model, ``Predictor.predict(tasks=["seg"])``:

- ``head``: the model's labels (no refinement);
- ``fit``: refined, the model's probabilities sampled at the labelled voxels only
  (``TaskContext.channels_at_output`` through ``GridMapper.points``), the product's path;
- ``fit, whole grid``: refined, the probabilities mapped onto the whole output grid and then read at the
  labelled voxels (the anchor: the path before ``GridMapper.points``; the context without ``output_points``).

For each: best wall seconds of the whole prediction, seconds inside the refinement, peak memory traced by
``tracemalloc`` (NumPy arrays) and merged-17 Dice against the scan's FreeSurfer labels. Both refined variants must
give the same labels (the benchmark reports how many voxels differ).

    python Testing/benchmarks/bench_segrefine.py [--repeats 2] [--threads 2]

Prints one JSON object and writes it to Testing/benchmarks/results/segrefine.json. Needs ../shared/data.
"""
from __future__ import annotations

import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from benchcommon import emit, parser


def main(argv: List[str] = None) -> int:
    args = parser(__doc__, out_name="segrefine.json", repeats=2,
                  repeats_help="best of this many predictions per variant").parse_args(argv)

    import torch

    import brainfm.tasks.segmentation as segmentation
    from brainfm.evaluation import datasets
    from brainfm.evaluation.segmentation import dice_report
    from brainfm.inference import Predictor

    torch.set_num_threads(args.threads)
    root = Path(args.data)
    image = datasets.load(root, "voxelmorph_vol")
    truth = np.asarray(datasets.load_labels(root, "voxelmorph_seg").data)
    predictor = Predictor.from_pretrained("bundled", device="cpu", threads=args.threads)
    original = segmentation.refine
    state: Dict[str, Any] = {"whole_grid": False, "refine_s": 0.0}

    def timed_refine(ctx, idx_out, logits, *, lut):
        if state["whole_grid"]:
            ctx.output_points = None  # the anchor: map onto the whole output grid, then read the voxels
        t0 = time.perf_counter()
        try:
            return original(ctx, idx_out, logits, lut=lut)
        finally:
            state["refine_s"] = time.perf_counter() - t0

    segmentation.refine = timed_refine
    rows: Dict[str, Dict[str, Any]] = {}
    labels: Dict[str, np.ndarray] = {}
    variants = [("head", "head", False), ("fit", "fit", False), ("fit, whole grid", "fit", True)]
    try:
        predictor.predict(image, tasks=["seg"], seg_method="head")  # warm-up (weights, threads)
        for name, method, whole in variants:
            best, refine_s, peak = float("inf"), float("inf"), 0.0
            for _ in range(max(1, args.repeats)):
                state.update(whole_grid=whole, refine_s=0.0)
                tracemalloc.start()
                t0 = time.perf_counter()
                seg = predictor.predict(image, tasks=["seg"], seg_method=method)["seg"]
                best = min(best, time.perf_counter() - t0)
                peak = max(peak, tracemalloc.get_traced_memory()[1] / 1e6)
                tracemalloc.stop()
                refine_s = min(refine_s, state["refine_s"])
            labels[name] = np.asarray(seg.data)
            rows[name] = {"predict_s": round(best, 2), "refine_s": round(refine_s, 2) if method == "fit" else None,
                          "peak_mb": round(peak, 1), "dice17": round(float(dice_report(labels[name], truth)["mean_merged17"]), 4)}
    finally:
        segmentation.refine = original
    summary: Dict[str, Any] = {
        "image": "voxelmorph real T1", "shape": list(image.shape), "model": predictor._model_meta().get("name"),
        "threads": args.threads, "cpu": torch.backends.cpu.get_cpu_capability(), "variants": rows,
        "voxels_differing_fit_vs_whole_grid": int((labels["fit"] != labels["fit, whole grid"]).sum()),
        "refine_speedup_vs_whole_grid": round(rows["fit, whole grid"]["refine_s"] / rows["fit"]["refine_s"], 2),
    }
    emit(summary, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
