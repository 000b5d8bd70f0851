"""Grow a model file for a training configuration that gives some heads a hidden layer it lacks, those
layers fitted on the model's frozen features (brainfm.training.head_fit), so that a run started from the
model (``brainfm train --init``) starts with them fitted rather than at zero.

    python Training/grow_model.py --config Training/configs/cpu.yaml \
        --from BrainFMCore/brainfm/models/bundled/brainfm-compact.safetensors --out runs/cpu/init/grown.safetensors

Exit status 0 with the grown model written; 3 when the configuration adds nothing to the model (nothing
written: start from the model itself); 2 on an error. `bash Training/cpu_train.sh start` calls it on a
machine without a run. The model file is only read.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

NOTHING_TO_ADD = 3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="training configuration (YAML)")
    ap.add_argument("--from", dest="source", required=True, help="native model file (.safetensors)")
    ap.add_argument("--out", required=True, help="grown model file to write (.safetensors)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    ap.add_argument("--fit-batches", type=int, default=16, help="synthetic batches for the fit")
    ap.add_argument("--fit-iters", type=int, default=2000, help="steps of the fit")
    a = ap.parse_args(argv)
    from brainfm.errors import BrainFMError
    from brainfm.models import BrainFMNet, load_model, save_native
    from brainfm.training.config import load_config
    from brainfm.training.head_fit import added_heads, fit_for_config

    try:
        cfg = load_config(a.config, a.overrides)
        net, info = load_model(a.source)
        heads = added_heads(net.config, cfg)
        if not heads:
            print(f"grow_model: the configuration adds no hidden layer to {a.source}")
            return NOTHING_TO_ADD
        fitted = fit_for_config(net, cfg, heads, batches=a.fit_batches, iters=a.fit_iters,
                                log=lambda line: print(f"grow_model: {line}", flush=True))
        hidden = {**dict(net.config.head_hidden or {}), **{h: int(cfg.model.head_hidden[h]) for h in heads}}
        grown = BrainFMNet(dataclasses.replace(net.config, head_hidden=hidden))
        grown.load_state_dict({**grown.state_dict(), **net.state_dict(), **fitted}, strict=True)
        weights, _ = save_native(grown.eval(), Path(a.out), info=info)
    except BrainFMError as e:
        print(f"grow_model: {e}", file=sys.stderr)
        return 2
    print(f"grow_model: {a.source} -> {weights} (fitted hidden layers: {', '.join(heads)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
