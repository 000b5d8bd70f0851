"""Cost of residual refinement blocks (``model.refine``) in a CPU training step of the bundled-model recipe.

A whole step (network, objective, backward, clipping, AdamW) on one prepared batch of Training/configs/cpu.yaml
(2 x 80^3 at 2 mm, bf16 autocast where the CPU computes bf16 natively, channels_last_3d), side by side in
one process: the recipe's network (the anchor) and the same network with one block of each width given.

    python Testing/benchmarks/bench_refine.py [--widths 16 32] [--threads 1] [--repeats 2]

Prints one JSON object (minimum seconds over --repeats after one warm-up, and each variant's ratio to the
anchor) and writes it to Testing/benchmarks/results/refine_step.json. Needs .devdata/prepared (else a
synthetic head is used).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "Testing" / "pytest"))


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--prepared", default=str(REPO / ".devdata" / "prepared"))
    ap.add_argument("--out", default=str(REPO / "Testing" / "benchmarks" / "results" / "refine_step.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from bench_training_step import best_of, recipe_batch
    from brainfm.inference.device import cpu_has_native_bf16
    from brainfm.training.config import apply_overrides, load_config
    from brainfm.training.objectives import build_objective
    from brainfm.training.optim import from_config
    from brainfm.training.trainer import build_model

    cfg = load_config(REPO / "Training" / "configs" / "cpu.yaml")
    amp = torch.bfloat16 if cpu_has_native_bf16() else None
    batch, where = recipe_batch(cfg, Path(args.prepared))
    x = batch.inputs.contiguous(memory_format=torch.channels_last_3d)
    objective = build_objective(cfg.loss)

    def seconds(refine: List[int]) -> float:
        torch.manual_seed(0)
        net = build_model(apply_overrides(cfg, [f"model.refine={refine}"])).to(memory_format=torch.channels_last_3d)
        opt, _ = from_config(net.parameters(), cfg.optim)

        def step() -> None:
            with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
                loss, _ = objective(net(x), batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()

        return round(best_of(step, args.repeats), 3)

    res: Dict[str, object] = {"recipe": "Training/configs/cpu.yaml", "batch": where, "threads": args.threads,
                              "precision": "bf16" if amp else "fp32",
                              "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    steps = {"recipe (anchor)": seconds([])}
    for w in args.widths:
        steps[f"refine [{w}]"] = seconds([w])
    res["step_s"] = steps
    res["ratio_to_anchor"] = {k: round(v / steps["recipe (anchor)"], 3) for k, v in steps.items()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
