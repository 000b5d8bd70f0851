"""Cortical distance maps of the bundled model against distances computed from FreeSurfer labels.

The distance targets the model trains on are signed distances (mm, negative inside, clamped to +-3 mm)
to the pial and white surfaces of a label map (:func:`brainfm.generator.distance.distance_maps`). The
same function of a scan's true labels is the reference here: the voxelmorph real T1 with its FreeSurfer
aseg, and the two held-out label maps rendered as T1 (the quality level's images). Two ways to get the
maps are compared:
- ``head``: the model's distance head (the product's ``dist_*`` outputs);
- ``labels``: the same function of the product's segmentation (labels refined to the scan).

Per map (lp, lw, rp, rw): the mean absolute error in mm and the share of voxels on the wrong side of
the surface, both within the band where the reference or the estimate is inside +-3 mm.

    python Testing/benchmarks/bench_distance.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from benchcommon import emit, parser

MAPS = ("lp", "lw", "rp", "rw")
CLIP_MM = 3.0


def errors(estimate: np.ndarray, reference: np.ndarray, *, clip: float = CLIP_MM) -> Dict[str, float]:
    """Mean absolute error (mm) and the share of voxels whose sign differs, within the band where
    either map is inside +-``clip`` mm."""
    band = (np.abs(reference) < clip) | (np.abs(estimate) < clip)
    return {"mae_mm": round(float(np.abs(estimate - reference)[band].mean()), 4),
            "wrong_side": round(float((np.sign(estimate) != np.sign(reference))[band].mean()), 4)}


def main(argv: List[str]) -> int:
    ap = parser(__doc__, out_name="distance.json", repeats=1)
    args = ap.parse_args(argv)
    from brainfm.evaluation import datasets
    from brainfm.evaluation.registration import render_image
    from brainfm.generator.distance import distance_maps
    from brainfm.inference import Predictor

    data = Path(args.data)
    predictor = Predictor.from_pretrained("bundled", device="cpu", threads=args.threads)
    cases: List[Any] = [("voxelmorph T1", datasets.load(data, "voxelmorph_vol"),
                         np.asarray(datasets.load_labels(data, "voxelmorph_seg").data))]
    for name in datasets.held_out_names():
        labels = datasets.load_labels(data, name)
        cases.append((f"{name} rendered as T1", render_image(labels), np.asarray(labels.data)))
    rows: List[Dict[str, Any]] = []
    for name, image, truth in cases:
        reference = distance_maps(truth, clip=CLIP_MM)
        pred = predictor.predict(image, tasks=["seg", "dist"])
        t0 = time.perf_counter()
        from_labels = distance_maps(np.asarray(pred["seg"].data), clip=CLIP_MM)
        seconds = round(time.perf_counter() - t0, 2)
        for c, surface in enumerate(MAPS):
            head = np.asarray(pred[f"dist_{surface}"].data)
            row = {"image": name, "surface": surface, "head": errors(head, reference[c]),
                   "labels": errors(from_labels[c], reference[c]), "labels_seconds_all_maps": seconds}
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
    summary: Dict[str, Dict[str, float]] = {}
    for r in rows:
        for way in ("head", "labels"):
            summary.setdefault(f"{r['image']}, {way}", {}).setdefault("mae_mm", 0.0)
            summary[f"{r['image']}, {way}"]["mae_mm"] += r[way]["mae_mm"] / len(MAPS)
            summary[f"{r['image']}, {way}"].setdefault("wrong_side", 0.0)
            summary[f"{r['image']}, {way}"]["wrong_side"] += r[way]["wrong_side"] / len(MAPS)
    emit({"what": "cortical distance maps against distances from the true labels (bundled model)",
          "threads": args.threads, "band_mm": CLIP_MM,
          "mean_of_the_maps": {k: {m: round(v, 4) for m, v in d.items()} for k, d in summary.items()},
          "rows": rows}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
