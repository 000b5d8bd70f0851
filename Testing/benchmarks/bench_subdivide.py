"""Cost of taking a 2 mm model's outputs to a 1 mm grid, side by side in one process.

The bundled model works on a 2 mm grid; its outputs are sampled on the 1 mm output grid. When that grid
subdivides the 2 mm grid along its axes (a 1 mm input in any axis order), the mapper samples without
``grid_sample`` (:mod:`brainfm.geometry.subdivide`). The anchor is the general path (``grid_sample``
on the cached sampling grid), forced by turning the subdivision off, with everything else equal.

Predictions (``Predictor.predict``, best of ``--repeats``):

- ``seg`` on the voxelmorph real T1 (160 x 192 x 224, 1 mm): refinement included (its prior is sampled
  at 1.9 M labelled voxels);
- ``all`` tasks on the same scan, with the atlas;
- ``reg`` on the registration row's first held-out rendering (256^3, 1 mm), with the atlas.

For each: seconds with the anchor and with the product, the ratio, and how the outputs differ (label
voxels that differ; the largest absolute difference of the float outputs).

    python Testing/benchmarks/bench_subdivide.py [--repeats 2] [--threads 2]

Prints one JSON object and writes it to Testing/benchmarks/results/subdivide.json. Needs ../shared/data.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from benchcommon import best_of, emit, parser


def _differences(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for name in a:
        x, y = a[name], b[name]
        if x.dtype.kind in "iu":
            out[name] = {"voxels_differing": int((x != y).sum())}
        else:
            out[name] = {"max_abs_difference": float(np.abs(x.astype(np.float64) - y).max())}
    return out


def main(argv: List[str] = None) -> int:
    args = parser(__doc__, out_name="subdivide.json", repeats=2,
                  repeats_help="best of this many predictions per variant").parse_args(argv)

    import torch

    import brainfm.geometry.mapping as mapping
    from brainfm.evaluation import datasets
    from brainfm.evaluation.registration import held_out_pair
    from brainfm.inference import Predictor
    from brainfm.inference.preprocess import load_image

    torch.set_num_threads(args.threads)
    root = Path(args.data)
    scan = datasets.load(root, "voxelmorph_vol")
    atlas_path = datasets.data_path(root, "atlas")
    rendering = held_out_pair(root)[2]
    predictor = Predictor.from_pretrained("bundled", device="cpu", threads=args.threads)
    predictor.atlas_labels(load_image(atlas_path))  # once per model (cached), not part of the timings
    predictor.predict(scan, tasks=["seg"])  # warm-up
    cases = {
        "seg": (scan, ["seg"]),
        "all": (scan, ["t1", "t2", "flair", "ct", "seg", "dist", "bias", "reg"]),
        "reg": (rendering, ["reg"]),
    }
    product = mapping.Subdivision.of
    rows: Dict[str, Dict[str, Any]] = {}
    for name, (image, tasks) in cases.items():
        timings, outputs = {}, {}
        for variant in ("anchor (grid_sample)", "product"):
            mapping.Subdivision.of = product if variant == "product" else (lambda *a, **k: None)
            try:
                seconds, pred = best_of(lambda: predictor.predict(image, tasks=tasks, atlas=atlas_path), args.repeats)
            finally:
                mapping.Subdivision.of = product
            timings[variant] = round(seconds, 2)
            outputs[variant] = {k: np.asarray(v.data) for k, v in pred.outputs.items()}
        rows[name] = {"seconds": timings, "speedup": round(timings["anchor (grid_sample)"] / timings["product"], 2),
                      "outputs": _differences(outputs["anchor (grid_sample)"], outputs["product"])}
    summary = {"model": predictor._model_meta().get("name"), "threads": args.threads,
               "cpu": torch.backends.cpu.get_cpu_capability(), "cases": rows}
    emit(summary, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
