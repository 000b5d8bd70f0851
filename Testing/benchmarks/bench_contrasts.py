"""Segmentation by contrast and scan quality: the two held-out label maps rendered as T1, T2, FLAIR and
PD, as a clinical 1 mm scan and as a low-field stack, segmented by the bundled model; merged-17 Dice
against the maps, for the product's labels (refined to the scan) and the model's own.

Renderings (the generator's physics, nominal tissue parameters; PD: spin echo, TR 3 s, TE 15 ms):
- ``clinical``: 1 mm, blurred (sigma 0.6 mm), a smooth bias field (up to about 20 %), Rician noise of
  3 % of the brain's mean over the whole field of view (a background of noise, not zeros);
- ``low-field``: blurred (0.8 mm), Rician noise of 10 %, then 5 mm axial slices (each the mean of five).
Outputs are written on the 1 mm frame and read at the maps' voxels (nearest), as in the evaluation
table's resolution row.

The renderings have uniform tissue, which flatters the refinement. So the real T1 of the quality level
(voxelmorph, against its FreeSurfer aseg) is degraded the same way, without the added blur (it has its
own): as it is, ``clinical`` and ``low-field``, plus noise alone and thick slices alone at the low-field
settings (the rows ``T1 real ...``).

    python Testing/benchmarks/bench_contrasts.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from benchcommon import emit, parser, rician

PD = {"kind": "se", "tr": 3.0, "te": 0.015}
QUALITIES = {"clinical": {"blur": 0.6, "noise": 0.03, "slices_mm": 1},
             "low-field": {"blur": 0.8, "noise": 0.10, "slices_mm": 5}}


def degrade(img: np.ndarray, brain: np.ndarray, rng: np.random.Generator, *, blur: float, noise: float,
            bias: bool = True) -> np.ndarray:
    """``img`` blurred (``blur`` mm, 0: not), times a smooth bias field (up to about 20 %), with Rician
    noise of ``noise`` times the mean over ``brain`` in every voxel (float32, a new array)."""
    from scipy import ndimage

    img = ndimage.gaussian_filter(np.asarray(img, np.float32), blur) if blur > 0 else np.array(img, np.float32)
    if bias:
        axes = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in img.shape], indexing="ij")
        img *= np.exp(0.2 * (0.6 * axes[0] + 0.5 * axes[1] * axes[2] - 0.4 * axes[2]))
    if noise > 0:
        s = noise * float(img[brain].mean())
        img = rician(img, s, rng)
    return img.astype(np.float32)


def render(labels: Any, contrast: str, rng: np.random.Generator, *, blur: float, noise: float) -> Any:
    """``labels`` (a whole-head FreeSurfer map) rendered as ``contrast`` with a bias field and Rician noise."""
    from brainfm.generator import physics

    protocol = PD if contrast == "PD" else physics.STANDARD_PROTOCOLS[contrast]
    lab = np.asarray(labels.data).astype(np.int64)
    img = physics.paint_labels(lab, physics.render(physics.nominal_params(), protocol).numpy(), peak=200.0)
    return labels.with_data(degrade(img, (lab > 0) & (lab < 100), rng, blur=blur, noise=noise))


def real_variants(image: Any, truth: np.ndarray, rng: np.random.Generator) -> Dict[str, Any]:
    """The real T1 as it is and degraded like the renderings (no added blur), by quality name."""
    from brainfm.evaluation.resolution import array_axis, thick_slices

    low = QUALITIES["low-field"]
    x, brain = np.asarray(image.data, np.float32), truth > 0

    def thick(img: Any) -> Any:
        return thick_slices(img, axis=array_axis(image.affine, 2), mm=low["slices_mm"])

    return {"as it is": image,
            "clinical": image.with_data(degrade(x, brain, rng, blur=0, noise=QUALITIES["clinical"]["noise"])),
            "low-field": thick(image.with_data(degrade(x, brain, rng, blur=0, noise=low["noise"]))),
            "low-field noise only": image.with_data(degrade(x, brain, rng, blur=0, noise=low["noise"])),
            "low-field slices only": thick(image)}


def score(predictor: Any, image: Any, labels: Any, row: Dict[str, Any]) -> Dict[str, Any]:
    """``row`` with the merged-17 Dice of the product's labels and the model's own (1 mm frame, read at
    ``labels``' voxels) and the seconds of each."""
    from brainfm.evaluation.segmentation import dice_report
    from brainfm.geometry import resample_to_grid

    truth = np.asarray(labels.data)
    for method in ("fit", "head"):
        t0 = time.perf_counter()
        seg = predictor.predict(image, tasks=["seg"], seg_method=method, output_frame="1mm")["seg"]
        on_truth = resample_to_grid(seg, labels.affine, labels.shape, order="nearest")
        dice = dice_report(np.asarray(on_truth.data).astype(np.int32), truth)["mean_merged17"]
        row["product" if method == "fit" else "model's own"] = dice
        row[f"seconds_{method}"] = round(time.perf_counter() - t0, 1)
    print(row, file=sys.stderr, flush=True)
    return row


def main(argv: List[str]) -> int:
    ap = parser(__doc__, out_name="contrasts.json", repeats=1)
    args = ap.parse_args(argv)
    from brainfm.evaluation import datasets
    from brainfm.evaluation.resolution import array_axis, thick_slices
    from brainfm.inference import Predictor

    data = Path(args.data)
    predictor = Predictor.from_pretrained("bundled", device="cpu", threads=args.threads)
    rng = np.random.default_rng(0)
    rows: List[Dict[str, Any]] = []
    for name in datasets.held_out_names():
        labels = datasets.load_labels(data, name)
        for contrast in ("T1", "T2", "FLAIR", "PD"):
            for quality, q in QUALITIES.items():
                image = render(labels, contrast, rng, blur=q["blur"], noise=q["noise"])
                if q["slices_mm"] > 1:
                    image = thick_slices(image, axis=array_axis(labels.affine, 2), mm=q["slices_mm"])
                rows.append(score(predictor, image, labels, {"map": name, "contrast": contrast, "quality": quality}))
    table: Dict[str, Dict[str, float]] = {}
    for r in rows:
        key = f"{r['contrast']} {r['quality']}"
        for k in ("product", "model's own"):
            table.setdefault(key, {}).setdefault(k, 0.0)
            table[key][k] += r[k] / len(datasets.held_out_names())
    real = datasets.load(data, "voxelmorph_vol")
    aseg = datasets.load_labels(data, "voxelmorph_seg")
    real_rows = [score(predictor, image, aseg, {"map": "voxelmorph T1", "contrast": "T1 real", "quality": quality})
                 for quality, image in real_variants(real, np.asarray(aseg.data), rng).items()]
    emit({"what": "merged-17 Dice on the held-out maps by contrast and scan quality, and on the real T1 "
                  "degraded alike (bundled model)",
          "threads": args.threads, "qualities": QUALITIES,
          "mean_of_the_maps": {k: {m: round(v, 4) for m, v in d.items()} for k, d in table.items()},
          "real_t1": {r["quality"]: {m: round(r[m], 4) for m in ("product", "model's own")} for r in real_rows},
          "rows": rows + real_rows}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
