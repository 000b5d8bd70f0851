"""Training throughput of the compact model: iterations/s, samples/s, peak GPU memory.

GPU (the real measurement): compact model (5 levels, f_maps 16 unless --f-maps), windows of
--sizes (default 128 and 160), 4 intra-subject samples, bf16 autocast, real generator on the GPU:
    python Testing/benchmarks/bench_training.py --sizes 128 160 --steps 20
CPU (smoke number only): a tiny model at 32^3:
    python Testing/benchmarks/bench_training.py
Prints one JSON line per configuration. Generation and the optimizer step are included in the time.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pytest"))


def toy_subject(device: torch.device, shape=(176, 208, 176)):
    from fixtures import label_head
    from brainfm.generator import SubjectData

    return SubjectData(torch.from_numpy(label_head(shape).astype(np.int64)).to(device), name="toy")


def bench(size: int, *, n_samples: int, f_maps: int, levels: int, groups: int, steps: int, warmup: int,
          device: torch.device, subject=None) -> dict:
    from brainfm.generator import Generator
    from brainfm.training.config import apply_overrides, TrainConfig
    from brainfm.training.objectives import build_objective
    from brainfm.training.optim import from_config
    from brainfm.training.trainer import build_model

    cfg = apply_overrides(TrainConfig(), [f"model.f_maps={f_maps}", f"model.num_levels={levels}",
                                          f"model.num_groups={groups}"])
    net = build_model(cfg).to(device)
    obj = build_objective(cfg.loss)
    opt, sched = from_config(net.parameters(), cfg.optim)
    gen = Generator()
    amp = torch.bfloat16 if device.type == "cuda" else None
    subject = subject if subject is not None else toy_subject(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = gen_t = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, gen_t = time.perf_counter(), 0.0
        tg = time.perf_counter()
        b = gen.sample(subject, n_samples=n_samples, size=size, generator=torch.Generator().manual_seed(i),
                       device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        gen_t += time.perf_counter() - tg
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = net(b.inputs)
            loss, _ = obj(out, b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "size": size, "n_samples": n_samples, "f_maps": f_maps, "num_levels": levels,
            "params_M": round(sum(p.numel() for p in net.parameters()) / 1e6, 2),
            "precision": "bf16" if amp else "fp32", "it_per_s": round(steps / dt, 3),
            "samples_per_s": round(steps * n_samples / dt, 3), "generator_fraction": round(gen_t / dt, 3),
            "peak_gpu_mem_GiB": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            if device.type == "cuda" else None, "last_loss": round(float(loss.detach()), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*")
    ap.add_argument("--n-samples", type=int, default=4)
    ap.add_argument("--f-maps", type=int)
    ap.add_argument("--levels", type=int)
    ap.add_argument("--groups", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--prepared", help="use this prepared subject file instead of a toy head")
    a = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        torch.set_num_threads(2)
    sizes = a.sizes or ([128, 160] if cuda else [32])
    subject = None
    if a.prepared:
        from brainfm.training.prepare import load_subject

        subject = load_subject(a.prepared, device)
    for s in sizes:
        try:
            r = bench(s, n_samples=a.n_samples if cuda else min(a.n_samples, 2),
                      f_maps=a.f_maps or (16 if cuda else 4), levels=a.levels or (5 if cuda else 3),
                      groups=a.groups or (8 if cuda else 4), steps=a.steps or (20 if cuda else 3),
                      warmup=a.warmup if cuda else 1, device=device, subject=subject)
        except torch.cuda.OutOfMemoryError:
            r = {"size": s, "error": "out of memory"}
            torch.cuda.empty_cache()
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
