"""The head mask on images with a noisy background: the product's threshold against Otsu's threshold
of the intensities (the anchor, the rule before 2026-12-06), on the same images.

Every training label map (20 whole heads) is rendered six ways: the standard T1, T2, FLAIR and a PD
(spin echo, TR 3 s, TE 15 ms) with the generator's physics, one random physics protocol with jittered
tissue parameters, and one random intensity per label. Each is blurred (0-1 mm), multiplied by a smooth
bias field, given Rician noise (``--noise``, a fraction of the brain's mean) and taken to the model's
2 mm network frame as the product does (normalised, cropped, anti-aliased). Per image and method:
``lost``, the share of the brain (FreeSurfer labels below 100, extra-cerebral CSF left out) outside
the mask; ``outside``, the share of the mask more than 4 mm from the head.

A real scan too: the seg3D MR (whole head, its background exactly zero) with Rician noise of 1, 3 and 6 %
of its brain's mean put into that background. The bundled model segments it with each method's mask;
``kept`` is the share of the labels of the zero-background scan that are still labelled, ``dice17`` the
merged-17 Dice with them.

    python Testing/benchmarks/bench_headmask.py                      # noise 0.5-5 % of the brain's mean
    python Testing/benchmarks/bench_headmask.py --noise 0.08 0.2 --maps 8 --no-real --out .../headmask_noisy.json
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np

from benchcommon import emit, parser, rician

PD = {"kind": "se", "tr": 3.0, "te": 0.015}


def _renderings(files: List[Path], noise: Tuple[float, float], seed: int) -> Iterator[Tuple[str, str, Any]]:
    import torch
    from scipy import ndimage

    from brainfm.generator import physics
    from brainfm.generator.labels import to_compact
    from brainfm.io import read_volume

    rng, g = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    protocols = {**physics.STANDARD_PROTOCOLS, "PD": PD}
    for f in files:
        labels = read_volume(f)
        lab = np.asarray(labels.data).astype(np.int64)
        n_classes = int(to_compact(torch.from_numpy(lab)).max()) + 1  # the classes up to the last one present
        brain = (lab > 0) & (lab < 100)
        for kind in ("T1", "T2", "FLAIR", "PD", "physics", "random"):
            if kind in protocols:
                v = physics.render(physics.nominal_params(), protocols[kind]).numpy()
            elif kind == "physics":
                v = physics.render(physics.jittered_params(g, jitter=0.1)[0], physics.sample_protocol(g)).numpy()
            else:
                v = rng.uniform(0, 1, n_classes)
                v[0] = 0.0
            img = ndimage.gaussian_filter(physics.paint_labels(lab, v), rng.uniform(0, 1))
            axes = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in img.shape], indexing="ij")
            img *= np.exp(rng.uniform(0, 0.3) * sum(rng.normal() * a for a in axes))
            s = rng.uniform(*noise) * float(img[brain].mean())
            img = rician(img, s, rng).astype(np.float32)
            yield f.name.split(".")[0], kind, labels, labels.with_data(img)


def _scores(mask: np.ndarray, truth: np.ndarray) -> Dict[str, float]:
    from scipy import ndimage

    brain = (truth > 0) & (truth < 100) & (truth != 24)
    head = ndimage.binary_dilation(truth > 0, iterations=2)
    return {"lost": round(float((brain & ~mask).sum() / brain.sum()), 5),
            "outside": round(float((mask & ~head).sum() / max(int(mask.sum()), 1)), 5)}


def _real_scan(data: Path, threads: int) -> Dict[str, Any]:
    """The seg3D MR with noise put into its zero background, segmented with each method's head mask."""
    from skimage.filters import threshold_otsu

    import brainfm.inference.predictor as predictor_module
    from brainfm.evaluation import datasets
    from brainfm.evaluation.segmentation import dice_report
    from brainfm.inference import Predictor
    from brainfm.inference.headmask import head_mask

    image = datasets.load(data, "seg3d_mr")
    x = np.asarray(image.data, np.float32)
    predictor = Predictor.from_pretrained("bundled", device="cpu", threads=threads)
    reference = np.asarray(predictor.predict(image, tasks=["seg"])["seg"].data)
    brain_mean = float(x[reference > 0].mean())

    def anchor(img: np.ndarray, **kw: Any) -> np.ndarray:
        return head_mask(img, threshold=float(threshold_otsu(img[img > 0])), **kw)

    out: Dict[str, Any] = {"zero_background_labelled": int((reference > 0).sum())}
    try:
        for frac in (0.01, 0.03, 0.06):
            rng = np.random.default_rng(0)
            s = frac * brain_mean
            noisy = np.where(x == 0, rician(np.zeros(x.shape), s, rng), x)
            for method, fn in (("anchor", anchor), ("product", head_mask)):
                predictor_module.head_mask = fn
                seg = np.asarray(predictor.predict(image.with_data(noisy.astype(np.float32)), tasks=["seg"])["seg"].data)
                out[f"noise {frac:g} {method}"] = {"kept": round(float((seg[reference > 0] > 0).mean()), 4),
                                                   "dice17": dice_report(seg, reference)["mean_merged17"]}
                print("seg3D", frac, method, out[f"noise {frac:g} {method}"], file=sys.stderr, flush=True)
    finally:
        predictor_module.head_mask = head_mask
    return out


