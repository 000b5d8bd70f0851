"""Benchmark of brainfm.io + brainfm.geometry on a 256^3 float volume (CPU).

Times read, to_network_frame, FrameTransform.to_input and write for several input geometries,
and the two resample_to_grid backends (torch grid_sample vs scipy map_coordinates).

    python Testing/benchmarks/bench_geometry.py [--size 256] [--threads 2] [--skip-backends]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def _affines(n: int):
    def rot(axis, deg):
        t = np.deg2rad(deg)
        c, s = np.cos(t), np.sin(t)
        i, j = [a for a in range(3) if a != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        return r

    def aff(m):
        a = np.eye(4)
        a[:3, :3] = m
        a[:3, 3] = -(m @ np.full(3, (n - 1) / 2))
        return a

    return {
        "ras_1mm (fast path)": aff(np.eye(3)),
        "lia_1mm (permute)": aff(np.array([[-1.0, 0, 0], [0, 0, 1], [0, -1, 0]])),
        "aniso_0.9x0.9x1.2": aff(np.diag([0.9, 0.9, 1.2])),
        "oblique_1mm_15deg": aff(rot(2, 15) @ rot(0, -8)),
    }


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _timed_cpu(fn):
    """(result, wall seconds, CPU seconds of all threads): CPU time is robust to a busy machine."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-backends", action="store_true")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from brainfm.geometry import resample_to_grid, to_network_frame
    from brainfm.io import read_volume, write_volume
    from brainfm.volume import Volume

    n = args.size
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32)] * 3, indexing="ij", sparse=True)
    r = np.sqrt((x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 0.75) ** 2)
    data = (np.where(r < 1, 100.0, 0.0) * (1.2 - r)).astype(np.float32)
    print(f"volume {n}^3 float32, torch threads {torch.get_num_threads()}")
    print(f"{'geometry':22s} {'write .nii.gz':>13s} {'read':>7s} {'to_net':>7s} {'to_input':>9s}  net shape")
    with tempfile.TemporaryDirectory() as d:
        for name, aff in _affines(n).items():
            v = Volume(data, aff)
            p, t_w = _timed(lambda: write_volume(v, Path(d) / "bench.nii.gz"))
            rv, t_r = _timed(lambda: read_volume(p))
            (net, tf), t_n = _timed(lambda: to_network_frame(rv))
            _, t_i = _timed(lambda: tf.to_input(net))
            print(f"{name:22s} {t_w:13.2f} {t_r:7.2f} {t_n:7.2f} {t_i:9.2f}  {net.shape}")
    if args.skip_backends:
        return
    v = Volume(data, _affines(n)["oblique_1mm_15deg"])
    tgt = np.eye(4)
    tgt[:3, 3] = -(n - 1) / 2
    print(f"\nresample_to_grid {n}^3 oblique -> RAS, trilinear (no anti-alias needed):")
    res = {}
    for backend in ("torch", "scipy"):
        out, t, c = _timed_cpu(lambda: resample_to_grid(v, tgt, (n, n, n), backend=backend, antialias=False))
        res[backend] = out.data
        print(f"  {backend:6s} wall {t:6.2f} s   cpu {c:6.2f} s")
    print(f"  max |torch - scipy| = {float(np.abs(res['torch'] - res['scipy']).max()):.2e}")


if __name__ == "__main__":
    main()
