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


def fit_heads(ckpt, cfg, heads, batches, iters):
    """Fitted hidden layers of ``heads`` for the grown configuration ``cfg`` (empty without heads)."""
    if not heads:
        return {}
    import time
    from brainfm.training.data import source_from_config
    from brainfm.training.head_fit import fit_hidden_layers, frozen_samples
    from brainfm.training.restore import model_from_checkpoint

    net, _, meta = model_from_checkpoint(ckpt)
    hidden = dict(cfg.model.head_hidden or {})
    missing = [h for h in heads if h not in hidden]
    if missing:
        raise SystemExit(f"grow_run: --fit-heads {missing}: the configuration adds no hidden layer to them "
                         "(model.head_hidden)")
    widths = {hidden[h] for h in heads}
    if len(widths) != 1:
        raise SystemExit(f"grow_run: --fit-heads needs one hidden width for all, got {sorted(widths)}")
    source = source_from_config(cfg, "cpu")
    t0 = time.time()
    start = int(meta["step"]) + 1_000_000  # batches the run itself will not draw
    feats, targets = frozen_samples(net, (source.batch(start + i) for i in range(batches)), heads=heads)
    print(f"grow_run: features of {feats.shape[0]} samples in {time.time() - t0:.0f} s; fitting {heads}", flush=True)
    fitted = fit_hidden_layers(net, feats, targets, hidden=widths.pop(), iters=iters)
    print(f"grow_run: fitted in {time.time() - t0:.0f} s", flush=True)
    return fitted


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
        init = fit_heads(ckpt, cfg, [h for h in a.fit_heads.split(",") if h], a.fit_batches, a.fit_iters)
        out = grow_checkpoint(ckpt, a.out, cfg, init=init)
    except BrainFMError as e:
        print(f"grow_run: {e}", file=sys.stderr)
        return 2
    print(f"grow_run: {ckpt} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
