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

With ``--lesions`` the user's one label is "Lesion": every map (training and held-out) gets lesions
painted into its cerebral white matter (the generator's PEPSI-style masks: thresholded smooth noise,
fixed seeds, FreeSurfer label 77) before it is rendered, so they are bright on the FLAIR as white-matter
hyperintensities are. The base model has no lesion class; reported for it is what it labels the lesion
voxels instead.

    python Testing/benchmarks/bench_finetune.py [--steps 150] [--own-labels | --lesions] [--paths cached per-step]
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from benchcommon import emit, parser, rician
from brainfm.generator.labels import LESION_LABEL

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


#: a user's own labels: value -> (name, the FreeSurfer labels it stands for)
LabelSet = Dict[int, Tuple[str, Tuple[int, ...]]]
OWN_LABELS: LabelSet = {1: ("Hippocampus", (17, 53)), 2: ("Thalamus", (10, 49))}
LESION_LABELS: LabelSet = {1: ("Lesion", (LESION_LABEL,))}


def own(labels: np.ndarray, label_set: LabelSet = OWN_LABELS) -> np.ndarray:
    """The FreeSurfer labels as the user's own: ``label_set``'s values, 0 elsewhere."""
    out = np.zeros(np.shape(labels), np.int16)
    for value, (_name, fs) in label_set.items():
        out[np.isin(labels, fs)] = value
    return out


def with_lesions(labels: Any, seed: int) -> Any:
    """``labels`` (a FreeSurfer label Volume) with PEPSI-style lesions in its cerebral white matter
    (:func:`brainfm.generator.pathology.lesion_mask`, control grid 0.06 of the size, 2 std), label 77."""
    import torch

    from brainfm.generator.pathology import lesion_mask

    lab = np.asarray(labels.data)
    wm = torch.from_numpy(np.isin(lab, (2, 41)))[None, None]
    mask = lesion_mask(wm, torch.Generator().manual_seed(seed), scale=0.06, threshold=2.0)[0, 0].numpy()
    return labels.with_data(np.where(mask, LESION_LABEL, lab).astype(np.int32))


def own_dice(predictor: Any, images: List[Any], truths: List[np.ndarray], *, fs_labels: bool,
             label_set: LabelSet = OWN_LABELS) -> Dict[str, float]:
    """Held-out Dice of each own label (the predictions of a FreeSurfer model mapped with :func:`own`)."""
    from brainfm.metrics import dice_per_label

    scores: Dict[str, List[float]] = {name: [] for name, _ in label_set.values()}
    for img, truth in zip(images, truths):
        seg = np.asarray(predictor.predict(img, tasks=["seg"])["seg"].data)
        per = dice_per_label(own(seg, label_set) if fs_labels else seg, own(truth, label_set),
                             labels=list(label_set))
        for value, (name, _fs) in label_set.items():
            scores[name].append(float(per[value]))
    return {name: round(float(np.mean(v)), 4) for name, v in scores.items()}


def labelled_as(predictor: Any, images: List[Any], truths: List[np.ndarray], value: int) -> Dict[str, float]:
    """What ``predictor`` labels the voxels of FreeSurfer label ``value``: the share of each label
    (its FreeSurfer name) over all held-out images, the three largest."""
    from brainfm.labels.freesurfer import fs_name

    counts: Dict[int, int] = {}
    for img, truth in zip(images, truths):
        seg = np.asarray(predictor.predict(img, tasks=["seg"])["seg"].data)[np.asarray(truth) == value]
        for label, n in zip(*np.unique(seg, return_counts=True)):
            counts[int(label)] = counts.get(int(label), 0) + int(n)
    total = max(sum(counts.values()), 1)
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:3]
    return {fs_name(label): round(n / total, 3) for label, n in top}


#: the ways of fine-tuning compared: ``brainfm finetune``'s mode, whether it caches the backbone's features
#: and whether the new head reads the input image beside the feature (``head_image``; None: the default)
PATHS = {"cached": ("head", True, None), "per-step": ("head", False, None), "encoder": ("encoder", False, None),
         "cached-features-only": ("head", True, False)}


