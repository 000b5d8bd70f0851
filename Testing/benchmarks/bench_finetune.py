"""Fine-tuning the bundled model's segmentation head on your own labelled scans: what it buys.

The "own scans" are training label maps 01-04 rendered as FLAIR (the standard protocol, a 1 mm Gaussian
blur and Rician noise of 3 % of the brightest tissue), with those maps as their labels. The held-out maps
19 and 20, rendered the same way, score the result. ``brainfm.training.finetune.finetune`` trains a new
segmentation head (mode ``head``: the rest of the network frozen) for ``--steps`` steps.

Reported for the base model and the fine-tuned one: merged-17 Dice of the model's own labels
(``seg_method`` ``head``) and of the product's labels (the default) on the held-out renderings; the grid
each works on; and how far an output that fine-tuning did not retrain, the synthetic T1, moved (largest
absolute difference, the images being 0-1).

    python Testing/benchmarks/bench_finetune.py [--steps 150]
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from benchcommon import emit, parser, rician

OWN = ("training_seg_01", "training_seg_02", "training_seg_03", "training_seg_04")


def flair(labels: Any, rng: np.random.Generator) -> Any:
    """``labels`` (a label Volume) rendered as a blurred, noisy standard FLAIR."""
    from scipy.ndimage import gaussian_filter

    from brainfm.generator.physics import STANDARD_PROTOCOLS, nominal_params, paint_labels, render

    img = paint_labels(np.asarray(labels.data), render(nominal_params(), STANDARD_PROTOCOLS["FLAIR"]).numpy(),
                       peak=200.0)
    img = rician(gaussian_filter(img, 1.0), 6.0, rng)
    return labels.with_data(img.astype(np.float32))


def own_labels(data: Path, name: str) -> Any:
    """Training label map ``name`` as int32 (``datasets.load_labels`` reads the evaluation data only)."""
    from brainfm.evaluation import datasets
    from brainfm.io import read_volume

    v = read_volume(data / datasets.DATA["label_dir"] / f"{name}.nii.gz")
    return v.with_data(np.rint(np.asarray(v.data)).astype(np.int32))


def score(predictor: Any, images: List[Any], truths: List[np.ndarray]) -> Dict[str, Any]:
    """Held-out merged-17 Dice (own labels, product labels) and the synthetic T1 of the first image."""
    from brainfm.evaluation.segmentation import dice_report

    own, product = [], []
    for img, truth in zip(images, truths):
        own.append(dice_report(np.asarray(predictor.predict(img, tasks=["seg"], seg_method="head")["seg"].data),
                               truth)["mean_merged17"])
        product.append(dice_report(np.asarray(predictor.predict(img, tasks=["seg"])["seg"].data),
                                   truth)["mean_merged17"])
    t1 = np.asarray(predictor.predict(images[0], tasks=["t1"], synth_method="head")["synth_t1"].data, np.float32)
    return {"heldout_own_dice17": round(float(np.mean(own)), 4),
            "heldout_product_dice17": round(float(np.mean(product)), 4),
            "voxel_mm": float(predictor.voxel_mm), "t1": t1}


def main(argv: List[str]) -> int:
    ap = parser(__doc__, out_name="finetune.json", repeats=1)
    ap.add_argument("--steps", type=int, default=150)
    args = ap.parse_args(argv)
    import torch

    from brainfm.evaluation import datasets
    from brainfm.inference import Predictor
    from brainfm.io import write_volume
    from brainfm.training.finetune import finetune

    torch.set_num_threads(args.threads)
    data, rng = Path(args.data), np.random.default_rng(0)
    held = [datasets.load_labels(data, n) for n in datasets.held_out_names()]
    images, truths = [flair(v, rng) for v in held], [np.asarray(v.data) for v in held]
    base = Predictor.from_pretrained("bundled", device="cpu", threads=args.threads)
    before = score(base, images, truths)
    with tempfile.TemporaryDirectory(prefix="brainfm-bench-ft-") as tmp:
        folder = Path(tmp) / "data"
        for sub in ("images", "labels"):
            (folder / sub).mkdir(parents=True)
        for name in OWN:
            labels = own_labels(data, name)
            write_volume(flair(labels, rng), folder / "images" / f"{name}.nii.gz")
            write_volume(labels, folder / "labels" / f"{name}.nii.gz")
        t0 = time.perf_counter()
        res = finetune("bundled", folder, Path(tmp) / "run", task="seg", mode="head", steps=args.steps,
                       device="cpu", name="bench-finetuned")
        seconds = time.perf_counter() - t0
        tuned = Predictor.from_pretrained(str(res.native_model), device="cpu", threads=args.threads)
        after = score(tuned, images, truths)
    t1_base, t1_tuned = before.pop("t1"), after.pop("t1")
    moved = (float(np.max(np.abs(t1_base - t1_tuned))) if t1_base.shape == t1_tuned.shape else None)
    emit({"steps": args.steps, "finetune_seconds": round(seconds, 1), "threads": args.threads,
          "base": before, "finetuned": after, "synthetic_t1_largest_change": moved,
          "val": {k: round(float(v), 4) for k, v in (res.val or {}).items()}}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
