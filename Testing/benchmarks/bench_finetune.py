"""Fine-tuning the bundled model's segmentation head on your own labelled scans: what it buys.

The "own scans" are training label maps 01-04 rendered as FLAIR (the standard protocol, a 1 mm Gaussian
blur and Rician noise of 3 % of the brightest tissue), with those maps as their labels. The held-out maps
19 and 20, rendered the same way, score the result. ``brainfm.training.finetune.finetune`` trains a new
segmentation head (mode ``head``: the rest of the network frozen) for ``--steps`` steps, once on cached
features (the backbone's feature of each image computed once, the default) and once running the
backbone at every step (the way it was done before), side by side in one run. ``--paths encoder`` adds
mode ``encoder``: the decoder trains with the new head (the encoder frozen), on random crops.

Reported for the base model and the fine-tuned one: merged-17 Dice of the model's own labels
(``seg_method`` ``head``) and of the product's labels (the default) on the held-out renderings; the grid
each works on; and how far an output that fine-tuning did not retrain, the synthetic T1, moved (largest
absolute difference, the images being 0-1).

With ``--own-labels`` the labels are the user's own instead: 1 "Hippocampus" (both sides) and 2
"Thalamus" (both sides), named by a FreeSurfer LUT (``--label-scheme`` a table); reported is the Dice
of each on the held-out renderings (the base model's own hippocampus and thalamus labels, merged the
same way, for comparison).

    python Testing/benchmarks/bench_finetune.py [--steps 150] [--own-labels] [--paths cached per-step]
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


OWN_LABELS = {1: ("Hippocampus", (17, 53)), 2: ("Thalamus", (10, 49))}


def own(labels: np.ndarray) -> np.ndarray:
    """The FreeSurfer labels as the user's own: ``OWN_LABELS``' values, 0 elsewhere."""
    out = np.zeros(np.shape(labels), np.int16)
    for value, (_name, fs) in OWN_LABELS.items():
        out[np.isin(labels, fs)] = value
    return out


def own_dice(predictor: Any, images: List[Any], truths: List[np.ndarray], *, fs_labels: bool) -> Dict[str, float]:
    """Held-out Dice of each own label (the predictions of a FreeSurfer model mapped with :func:`own`)."""
    from brainfm.metrics import dice_per_label

    scores: Dict[str, List[float]] = {name: [] for name, _ in OWN_LABELS.values()}
    for img, truth in zip(images, truths):
        seg = np.asarray(predictor.predict(img, tasks=["seg"])["seg"].data)
        per = dice_per_label(own(seg) if fs_labels else seg, own(truth), labels=list(OWN_LABELS))
        for value, (name, _fs) in OWN_LABELS.items():
            scores[name].append(float(per[value]))
    return {name: round(float(np.mean(v)), 4) for name, v in scores.items()}


#: the ways of fine-tuning compared: ``brainfm finetune``'s mode and whether it caches the backbone's features
PATHS = {"cached": ("head", True), "per-step": ("head", False), "encoder": ("encoder", False)}


def main(argv: List[str]) -> int:
    ap = parser(__doc__, out_name="finetune.json", repeats=1)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--own-labels", action="store_true", help="fine-tune for two labels of a user's own")
    ap.add_argument("--head-hidden", type=int, default=None,
                    help="width of the new head's hidden layer (default: brainfm finetune's; 0: a plain head)")
    ap.add_argument("--paths", nargs="+", choices=tuple(PATHS), default=["cached", "per-step"],
                    help="cached: the backbone's features computed once per image (the default of "
                         "brainfm finetune); per-step: the backbone runs at every step, on random crops; "
                         "encoder: mode encoder (the decoder trains too), on random crops")
    args = ap.parse_args(argv)
    if args.own_labels and args.out.endswith("finetune.json"):
        args.out = args.out[: -len(".json")] + "_own_labels.json"
    import torch

    from brainfm.evaluation import datasets
    from brainfm.inference import Predictor
    from brainfm.io import write_volume
    from brainfm.training.finetune import HEAD_HIDDEN, finetune

    torch.set_num_threads(args.threads)
    if args.head_hidden is None:
        args.head_hidden = HEAD_HIDDEN
    data, rng = Path(args.data), np.random.default_rng(0)
    held = [datasets.load_labels(data, n) for n in datasets.held_out_names()]
    images, truths = [flair(v, rng) for v in held], [np.asarray(v.data) for v in held]
    base = Predictor.from_pretrained("bundled", device="cpu", threads=args.threads)
    before = own_dice(base, images, truths, fs_labels=True) if args.own_labels else score(base, images, truths)
    with tempfile.TemporaryDirectory(prefix="brainfm-bench-ft-") as tmp:
        folder = Path(tmp) / "data"
        for sub in ("images", "labels"):
            (folder / sub).mkdir(parents=True)
        for name in OWN:
            labels = own_labels(data, name)
            write_volume(flair(labels, rng), folder / "images" / f"{name}.nii.gz")
            write_volume(labels.with_data(own(labels.data)) if args.own_labels else labels,
                         folder / "labels" / f"{name}.nii.gz")
        scheme = "fs33"
        if args.own_labels:
            scheme = str(Path(tmp) / "mine.txt")
            Path(scheme).write_text("".join(f"{v} {n} {40 * v} {200 - 40 * v} 120 0\n"
                                            for v, (n, _fs) in OWN_LABELS.items()))
        runs: Dict[str, Any] = {}
        for path in args.paths:
            t0 = time.perf_counter()
            mode, cached = PATHS[path]
            res = finetune("bundled", folder, Path(tmp) / path, task="seg", mode=mode, steps=args.steps,
                           device="cpu", name="bench-finetuned", label_scheme=scheme,
                           feature_cache=cached, head_hidden=args.head_hidden)
            seconds = time.perf_counter() - t0
            tuned = Predictor.from_pretrained(str(res.native_model), device="cpu", threads=args.threads)
            after = (own_dice(tuned, images, truths, fs_labels=False) if args.own_labels
                     else score(tuned, images, truths))
            moved = None
            if not args.own_labels:
                t1_base, t1_tuned = before["t1"], after.pop("t1")
                moved = float(np.max(np.abs(t1_base - t1_tuned))) if t1_base.shape == t1_tuned.shape else None
            runs[path] = {"finetune_seconds": round(seconds, 1), "seconds_per_step": round(seconds / args.steps, 3),
                          "finetuned": after, "synthetic_t1_largest_change": moved,
                          "val": {k: round(float(v), 4) for k, v in (res.val or {}).items()}}
    before.pop("t1", None)
    emit({"steps": args.steps, "threads": args.threads, "head_hidden": args.head_hidden,
          "labels": "own: " + ", ".join(n for n, _ in OWN_LABELS.values()) if args.own_labels else "fs33",
          "base": before, **runs}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
