"""Where the time of a CPU training step of the bundled-model recipe goes, side by side with the anchors.

Measured in one process on the real recipe (Training/configs/cpu.yaml: 2 x 80^3 windows at 2 mm,
5 levels x 16 features, bf16 autocast where the CPU has native bf16, channels_last_3d):
- the segmentation losses (cross-entropy + soft Dice, forward + backward) of 2 x 33 x 80^3 logits:
  anchor = the textbook one-hot form (softmax, one-hot volume, products and sums), against
  ``brainfm.training.losses.segmentation_losses`` (one log-softmax, scatter-add, no one-hot volume);
- a whole training step (network, objective, backward, clipping, AdamW) on one generated batch:
  anchor = one-hot segmentation losses and the all-heads zero term that DDP needs (every output cast
  to fp32 and added x 0) in every step; then the new losses with that term; then the step as one
  process now runs it (new losses, no such term).

    python Testing/benchmarks/bench_training_step.py [--threads 2] [--repeats 3] [--prepared .devdata/prepared]

Prints one JSON object (minimum seconds over --repeats after one warm-up) and writes it to
Testing/benchmarks/results/training_step.json. Without prepared data a synthetic head is used.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "Testing" / "pytest"))


def one_hot_losses(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-5):
    """The anchor: cross-entropy and soft Dice written with a one-hot volume."""
    t = target[:, 0].long() if target.dim() == 5 else target.long()
    ce = F.cross_entropy(logits.float(), t)
    p = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(t, logits.shape[1]).movedim(-1, 1).to(p.dtype)
    dims = tuple(range(2, p.dim()))
    dice = 2 * (p * onehot).sum(dims) / (p + onehot).sum(dims).clamp_min(eps)
    present = (onehot.sum(dims) > 0).to(dice.dtype)
    return ce, (((1 - dice) * present).sum(1) / present.sum(1).clamp_min(1)).mean()


def best_of(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up
    times: List[float] = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(min(times), 4)


def recipe_batch(cfg, prepared: Path):
    """The batch of step 0 of the recipe ``cfg`` and what it was drawn from: a prepared training
    subject under ``prepared``, else a synthetic head."""
    if any(prepared.glob("*.npz")):
        from brainfm.training.config import apply_overrides
        from brainfm.training.data import source_from_config

        source = source_from_config(apply_overrides(cfg, [f"data.prepared={prepared}"]), "cpu")
        return source.batch(0, 0, 1), "a prepared training subject"
    from fixtures import label_head
    from brainfm.generator import Generator, GeneratorConfig, SubjectData

    g = cfg.generator
    subj = SubjectData(torch.from_numpy(label_head((176, 208, 176))).long(), name="toy")
    batch = Generator(GeneratorConfig(**g.options)).sample(subj, n_samples=g.n_samples, size=g.size, seed=0,
                                                           voxel_mm=cfg.model.voxel_mm)
    return batch, "a synthetic head (no prepared data)"


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prepared", default=str(REPO / ".devdata" / "prepared"))
    ap.add_argument("--out", default=str(REPO / "Testing" / "benchmarks" / "results" / "training_step.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from brainfm.inference.device import cpu_has_native_bf16
    from brainfm.training import losses as L
    from brainfm.training.config import load_config
    from brainfm.training.objectives import build_objective
    from brainfm.training.optim import from_config
    from brainfm.training.trainer import build_model

    cfg = load_config(REPO / "Training" / "configs" / "cpu.yaml")
    amp = torch.bfloat16 if cpu_has_native_bf16() else None
    size, n = cfg.generator.size, cfg.generator.n_samples
    res: Dict[str, object] = {"recipe": "Training/configs/cpu.yaml", "window": f"{n} x {size}^3",
                              "precision": "bf16" if amp else "fp32", "threads": args.threads}

    # ---- segmentation losses alone
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(n, 33, size, size, size, generator=g) * 3).to(amp or torch.float32)
    logits = logits.contiguous(memory_format=torch.channels_last_3d)
    target = torch.randint(0, 33, (n, 1, size, size, size), generator=g)

    def run(fn):
        def go():
            x = logits.detach().clone().requires_grad_(True)
            ce, dice = fn(x, target)
            (ce + dice).backward()
        return go

    res["seg_losses_s"] = {"one_hot_anchor": best_of(run(one_hot_losses), args.repeats),
                           "segmentation_losses": best_of(run(L.segmentation_losses), args.repeats)}

    # ---- a whole step
    batch, res["batch"] = recipe_batch(cfg, Path(args.prepared))
    torch.manual_seed(0)
    net = build_model(cfg).to(memory_format=torch.channels_last_3d)
    objective = build_objective(cfg.loss)
    opt, _ = from_config(net.parameters(), cfg.optim)
    x = batch.inputs.contiguous(memory_format=torch.channels_last_3d)

    def step(zero_term: bool, seg_losses=L.segmentation_losses):
        def go():
            L_obj.segmentation_losses = seg_losses
            with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
                out = net(x)
                loss, _ = objective(out, batch)
            if zero_term:
                loss = loss + sum(v.float().mean() * 0.0 for v in out.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
        return go

    from brainfm.training import objectives

    L_obj = objectives.L  # the losses module the objective calls
    fast = L.segmentation_losses
    try:
        res["step_s"] = {"one_hot_and_zero_term_anchor": best_of(step(True, one_hot_losses), args.repeats),
                         "new_losses_with_zero_term": best_of(step(True), args.repeats),
                         "one_process_now": best_of(step(False), args.repeats)}
    finally:
        L_obj.segmentation_losses = fast
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
