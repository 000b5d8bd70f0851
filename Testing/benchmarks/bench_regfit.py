"""The registration fitted to the segmentations: what each of its settings buys, side by side.

The registration row's measurement (held-out map 19's labels carried through the atlas to map 20, both
rendered as T1; :func:`brainfm.evaluation.registration.carry_labels`) for the bundled model's fitted
map (``reg_method`` ``fit``, :mod:`brainfm.tasks.regfit`), with:

- the labels it fits: the product's (refined to the scan) or the model's own (``seg_method`` ``head``);
- the test-time flip of the network on or off (about half of the network's time);
- the demons: ``iterations`` (15, 30 = the product, 60), ``grid_mm`` (2 = the product, 3) and the field
  smoothing (1 = the product, 1.5 grid voxels).

Per setting: carried Dice (31 L/R labels, merged 17), the segmentation's seconds per image and the
fit's. The segmentation of the atlas is done once per setting of the flip, before.

    python Testing/benchmarks/bench_regfit.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from benchcommon import emit, parser

DEMONS = ({}, {"iterations": 15}, {"iterations": 60}, {"grid_mm": 3.0}, {"smoothing": 1.5})


def main(argv: List[str]) -> int:
    ap = parser(__doc__, out_name="regfit.json", repeats=1)
    args = ap.parse_args(argv)
    from brainfm.evaluation import datasets
    from brainfm.evaluation.registration import carry_labels, held_out_pair
    from brainfm.evaluation.segmentation import dice_report
    from brainfm.inference import Predictor
    from brainfm.inference.preprocess import load_image
    from brainfm.tasks import regfit
    from brainfm.tasks.registration import world_points
    from brainfm.volume import Volume

    data = Path(args.data)
    lab_a, lab_b, img_a, img_b = held_out_pair(data)
    atlas = load_image(datasets.data_path(data, "atlas"))
    worlds = tuple(world_points(img.affine, img.shape) for img in (img_a, img_b))
    masks = (np.asarray(img_a.data) > 0, np.asarray(img_b.data) > 0)
    rows: List[Dict[str, Any]] = []
    for flip in (True, False):
        predictor = Predictor.from_pretrained("bundled", device="cpu", threads=args.threads, test_time_flip=flip)
        atlas_labels = predictor.atlas_labels(atlas)
        predictor.predict(img_a, tasks=["seg"])  # warm-up: the first prediction's one-time costs
        for seg_method in ("fit", "head"):
            labels, seg_seconds = [], []
            for img in (img_a, img_b):
                t0 = time.perf_counter()
                seg = predictor.predict(img, tasks=["seg"], seg_method=seg_method)["seg"]
                seg_seconds.append(time.perf_counter() - t0)
                labels.append(Volume(np.asarray(seg.data).astype(np.int16), seg.affine))
            for demons in DEMONS:
                t0 = time.perf_counter()
                maps = [regfit.fit_atlas_map(lab, atlas_labels, **demons) for lab in labels]
                fit_seconds = (time.perf_counter() - t0) / 2
                moved = carry_labels(np.asarray(lab_a.data), maps[0](worlds[0]), maps[1](worlds[1]),
                                     mask_a=masks[0], mask_b=masks[1])
                rep = dice_report(moved, np.asarray(lab_b.data))
                row = {"test_time_flip": flip, "labels": seg_method, "demons": demons or "the product's",
                       "dice_lr": rep["mean_lr"], "dice_merged17": rep["mean_merged17"],
                       "segmentation_seconds_per_image": round(float(np.mean(seg_seconds)), 2),
                       "fit_seconds_per_image": round(fit_seconds, 2)}
                rows.append(row)
                print(row, file=sys.stderr, flush=True)
    emit({"what": "registration fitted to the segmentations: labels, flip and demons settings (bundled model)",
          "threads": args.threads, "rows": rows}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
