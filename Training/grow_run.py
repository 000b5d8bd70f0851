"""Grow a training run's network from its latest checkpoint (e.g. add a hidden layer to a head, or
residual full-resolution blocks with ``--set "model.refine=[32]"``).

    python Training/grow_run.py --config Training/configs/cpu.yaml --from runs/cpu --out runs/cpu-grown \
        --set "model.head_hidden={segmentation: 64}"

writes runs/cpu-grown/checkpoints/step_<N>/ for the configured model, at the step of the latest checkpoint
of runs/cpu (or of the checkpoint folder given). The grown network computes what the old one did; its
added tensors are trained from there (``brainfm train --config ... --set run.out_dir=runs/cpu-grown``).
The source run is only read. See brainfm.training.grow.

With ``--fit-heads T1,T2,FLAIR,CT`` the hidden layers that the configuration adds to those heads start
fitted (brainfm.training.head_fit) on the frozen features of the checkpoint's averaged network, from
``--fit-batches`` synthetic batches of the training data, instead of at zero.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="training configuration of the grown model (YAML)")
    ap.add_argument("--from", dest="source", required=True, help="run folder or checkpoint folder to grow")
    ap.add_argument("--out", required=True, help="new, empty run folder")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    ap.add_argument("--fit-heads", default="", help="comma-separated heads whose added hidden layers start fitted")
    ap.add_argument("--fit-batches", type=int, default=16, help="synthetic batches for that fit")
    ap.add_argument("--fit-iters", type=int, default=2000, help="steps of that fit")
    a = ap.parse_args(argv)
    from brainfm.errors import BrainFMError
    from brainfm.training.checkpoint import latest_checkpoint
    from brainfm.training.config import load_config
    from brainfm.training.grow import grow_checkpoint

    try:
        cfg = load_config(a.config, [*a.overrides, f"run.out_dir={a.out}"])
        src = Path(a.source)
        ckpt = src if (src / "meta.json").is_file() else latest_checkpoint(src)
        if ckpt is None:
            print(f"grow_run: no checkpoint in {src}", file=sys.stderr)
            return 2
        heads = [h for h in a.fit_heads.split(",") if h]
        init = {}
        if heads:
            from brainfm.training.head_fit import fit_for_config
            from brainfm.training.restore import model_from_checkpoint

            init = fit_for_config(model_from_checkpoint(ckpt)[0], cfg, heads, batches=a.fit_batches,
                                  iters=a.fit_iters, log=lambda line: print(f"grow_run: {line}", flush=True))
        out = grow_checkpoint(ckpt, a.out, cfg, init=init)
    except BrainFMError as e:
        print(f"grow_run: {e}", file=sys.stderr)
        return 2
    print(f"grow_run: {ckpt} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