def main(argv: List[str]) -> int:
    ap = parser(__doc__, out_name="finetune.json", repeats=1)
    ap.add_argument("--steps", type=int, default=150)
    kind = ap.add_mutually_exclusive_group()
    kind.add_argument("--own-labels", action="store_true", help="fine-tune for two labels of a user's own")
    kind.add_argument("--lesions", action="store_true",
                      help="fine-tune for one label of a user's own, lesions painted into the white matter")
    ap.add_argument("--head-hidden", type=int, default=None,
                    help="width of the new head's hidden layer (default: brainfm finetune's; 0: a plain head)")
    ap.add_argument("--lr", type=float, default=None, help="learning rate (default: brainfm finetune's)")
    ap.add_argument("--foreground-share", type=float, default=None,
                    help="share of each cached sample's voxels drawn from labelled voxels (default: the product's)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="training config override, as brainfm finetune --set")
    ap.add_argument("--paths", nargs="+", choices=tuple(PATHS), default=["cached", "per-step"],
                    help="cached: the backbone's features computed once per image (the default of "
                         "brainfm finetune); per-step: the backbone runs at every step, on random crops; "
                         "encoder: mode encoder (the decoder trains too), on random crops; cached-features-only: "
                         "cached, the new head reading the features alone (--no-head-image)")
    args = ap.parse_args(argv)
    label_set = LESION_LABELS if args.lesions else OWN_LABELS if args.own_labels else None
    if label_set is not None and args.out.endswith("finetune.json"):
        args.out = args.out[: -len(".json")] + ("_lesions.json" if args.lesions else "_own_labels.json")
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
    if args.lesions:
        held = [with_lesions(v, seed) for seed, v in enumerate(held, start=100)]
    images, truths = [flair(v, rng) for v in held], [np.asarray(v.data) for v in held]
    base = Predictor.from_pretrained("bundled", device="cpu", threads=args.threads)
    if args.lesions:   # the base model has no lesion class
        before = {"lesion_voxels_labelled_as": labelled_as(base, images, truths, LESION_LABEL),
                  "heldout_lesion_ml": [round(float(np.sum(t == LESION_LABEL)) * float(np.prod(v.spacing)) / 1000, 1)
                                        for t, v in zip(truths, held)]}
    elif args.own_labels:
        before = own_dice(base, images, truths, fs_labels=True)
    else:
        before = score(base, images, truths)
    with tempfile.TemporaryDirectory(prefix="brainfm-bench-ft-") as tmp:
        folder = Path(tmp) / "data"
        for sub in ("images", "labels"):
            (folder / sub).mkdir(parents=True)
        for seed, name in enumerate(OWN, start=1):
            labels = own_labels(data, name)
            if args.lesions:
                labels = with_lesions(labels, seed)
            write_volume(flair(labels, rng), folder / "images" / f"{name}.nii.gz")
            write_volume(labels.with_data(own(labels.data, label_set)) if label_set is not None else labels,
                         folder / "labels" / f"{name}.nii.gz")
        scheme = "fs33"
        if label_set is not None:
            scheme = str(Path(tmp) / "mine.txt")
            Path(scheme).write_text("".join(f"{v} {n} {40 * v} {200 - 40 * v} 120 0\n"
                                            for v, (n, _fs) in label_set.items()))
        runs: Dict[str, Any] = {}
        for path in args.paths:
            t0 = time.perf_counter()
            mode, cached, image = PATHS[path]
            res = finetune("bundled", folder, Path(tmp) / path, task="seg", mode=mode, steps=args.steps,
                           device="cpu", name="bench-finetuned", label_scheme=scheme,
                           feature_cache=cached, head_hidden=args.head_hidden, lr=args.lr, overrides=args.overrides,
                           **({} if image is None else {"head_image": image}),
                           **({} if args.foreground_share is None else {"foreground_share": args.foreground_share}))
            seconds = time.perf_counter() - t0
            tuned = Predictor.from_pretrained(str(res.native_model), device="cpu", threads=args.threads)
            after = (own_dice(tuned, images, truths, fs_labels=False, label_set=label_set) if label_set is not None
                     else score(tuned, images, truths))
            moved = None
            if label_set is None:
                t1_base, t1_tuned = before["t1"], after.pop("t1")
                moved = float(np.max(np.abs(t1_base - t1_tuned))) if t1_base.shape == t1_tuned.shape else None
            runs[path] = {"finetune_seconds": round(seconds, 1), "seconds_per_step": round(seconds / args.steps, 3),
                          "finetuned": after, "synthetic_t1_largest_change": moved,
                          "val": {k: round(float(v), 4) for k, v in (res.val or {}).items()},
                          "prior_weight": res.prior_weight}
    before.pop("t1", None)
    emit({"steps": args.steps, "threads": args.threads, "head_hidden": args.head_hidden, "lr": args.lr,
          "foreground_share": args.foreground_share, "overrides": args.overrides,
          "labels": "own: " + ", ".join(n for n, _ in label_set.values()) if label_set is not None else "fs33",
          "base": before, **runs}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
