"""How the network sees its input, side by side on a real T1: Dice, time and peak memory.

Variants, each in its own child process (peak RSS from ``resource``), the same weights:
- ``as_is`` (anchor, the behaviour before alignment): the brain box fed to the backbone unpadded
  (``UNet3D.align_input = False``), no test-time flip;
- ``aligned``: sides padded to a multiple of ``2 ** (levels - 1)`` (the default), no flip;
- ``aligned_flip``: aligned and averaged with the left-right mirrored input (``test_time_flip``).

Each child predicts the segmentation of the voxelmorph real T1 (``../shared/data``) ``--repeats``
times after one warm-up and reports the fastest prediction, its network-pass time and merged-17 Dice
against the FreeSurfer aseg.

    python Testing/benchmarks/bench_input_handling.py [--model bundled] [--threads 2] [--repeats 3]

Prints one JSON object and writes it to Testing/benchmarks/results/input_handling.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parents[2]
VARIANTS = {"as_is": (False, False), "aligned": (True, False), "aligned_flip": (True, True)}

CHILD = r"""
import json, resource, sys, time
import numpy as np
from brainfm.evaluation import datasets
from brainfm.evaluation.segmentation import dice_report
from brainfm.inference import Predictor
model, data, threads, repeats, align, flip = sys.argv[1:7]
p = Predictor.from_pretrained(model, device="cpu", threads=int(threads), test_time_flip=flip == "1")
p.net.backbone.align_input = align == "1"
img = datasets.load(data, "voxelmorph_vol")
truth = np.asarray(datasets.load_labels(data, "voxelmorph_seg").data)
best = None
for _ in range(int(repeats) + 1):
    t = time.perf_counter()
    out = p.predict(img, tasks=["seg"])
    wall = time.perf_counter() - t
    if best is None or wall < best[0]:
        best = (wall, out.metadata["timings"]["forward"])
seg = np.asarray(out["seg"].data)
print(json.dumps({"seconds": round(best[0], 3), "forward_seconds": round(best[1], 3),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "real_t1_dice17": dice_report(seg, truth)["mean_merged17"]}))
"""


def run_variant(name: str, *, model: str, data: str, threads: int, repeats: int) -> Dict[str, Any]:
    align, flip = VARIANTS[name]
    cmd = [sys.executable, "-c", CHILD, model, data, str(threads), str(repeats), str(int(align)), str(int(flip))]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "Testing" / "benchmarks" / "results" / "input_handling.json"))
    args = ap.parse_args(argv)
    if not (Path(args.data) / "voxelmorph").is_dir():
        print(f"bench_input_handling: the development data are not in {args.data}", file=sys.stderr)
        return 2
    result: Dict[str, Any] = {"model": args.model, "threads": args.threads, "repeats": args.repeats,
                              "anchor": "as_is"}
    for name in VARIANTS:
        result[name] = run_variant(name, model=args.model, data=args.data, threads=args.threads,
                                   repeats=args.repeats)
    base = result["as_is"]
    for name in ("aligned", "aligned_flip"):
        result[name]["time_ratio_to_anchor"] = round(result[name]["seconds"] / base["seconds"], 2)
    text = json.dumps(result, indent=1)
    print(text)
    Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
