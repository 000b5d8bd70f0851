"""Hand the CPU run to a GPU window and take it back, so both add to one training run.

    python Training/gpu_handoff.py stage [--run runs/cpu] [--to .devdata/ckpt]
        the newest checkpoint of the run, optimizer state in bf16 (about 32 MiB in all for the compact
        model, to travel with .devdata), plus log.csv, into .devdata/ckpt (replaced);
    python Training/gpu_handoff.py adopt OUT_DIR [--run runs/cpu]
        the checkpoint a GPU window returned (OUT_DIR/ckpt/*, OUT_DIR/log.csv) becomes the run's newest
        checkpoint and log: `bash Training/cpu_train.sh start` continues from it. Refused when it is not
        newer than the run's own checkpoint or belongs to another architecture.

Steps, CPU seconds (CPU devices) and GPU seconds (CUDA devices) travel in the checkpoint, so the model
card's totals count both.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

REPO = Path(__file__).resolve().parents[1]


def stage(run: Path, dest: Path) -> Path:
    import torch

    from brainfm.training.checkpoint import latest_checkpoint, load_checkpoint, read_meta, save_checkpoint
    from brainfm.training.config import TrainConfig
    from brainfm.training.ema import build_ema
    from brainfm.training.optim import from_config
    from brainfm.training.trainer import build_model

    ck = latest_checkpoint(run)
    if ck is None:
        raise SystemExit(f"gpu_handoff: no checkpoint in {run}")
    meta = read_meta(ck)
    cfg = TrainConfig.from_dict(meta.get("config") or {})
    net = build_model(cfg)
    opt, sched = from_config(net.parameters(), cfg.optim)
    gen = torch.Generator()
    ema = build_ema(net, decay=cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
    load_checkpoint(ck, model=net, optimizer=opt, scheduler=sched, generator=gen, averaged=ema)
    with tempfile.TemporaryDirectory() as tmp:
        out = save_checkpoint(tmp, model=net, optimizer=opt, scheduler=sched, step=int(meta["step"]),
                              config=meta.get("config"), architecture=meta.get("architecture"), generator=gen,
                              extra=meta.get("extra"), optim_dtype="bf16", max_file_mb=16.0, keep_last=1,
                              averaged=ema if meta["groups"].get("ema") else None)
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        for f in out.iterdir():
            shutil.copy2(f, dest / f.name)
    if (run / "log.csv").is_file():
        shutil.copy2(run / "log.csv", dest / "log.csv")
    size = sum(f.stat().st_size for f in dest.iterdir()) / 2**20
    print(f"gpu_handoff: staged step {meta['step']} into {dest} ({size:.1f} MiB)")
    return dest


def adopt(out_dir: Path, run: Path) -> Path:
    from brainfm.training.checkpoint import latest_checkpoint, read_meta

    src = out_dir / "ckpt"
    meta = read_meta(src)
    mine = latest_checkpoint(run)
    if mine is not None:
        own = read_meta(mine)
        if own.get("architecture") != meta.get("architecture"):
            raise SystemExit(f"gpu_handoff: {src} holds another architecture than {run}")
        if int(meta["step"]) <= int(own["step"]):
            raise SystemExit(f"gpu_handoff: {src} (step {meta['step']}) is not newer than {mine.name}")
    root = run / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{int(meta['step']):08d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    for name in ["meta.json", *meta.get("files", {})]:
        shutil.copy2(src / name, tmp / name)
    tmp.rename(final)
    (root / "latest").write_text(final.name + "\n")
    if (out_dir / "log.csv").is_file():
        shutil.copy2(out_dir / "log.csv", run / "log.csv")
    extra = meta.get("extra") or {}
    print(json.dumps({"adopted": str(final), "step": meta["step"],
                      "gpu_minutes": round(float(extra.get("gpu_seconds", 0)) / 60, 1)}))
    return final


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stage")
    s.add_argument("--run", default=str(REPO / "runs" / "cpu"))
    s.add_argument("--to", default=str(REPO / ".devdata" / "ckpt"))
    a = sub.add_parser("adopt")
    a.add_argument("out_dir")
    a.add_argument("--run", default=str(REPO / "runs" / "cpu"))
    args = ap.parse_args(argv)
    if args.cmd == "stage":
        stage(Path(args.run), Path(args.to))
    else:
        adopt(Path(args.out_dir), Path(args.run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
