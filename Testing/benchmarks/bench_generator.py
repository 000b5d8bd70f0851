"""Benchmark of the synthetic generator: samples per second with all targets.

    python Testing/benchmarks/bench_generator.py [--device cpu|cuda] [--size 160] [--n 4]
        [--labels PATH] [--repeats 3]

Uses a real SynthSeg label map when ``--labels`` is given (or ../shared/data is present), else a
code-generated 192^3 head. Timing waits for the device (torch.cuda.synchronize) only around the
whole call, never inside the generator.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "Testing" / "pytest"))


def _labels(path: str) -> torch.Tensor:
    default = REPO.parent / "shared" / "data" / "SynthSeg" / "data" / "training_label_maps" / "training_seg_01.nii.gz"
    p = Path(path) if path else default
    if p.exists():
        if p.suffix == ".npz":
            return torch.from_numpy(np.load(p)["labels"].astype(np.int64))
        import nibabel as nib

        return torch.from_numpy(np.asarray(nib.as_closest_canonical(nib.load(str(p))).dataobj).astype(np.int64))
    from fixtures import label_head

    return torch.from_numpy(label_head((192, 192, 192)).astype(np.int64))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--n", type=int, default=4, help="samples per call (one subject)")
    ap.add_argument("--labels", default="", help="label map (.nii.gz) or prepared .npz")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from brainfm.generator import Generator, SubjectData
    from brainfm.generator.distance import band_distance_maps, distance_maps

    dev = torch.device(a.device)
    lab = _labels(a.labels)
    t0 = time.perf_counter()
    dist = band_distance_maps(lab.to(dev)) if dev.type == "cuda" else torch.from_numpy(distance_maps(lab.numpy()))
    coords = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) - n / 2 for n in lab.shape],
                                        indexing="ij"))
    subject = SubjectData(lab.to(dev), atlas_coords=coords.to(dev), distance=dist.to(dev))
    print(f"subject {tuple(lab.shape)} on {dev}: set-up {time.perf_counter() - t0:.2f} s")
    gen = Generator()

    def run(seed: int) -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        b = gen.sample(subject, n_samples=a.n, size=a.size, seed=seed, device=dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        assert b.inputs.shape == (a.n, 1, a.size, a.size, a.size)
        return time.perf_counter() - t

    run(0)  # warm-up
    times = [run(1 + i) for i in range(a.repeats)]
    best, mean = min(times), sum(times) / len(times)
    print(f"size {a.size}^3, {a.n} sample(s)/call, {a.repeats} calls: mean {mean:.3f} s/call, best {best:.3f} s "
          f"-> {a.n / mean:.2f} samples/s (all targets)")
    if dev.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
