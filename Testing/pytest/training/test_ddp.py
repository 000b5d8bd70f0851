"""The DDP path on CPU: 2 processes, Gloo backend, tiny model, real generator, 2 steps."""
from __future__ import annotations

import json
import socket

import torch.multiprocessing as mp

from train_helpers import ddp_worker, tiny_config
from brainfm.training.checkpoint import load_checkpoint
from brainfm.training.runlog import read_csv_log
from brainfm.training.trainer import build_model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_training(tmp_path):
    mp.spawn(ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["step"] == r1["step"] == 2
    assert r0["losses"] != r1["losses"]  # each rank trains on its own batches ...
    assert r0["weights_sha"] == r1["weights_sha"]  # ... and DDP keeps the replicas identical
    assert r0["checkpoint"] and r1["checkpoint"] is None  # only rank 0 writes
    rows = [r for r in read_csv_log(tmp_path / "run" / "log.csv") if "loss" in r]
    assert rows[-1]["loss"] == __import__("pytest").approx((r0["losses"][-1] + r1["losses"][-1]) / 2, rel=1e-6)
    cfg = tiny_config(tmp_path / "run")
    meta = load_checkpoint(r0["checkpoint"], model=build_model(cfg), restore_rng=False)
    assert meta["extra"]["world_size"] == 2
