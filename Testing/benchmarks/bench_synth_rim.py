"""The synthesis at the rim of a masked scan, side by side in one process: quality and cost.

The fitted synthesis (:mod:`brainfm.tasks.synthfit`) fades the model's synthesis with the scan at the
rim between the labelled voxels and a zero background (:func:`brainfm.tasks.synthfit.edge_fade`). The
anchor is the same prediction with that step turned off (no rim), everything else equal.

Data, PSNR dB / SSIM in the brain after a linear fit (the synthesis row's metric; scored where source and
target are both non-zero):

- ``stroke``: the synthesis row's four pairs of the stroke trio (brain-extracted and co-registered, so its
  edge fades over a voxel or two);
- ``hard`` / ``soft``: the two held-out label maps rendered as T1, T2 and FLAIR (nominal physics
  parameters, blur 0.6 voxel, a smooth bias field, noise of 6 on a brightest tissue of 200), masked to
  the brain (labels below 100, holes filled); ``hard`` as masked, ``soft`` shifted by half a voxel after
  masking (trilinear), as a brain-extracted scan resampled onto another grid is;
- ``head``: the same renderings unmasked (whole heads), where the rim step must change nothing.

Also the seconds ``edge_fade`` takes per synthesis (best of the calls).

    python Testing/benchmarks/bench_synth_rim.py [--threads 2] [--maps 2]

Prints one JSON object and writes it to Testing/benchmarks/results/synth_rim.json. Needs ../shared/data.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from benchcommon import emit, parser


def _renderings(labels: Any, rng: np.random.Generator) -> Dict[str, Dict[str, Any]]:
    """``{scenario: {contrast: Volume}}`` of one label map (see the module docstring)."""
    from scipy import ndimage

    from brainfm.generator import physics

    lab = np.asarray(labels.data)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in lab.shape], indexing="ij")
    bias = np.exp(0.15 * x - 0.1 * y + 0.1 * z * x).astype(np.float32)
    brain = ndimage.binary_fill_holes((lab > 0) & (lab < 100))
    out: Dict[str, Dict[str, Any]] = {"head": {}, "hard": {}, "soft": {}}
    for c in ("T1", "T2", "FLAIR"):
        v = physics.render(physics.nominal_params(), physics.STANDARD_PROTOCOLS[c]).numpy()
        im = ndimage.gaussian_filter(physics.paint_labels(lab, v, peak=200.0), 0.6) * bias
        im = np.abs(im + rng.normal(0, 6.0, im.shape)).astype(np.float32)
        hard = np.where(brain, im, 0).astype(np.float32)
        out["head"][c] = labels.with_data(im)
        out["hard"][c] = labels.with_data(hard)
        out["soft"][c] = labels.with_data(ndimage.shift(hard, (0.5, 0.5, 0.5), order=1).astype(np.float32))
    return out


def _scores(predictor: Any, images: Dict[str, Any]) -> Dict[str, Dict[str, float]]:
    from brainfm.evaluation.synthesis import PAIRS, score_synthesis

    return {f"{s}->{t}": {k: round(v, 3) for k, v in score_synthesis(predictor, images[s], images[t], t)[0].items()}
            for s, t in PAIRS}


def main(argv: List[str]) -> int:
    ap = parser(__doc__, out_name="synth_rim.json", repeats=1)
    ap.add_argument("--maps", type=int, default=2, help="how many held-out label maps to render (0-2)")
    args = ap.parse_args(argv)
    import brainfm.tasks.synthfit as synthfit
    from brainfm.evaluation import datasets
    from brainfm.evaluation.synthesis import load_trio
    from brainfm.inference import Predictor

    data = Path(args.data)
    predictor = Predictor.from_pretrained("bundled", device="cpu", threads=args.threads)
    product = synthfit.edge_fade
    seconds: List[float] = []
    voxels: List[int] = []

    def timed(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        r = product(*a, **k)
        seconds.append(time.perf_counter() - t0)
        voxels.append(int(r[0].size))
        return r

    def anchor(mask: np.ndarray, *a: Any, **k: Any) -> Any:  # no rim
        return np.zeros(0, np.int64), np.zeros(0, np.float32)

    cases: Dict[str, Dict[str, Any]] = {"stroke": load_trio(data)}
    rng = np.random.default_rng(0)
    for name in datasets.held_out_names()[:max(0, args.maps)]:
        for scenario, images in _renderings(datasets.load_labels(data, name), rng).items():
            cases[f"{name} {scenario}"] = images
    results: Dict[str, Any] = {}
    for case, images in cases.items():
        synthfit.edge_fade = anchor
        before = _scores(predictor, images)
        synthfit.edge_fade = timed
        after = _scores(predictor, images)
        results[case] = {"anchor (no rim)": before, "product": after,
                         "psnr_gain": {k: round(after[k]["psnr"] - before[k]["psnr"], 3) for k in after},
                         "ssim_gain": {k: round(after[k]["ssim"] - before[k]["ssim"], 3) for k in after}}
        print(case, results[case]["psnr_gain"], results[case]["ssim_gain"], file=sys.stderr, flush=True)
    synthfit.edge_fade = product
    emit({"what": "synthesis at the rim of a masked scan: the product against no rim step (bundled model)",
          "threads": args.threads, "edge_fade_seconds_best": round(min(seconds), 3) if seconds else None,
          "edge_fade_seconds_worst": round(max(seconds), 3) if seconds else None,
          "rim_voxels_per_case": voxels[::4], "cases": results}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
