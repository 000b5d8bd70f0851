"""GPU part of ``bench_fastpath.py`` (run when CUDA is available): the official-size forward (all
tasks, random weights, centre crop of the voxelmorph T1) and one compact training step at 96^3 x 2
and 160^3 x 2, fp32 vs bf16, with the peak GPU memory. Prints ``RESULT {json}``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fastpath_children as c  # noqa: E402


def forward(arch: str, precision: str, data: str, crop: int) -> dict:
    from brainfm.inference import Predictor

    vol, what = c.crop_t1(data, crop)
    p = Predictor(c.build_model(arch), device="cuda", precision=precision)
    p.predict(vol, tasks=["t1"])  # warm-up (cuDNN autotuning, allocator)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    pred = p.predict(vol, tasks=["all"])
    torch.cuda.synchronize()
    return {"arch": arch, "input": what, "precision": precision, "wall_s": round(time.perf_counter() - t0, 3),
            "forward_s": round(pred.metadata["timings"]["forward"], 3),
            "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def train(size: int, precision: str, steps: int = 10) -> dict:
    from brainfm.generator import Generator, SubjectData
    from brainfm.training.config import TrainConfig
    from brainfm.training.objectives import build_objective
    from brainfm.training.optim import from_config
    from brainfm.training.trainer import build_model

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pytest"))
    from fixtures import label_head

    dev = torch.device("cuda")
    cfg = TrainConfig()
    net = build_model(cfg).to(dev)
    obj = build_objective(cfg.loss)
    opt, sched = from_config(net.parameters(), cfg.optim)
    subject = SubjectData(torch.from_numpy(label_head((176, 208, 176)).astype(np.int64)).to(dev), name="toy")
    gen = Generator()
    amp = torch.bfloat16 if precision == "bf16" else None
    torch.cuda.reset_peak_memory_stats()
    gen_t, t_all = 0.0, 0.0
    for i in range(steps + 2):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        b = gen.sample(subject, n_samples=2, size=size, generator=torch.Generator().manual_seed(i), device=dev)
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        with torch.autocast("cuda", dtype=amp or torch.float32, enabled=amp is not None):
            loss, _ = obj(net(b.inputs), b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        torch.cuda.synchronize()
        if i >= 2:
            gen_t += t1 - t0
            t_all += time.perf_counter() - t0
    return {"size": size, "n_samples": 2, "precision": precision, "it_per_s": round(steps / t_all, 3),
            "generator_share": round(gen_t / t_all, 3),
            "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--crop", type=int, default=112)
    a = ap.parse_args()
    res = {"gpu": torch.cuda.get_device_name(0), "forward": [], "train": []}
    for arch, crop in (("official", 0), ("compact", 0)):
        for prec in ("fp32", "bf16"):
            res["forward"].append(forward(arch, prec, a.data, crop))
    for size in (96, 160):
        for prec in ("fp32", "bf16"):
            res["train"].append(train(size, prec))
    print("RESULT " + json.dumps(res))


if __name__ == "__main__":
    main()
