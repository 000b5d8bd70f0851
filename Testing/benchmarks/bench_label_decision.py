"""Cost of a coarse model's label decision on the 1 mm grid, side by side in one process.

A 2 mm model decides its labels on the 1 mm grid of the same box from trilinearly interpolated logits
(:func:`brainfm.tasks.segmentation.refined_channel_indices`). On the bundled model's logits for the
voxelmorph real T1 (33 channels):

- ``whole volume`` (the anchor): ``F.interpolate`` of all the logits to 1 mm, then the arg-max;
- ``slabs``: the same interpolation a few planes at a time (the product's path until 2026-12-06);
- ``product``: the corners' channel copied where the 8 coarse voxels a fine voxel is interpolated from
  agree, the logits interpolated only in the cells where they do not.

For each: best wall seconds and the number of voxels that differ from the anchor (must be 0).

    python Testing/benchmarks/bench_label_decision.py [--repeats 3] [--threads 2]

Prints one JSON object and writes it to Testing/benchmarks/results/label_decision.json. Needs ../shared/data.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np

from benchcommon import best_of, emit, parser


def whole_volume(logits: np.ndarray, factor: int) -> np.ndarray:
    """The anchor: interpolate every channel on the whole fine grid, then take the first maximum."""
    import torch
    import torch.nn.functional as F

    fine = F.interpolate(torch.from_numpy(logits)[None], scale_factor=factor, mode="trilinear", align_corners=False)[0]
    return torch.max(fine, dim=0).indices.to(torch.uint8).numpy()


def slabs(logits: np.ndarray, factor: int, slab: int = 8) -> np.ndarray:
    """The earlier product path: the fine logits of ``slab`` coarse planes (and one of halo) at a time."""
    import torch
    import torch.nn.functional as F

    nx, f = int(logits.shape[1]), int(factor)
    out = np.empty(tuple(int(s) * f for s in logits.shape[1:]), np.uint8)
    t = torch.from_numpy(np.ascontiguousarray(logits, np.float32))
    for x0 in range(0, nx, slab):
        x1 = min(nx, x0 + slab)
        a, b = max(0, x0 - 1), min(nx, x1 + 1)
        yz = F.interpolate(t[None, :, a:b], scale_factor=(1, f, f), mode="trilinear", align_corners=False)[0]
        src = ((torch.arange(x0 * f, x1 * f, dtype=torch.float32) + 0.5) / f - 0.5).clamp(0, nx - 1)
        lo = src.floor().long()
        hi = (lo + 1).clamp(max=nx - 1)
        w = (src - lo.float()).view(1, -1, 1, 1)
        fine = yz[:, lo - a] * (1 - w) + yz[:, hi - a] * w
        out[x0 * f:x1 * f] = torch.max(fine, dim=0).indices.numpy()
    return out


def main(argv: List[str] = None) -> int:
    args = parser(__doc__, out_name="label_decision.json", repeats=3,
                  repeats_help="best of this many runs per variant").parse_args(argv)

    import torch

    from brainfm.evaluation import datasets
    from brainfm.inference import Predictor
    from brainfm.tasks.segmentation import refined_channel_indices

    torch.set_num_threads(args.threads)
    image = datasets.load(Path(args.data), "voxelmorph_vol")
    predictor = Predictor.from_pretrained("bundled", device="cpu", threads=args.threads)
    result = predictor.predict(image, tasks=["seg"], seg_method="head", keep_raw=True)
    logits = np.ascontiguousarray(result.raw["segmentation"], np.float32)
    factor = int(round(float(predictor.voxel_mm)))
    variants: Dict[str, Callable[[], np.ndarray]] = {
        "whole volume": lambda: whole_volume(logits, factor),
        "slabs": lambda: slabs(logits, factor),
        "product": lambda: refined_channel_indices(logits, factor),
    }
    rows: Dict[str, Dict[str, Any]] = {}
    anchor = None
    for name, fn in variants.items():
        best, out = best_of(fn, args.repeats)
        if anchor is None:
            anchor = out
        rows[name] = {"seconds": round(best, 3), "voxels_differing_from_anchor": int((out != anchor).sum())}
    summary = {
        "image": "voxelmorph real T1", "logits": list(logits.shape), "factor": factor, "fine_voxels": int(anchor.size),
        "threads": args.threads, "cpu": torch.backends.cpu.get_cpu_capability(), "variants": rows,
        "speedup_vs_anchor": round(rows["whole volume"]["seconds"] / rows["product"]["seconds"], 2),
        "speedup_vs_slabs": round(rows["slabs"]["seconds"] / rows["product"]["seconds"], 2),
    }
    emit(summary, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