def main(argv: List[str]) -> int:
    ap = parser(__doc__, out_name="headmask.json", repeats=1)
    ap.add_argument("--noise", type=float, nargs=2, default=(0.005, 0.05),
                    help="range of the Rician noise, a fraction of the brain's mean intensity")
    ap.add_argument("--maps", type=int, default=20, help="how many training label maps to render")
    ap.add_argument("--no-real", dest="real", action="store_false", help="leave out the real scan (seg3D MR)")
    args = ap.parse_args(argv)
    from skimage.filters import threshold_otsu

    from brainfm.evaluation import datasets
    from brainfm.geometry import resample_to_grid
    from brainfm.inference.headmask import head_mask
    from brainfm.inference.preprocess import prepare

    files = sorted((Path(args.data) / datasets.DATA["label_dir"]).glob("*.nii.gz"))[: args.maps]
    if not files and args.maps:
        print(f"no label maps under {args.data}", file=sys.stderr)
        return 2
    rows: List[Dict[str, Any]] = []
    seconds: Dict[str, List[float]] = {"anchor": [], "product": []}
    for name, kind, labels, image in _renderings(files, tuple(args.noise), 0):
        prep = prepare(image, spacing=2.0)
        net = np.asarray(prep.net.data, np.float32)
        truth = np.asarray(resample_to_grid(labels, prep.net.affine, prep.net.shape, order="nearest").data)
        row: Dict[str, Any] = {"map": name, "contrast": kind}
        for method, kw in (("anchor", {"threshold": float(threshold_otsu(net[net > 0]))}), ("product", {})):
            t0 = time.perf_counter()
            mask = head_mask(net, voxel_mm=2.0, **kw)
            seconds[method].append(time.perf_counter() - t0)
            row[method] = _scores(mask, truth)
        rows.append(row)
        print(name, kind, row["anchor"], row["product"], file=sys.stderr, flush=True)

    def summary(method: str) -> Dict[str, Any]:
        if not rows:
            return {}
        lost = np.array([r[method]["lost"] for r in rows])
        out = np.array([r[method]["outside"] for r in rows])
        return {"images": len(rows), "brain_lost_over_1pct": int((lost > 0.01).sum()),
                "brain_lost_over_10pct": int((lost > 0.1).sum()), "brain_lost_max": round(float(lost.max()), 4),
                "brain_lost_mean": round(float(lost.mean()), 5), "outside_mean": round(float(out.mean()), 5),
                "outside_max": round(float(out.max()), 5), "seconds_median": round(float(np.median(seconds[method])), 3)}

    emit({"what": "head mask on noisy-background renderings: the product against Otsu's threshold (anchor)",
          "noise": list(args.noise), "anchor": summary("anchor"), "product": summary("product"), "images": rows,
          "seg3d_mr_with_noisy_background": _real_scan(Path(args.data), args.threads) if args.real else None},
         args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
