"""Segmentation by slice thickness and in-plane voxel size: the real T1 of the quality level (voxelmorph,
against its FreeSurfer aseg) cut into axial slices of 3-11 mm (each the mean of that many 1 mm slices,
:func:`brainfm.evaluation.resolution.thick_slices`), with its 1 mm in-plane voxels and resampled to 0.5 mm
in-plane (the same field of view), segmented by the bundled model with outputs on the 1 mm frame and
read at the aseg's voxels. Shows what limits the results: the slice thickness, or the anisotropy ratio
(0.5 x 0.5 x 5 mm has ratio 10, 1 x 1 x 5 mm ratio 5).

    python Testing/benchmarks/bench_thickness.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from benchcommon import emit, parser

SLICES_MM = (3, 5, 7, 9, 11)
IN_PLANE_MM = (1.0, 0.5)


def finer_in_plane(volume: Any, *, axis: int, factor: int) -> Any:
    """``volume`` resampled (linear) to voxels ``factor`` times smaller along the two axes other than
    ``axis``, over the same field of view."""
    from brainfm.geometry import resample_to_grid

    aff, shape = volume.affine.copy(), list(volume.shape)
    for a in range(3):
        if a != axis:
            aff[:3, a] /= factor
            shape[a] *= factor
            aff[:3, 3] -= aff[:3, a] * (factor - 1) / 2  # the first voxel's edge stays where it was
    return resample_to_grid(volume, aff, tuple(shape), order="linear")


def main(argv: List[str]) -> int:
    ap = parser(__doc__, out_name="thickness.json", repeats=1)
    args = ap.parse_args(argv)
    from brainfm.evaluation import datasets
    from brainfm.evaluation.resolution import array_axis, thick_slices
    from brainfm.evaluation.segmentation import dice_report
    from brainfm.geometry import resample_to_grid
    from brainfm.inference import Predictor

    data = Path(args.data)
    predictor = Predictor.from_pretrained("bundled", device="cpu", threads=args.threads)
    image = datasets.load(data, "voxelmorph_vol")
    aseg = datasets.load_labels(data, "voxelmorph_seg")
    truth = np.asarray(aseg.data)
    axis = array_axis(image.affine, 2)
    rows: List[Dict[str, Any]] = []
    for mm in SLICES_MM:
        thick = thick_slices(image, axis=axis, mm=mm)
        for in_plane in IN_PLANE_MM:
            scan = thick if in_plane == 1.0 else finer_in_plane(thick, axis=axis, factor=int(round(1 / in_plane)))
            t0 = time.perf_counter()
            seg = predictor.predict(scan, tasks=["seg"], output_frame="1mm", allow_anisotropic=True)["seg"]
            seconds = round(time.perf_counter() - t0, 1)
            on_truth = resample_to_grid(seg, aseg.affine, aseg.shape, order="nearest")
            row = {"slices_mm": mm, "in_plane_mm": in_plane, "ratio": round(mm / in_plane, 1),
                   "dice17": round(dice_report(np.asarray(on_truth.data).astype(np.int32), truth)["mean_merged17"], 4),
                   "seconds": seconds}
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
    emit({"what": "merged-17 Dice of the real T1 cut into axial slices, by thickness and in-plane voxel size "
                  "(bundled model, outputs on the 1 mm frame)", "threads": args.threads, "rows": rows}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
