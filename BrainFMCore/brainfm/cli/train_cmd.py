"""``brainfm train``: train (or continue training) a BrainFM model with the synthetic generator.

Single GPU: ``brainfm train --config Training/configs/pretrain.yaml --prepared data/prepared``.
Many GPUs: ``torchrun --nproc_per_node=8 -m brainfm train ...`` (one process per GPU).
Time-boxed and resumable: ``--minutes 50`` stops cleanly with a checkpoint; rerunning the same
command continues from the latest checkpoint of ``--out``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, List

import brainfm.training  # noqa: F401 - the training part; without it `brainfm` lists this command as not available

HELP = "train a model with the synthetic generator (time-boxed, resumable, multi-GPU with torchrun)"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``train`` on an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser("train", help=HELP, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (see Training/configs); defaults are the compact model")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set generator.size=96 (repeatable)")
    p.add_argument("--prepared", help="folder of prepared subjects (data.prepared)")
    p.add_argument("--out", help="run folder: checkpoints, log.csv, loss_curve.png, model/ (run.out_dir)")
    p.add_argument("--minutes", type=float, help="time box in minutes (run.minutes); 0 = none")
    p.add_argument("--steps", type=int, help="stop at this total step count (run.max_steps)")
    p.add_argument("--resume", default="auto", help="auto (latest checkpoint of --out), none, or a checkpoint folder")
    p.add_argument("--init", help="initialise weights from a model (native/official file or training checkpoint)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N (run.device)")
    p.add_argument("--smoke", action="store_true", help="tiny model and sizes, 4 steps: checks the setup")
    p.add_argument("--export-from", metavar="CHECKPOINT",
                   help="only write the native model of a training checkpoint into --out/model and exit")
    p.add_argument("--progress", choices=("bar", "machine", "none"), default="bar")
    return p


def overrides_of(args: argparse.Namespace) -> List[str]:
    """Command-line options as config overrides (``--smoke`` first, so --set/options win).

    >>> sub = argparse.ArgumentParser().add_subparsers()
    >>> args = add_parser(sub).parse_args(["--smoke", "--steps", "8", "--out", "run1"])
    >>> overrides_of(args)[0], overrides_of(args)[-2:]
    ('model.f_maps=4', ['run.out_dir=run1', 'run.max_steps=8'])
    """
    from brainfm.training.config import SMOKE_OVERRIDES

    ov: List[str] = list(SMOKE_OVERRIDES) if getattr(args, "smoke", False) else []
    ov += list(args.set or [])
    for opt, key in (("prepared", "data.prepared"), ("out", "run.out_dir"), ("minutes", "run.minutes"),
                     ("steps", "run.max_steps"), ("device", "run.device")):
        v = getattr(args, opt, None)
        if v is not None:
            ov.append(f"{key}={v}")
    return ov


def main(args: argparse.Namespace) -> int:
    """Run training; prints a JSON summary line at the end (rank 0)."""
    from brainfm.cli.progress import CancelOnSignal, ProgressReporter
    from brainfm.progress import CancelToken
    from brainfm.training.config import load_config
    from brainfm.training.dist import DistInfo

    cfg = load_config(args.config, overrides_of(args))
    info = DistInfo.from_env()
    if args.export_from:
        from brainfm.training.export import export_checkpoint

        out, step = export_checkpoint(Path(args.export_from), Path(cfg.run.out_dir) / "model",
                                      dtype=cfg.run.export_dtype)
        print(json.dumps({"model": str(out), "step": step}))
        return 0
    from brainfm.training.data import source_from_config
    from brainfm.training.dist import select_device
    from brainfm.training.trainer import Trainer

    device = select_device(cfg.run.device, info)
    source = source_from_config(cfg, device)
    token = CancelToken()
    reporter = ProgressReporter(args.progress) if info.is_main else None
    try:
        with CancelOnSignal(token):
            res = Trainer(cfg, source=source, resume=args.resume, init_from=args.init, progress=reporter,
                          cancel=token, info=info).fit()
    finally:
        if reporter is not None:
            reporter.close()
    if info.is_main:
        print(json.dumps({"step": res.step, "start_step": res.start_step, "stopped": res.stopped,
                          "checkpoint": str(res.checkpoint), "model": str(res.native_model),
                          "log": str(res.log_csv), "val": res.val, "seconds": round(res.seconds, 1)}))
    return 0
