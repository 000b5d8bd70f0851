"""Interleaved A/B of the memory format on the CPU: no-grad forward (all heads, random weights) of a
network in contiguous vs ``channels_last_3d`` layout, alternating so that load drifts hit both.
This is what ``inference.device.CHANNELS_LAST_MAX_FMAPS`` is based on.

    .venv/bin/python Testing/benchmarks/bench_channels_last.py --f-maps 16 --levels 5 --shape 80x102x93 --repeats 4
    .venv/bin/python Testing/benchmarks/bench_channels_last.py --f-maps 64 --levels 6 --shape 96x96x96 --repeats 3
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--f-maps", type=int, default=16)
    ap.add_argument("--levels", type=int, default=5)
    ap.add_argument("--shape", default="80x102x93")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    from brainfm.models import BrainFMNet, ModelConfig
    from brainfm.models.config import OFFICIAL_HEADS
    from brainfm.training.config import DEFAULT_HEADS

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    heads = dict(OFFICIAL_HEADS if a.f_maps == 64 else DEFAULT_HEADS)
    shape = tuple(int(v) for v in a.shape.split("x"))
    plain = BrainFMNet(ModelConfig(f_maps=a.f_maps, num_levels=a.levels, heads=heads)).eval()
    cl = BrainFMNet(ModelConfig(f_maps=a.f_maps, num_levels=a.levels, heads=heads)).eval()
    cl.load_state_dict(plain.state_dict())
    cl = cl.to(memory_format=torch.channels_last_3d)
    x = torch.rand((1, 1) + shape)
    runs = {"contiguous": (plain, x, []), "channels_last": (cl, x.contiguous(memory_format=torch.channels_last_3d), [])}
    for _ in range(a.repeats):
        for net, inp, times in runs.values():
            t0 = time.perf_counter()
            with torch.inference_mode():
                net(inp, heads=list(heads))
            times.append(time.perf_counter() - t0)
    med = {k: statistics.median(v[2]) for k, v in runs.items()}
    for k, (_, _, times) in runs.items():
        print(f"{k}: {[round(t, 2) for t in times]} s, median {med[k]:.2f} s")
    print(f"f_maps {a.f_maps}, {a.levels} levels, {shape}: channels_last speed-up {med['contiguous'] / med['channels_last']:.2f}x")


if __name__ == "__main__":
    main()
