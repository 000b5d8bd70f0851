"""The bias field fitted to a segmentation (``brainfm.tasks.biasfit``) against N4, side by side in one process.

On the voxelmorph real T1 (1 mm, 160 x 192 x 224) with the known smooth fields of the bias-field row applied
(``brainfm.evaluation.biasfield.applied_t1``), each method estimates the log field; the benchmark reports the
correlation with the applied field inside the FreeSurfer brain mask, the wall time and the peak of the memory
the method allocates (``tracemalloc``: NumPy arrays; N4's ITK buffers are outside it, so its figure is the
Python side only).

- fit: ``fit_log_field`` on the segmentation the bundled model gives for the biased image (the
  segmentation is computed first and not timed: in the product it is shared with the ``seg`` task);
- N4: SimpleITK ``N4BiasFieldCorrectionImageFilter`` (4 levels x 50 iterations, Otsu mask) on the image
  shrunk by 4 and by 2, its field evaluated on the full grid (``brainfm.evaluation.biasfield.n4_log_field``).

    python Testing/benchmarks/bench_biasfit.py [--fields 3] [--repeats 3] [--threads 2]

Prints one JSON object and writes it to Testing/benchmarks/results/biasfit.json. Needs ../shared/data.
"""
from __future__ import annotations

import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

from benchcommon import emit, parser


def measured(fn: Callable[[], np.ndarray], repeats: int) -> Tuple[np.ndarray, float, float]:
    """``(result, best wall seconds, peak MB traced)`` over ``repeats`` calls."""
    best, peak, out = float("inf"), 0.0, None
    for _ in range(max(1, repeats)):
        tracemalloc.start()
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
        peak = max(peak, tracemalloc.get_traced_memory()[1] / 1e6)
        tracemalloc.stop()
    return out, best, peak


def main(argv: List[str] = None) -> int:
    ap = parser(__doc__, out_name="biasfit.json", repeats=3, repeats_help="fit timings: best of this many (N4: once)",
                threads_help="torch and SimpleITK threads")
    ap.add_argument("--fields", type=int, default=3, help="how many of the row's applied fields")
    args = ap.parse_args(argv)

    import SimpleITK as sitk
    import torch

    from brainfm.evaluation.biasfield import applied_t1, n4_log_field, otsu_mask
    from brainfm.evaluation.metrics import correlation
    from brainfm.inference import Predictor
    from brainfm.tasks.biasfit import fit_log_field

    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    t1, brain, fields = applied_t1(Path(args.data))
    predictor = Predictor.from_pretrained("bundled", device="cpu")
    rows: Dict[str, Dict[str, List[float]]] = {}

    def add(name: str, est: np.ndarray, seconds: float, peak: float, field: np.ndarray) -> None:
        r = rows.setdefault(name, {"correlation": [], "seconds": [], "peak_mb": []})
        r["correlation"].append(round(float(correlation(est, field, mask=brain)), 4))
        r["seconds"].append(round(seconds, 3))
        r["peak_mb"].append(round(peak, 1))

    for field in fields[: args.fields]:
        image = t1.with_data((np.asarray(t1.data, np.float64) * np.exp(field)).astype(np.float32))
        labels = np.asarray(predictor.predict(image, tasks=["seg"])["seg"].data).astype(np.int16)
        data = np.asarray(image.data)
        est, s, mb = measured(lambda: fit_log_field(data, labels, voxel_mm=image.spacing), args.repeats)
        add("fit to the model's segmentation", est, s, mb, field)
        head = otsu_mask(image)
        for shrink in (4, 2):
            (est, n4_s), _, mb = measured(lambda: n4_log_field(image, shrink=shrink, mask=head), 1)
            add(f"N4 shrink {shrink}", est, n4_s, mb, field)

    summary: Dict[str, Any] = {
        "image": "voxelmorph real T1 x applied fields (bias-field row)", "shape": list(t1.shape),
        "threads": args.threads, "cpu": torch.backends.cpu.get_cpu_capability(),
        "methods": {k: {**v, "mean_correlation": round(float(np.mean(v["correlation"])), 4),
                        "mean_seconds": round(float(np.mean(v["seconds"])), 3)} for k, v in rows.items()},
    }
    fit_s = summary["methods"]["fit to the model's segmentation"]["mean_seconds"]
    summary["n4_seconds_over_fit"] = {k: round(v["mean_seconds"] / fit_s, 1)
                                      for k, v in summary["methods"].items() if k.startswith("N4")}
    emit(summary, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
