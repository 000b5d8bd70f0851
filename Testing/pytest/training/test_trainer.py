"""Trainer on a tiny real model and the real generator: overfitting, outputs, time box, errors."""
from __future__ import annotations

import json

import pytest
import torch

from train_helpers import FixedSource, tiny_config, tiny_source
from brainfm.errors import ResourceError
from brainfm.progress import CancelToken
from brainfm.training.runlog import read_csv_log
from brainfm.training.trainer import Trainer


def test_tiny_model_overfits_one_subject(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config(tmp_path / "run", "run.max_steps=30", "optim.lr=0.01", "optim.warmup_steps=2",
                      "model.f_maps=8", "model.unit_feat=false", "generator.size=24", "generator.n_samples=1",
                      "model.heads={T1: 1, segmentation: 33}")
    src = FixedSource(tiny_source(cfg, p_flip=0.0))
    res = Trainer(cfg, source=src, resume="none").fit()
    first = sum(res.losses[:2]) / 2
    last = sum(res.losses[-2:]) / 2
    assert res.step == 30 and len(res.losses) == 30
    assert last < first / 3, (first, last)
    # the outputs of a run
    rows = read_csv_log(res.log_csv)
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 31))
    assert rows[0]["lr"] == pytest.approx(0.005)  # warm-up: step 0 at lr/2
    assert {"seg_ce", "seg_dice", "T1", "T1_grad"} <= set(rows[0])
    assert res.curve_png.is_file() and res.curve_png.read_bytes()[:4] == b"\x89PNG"
    assert res.val["dice"] > 0.2 and res.val["psnr_T1"] > 10.0
    assert json.loads((tmp_path / "run" / "val.jsonl").read_text().splitlines()[-1])["step"] == 30


def test_native_export_loads_in_the_engine(tmp_path):
    from brainfm.models import load_model

    cfg = tiny_config(tmp_path / "run", "run.max_steps=2", "loss.contrastive=cifl", "loss.contrast_voxels=256")
    src = tiny_source(cfg)
    trainer = Trainer(cfg, source=src, resume="none")
    res = trainer.fit()
    assert "contrastive" in read_csv_log(res.log_csv)[0]  # CIFL term between the 2 simulated sequences
    loaded = load_model(res.native_model)
    assert loaded.info.label_scheme == "fs33"
    assert loaded.info.config.heads["segmentation"] == 33
    x = src.batch(5).inputs[:1]
    from brainfm.training.trainer import build_model
    from brainfm.training.checkpoint import load_checkpoint

    net = build_model(cfg)
    load_checkpoint(res.checkpoint, model=net)
    with torch.no_grad():
        a = net.eval()(x)["segmentation"]
        b = loaded.net(x)["segmentation"]
    assert torch.allclose(a, b, atol=1e-5)


def test_time_box_and_cancel_stop_with_a_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path / "run", "run.minutes=0.0000001")
    res = Trainer(cfg, source=tiny_source(cfg), resume="none").fit()
    assert res.stopped == "time" and res.checkpoint is not None and (res.checkpoint / "meta.json").is_file()
    tok = CancelToken()
    tok.cancel()
    res = Trainer(tiny_config(tmp_path / "run2"), source=tiny_source(cfg), cancel=tok, resume="none").fit()
    assert res.stopped == "cancelled" and res.step == 0


class _OOMSource:
    def batch(self, step, rank=0, world_size=1):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_names_the_settings_to_lower(tmp_path):
    cfg = tiny_config(tmp_path / "run", "run.max_steps=3")
    with pytest.raises(ResourceError) as e:
        Trainer(cfg, source=_OOMSource(), resume="none").fit()
    msg = str(e.value)
    assert "generator.size=16" in msg and "generator.n_samples=2" in msg and "Lower" in msg


def test_cli_rejects_missing_or_empty_data(tmp_path, capsys):
    from brainfm.cli.main import main

    (tmp_path / "empty").mkdir()
    assert main(["train", "--smoke", "--prepared", str(tmp_path / "empty"), "--out", str(tmp_path / "r"),
                 "--device", "cpu", "--progress", "none"]) == 2
    assert "no prepared subjects" in capsys.readouterr().err
    assert main(["train", "--smoke", "--prepared", str(tmp_path / "nope"), "--out", str(tmp_path / "r"),
                 "--progress", "none"]) == 2
    assert main(["train", "--smoke", "--set", "optim.lr=fast", "--progress", "none"]) == 2


@pytest.mark.slow
def test_device_run_smoke_prepares_trains_resumes_and_collects(tmp_path):
    """Training/device_run.sh --smoke on CPU: prepare toy label maps, train 2 steps, evaluate, copy the
    results; a second window resumes from the returned checkpoint."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import nibabel as nib
    import numpy as np

    from fixtures import blob_head, label_head

    repo = Path(__file__).resolve().parents[3]
    dev = tmp_path / "dev"
    (dev / "labels").mkdir(parents=True)
    for i, shape in enumerate([(40, 48, 36), (38, 44, 40), (42, 46, 34)]):
        nib.save(nib.Nifti1Image(label_head(shape).astype(np.int16), np.diag([-1.0, 1, 1, 1])),
                 str(dev / "labels" / f"sub{i}.nii.gz"))
    nib.save(nib.Nifti1Image(blob_head((44, 50, 40)).data, np.eye(4)), str(dev / "atlas.nii.gz"))
    env = dict(os.environ, DEVDATA=str(dev), ATLAS=str(dev / "atlas.nii.gz"), PYTHON=sys.executable,
               OMP_NUM_THREADS="2")

    def window(out, steps):
        r = subprocess.run(["bash", str(repo / "Training" / "device_run.sh"), "--smoke", "--steps", str(steps)],
                           env=dict(env, OUT=str(out)), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        return r.stdout

    out1 = tmp_path / "out1"
    window(out1, 2)
    got = sorted(str(p.relative_to(out1)) for p in out1.rglob("*") if p.is_file())
    assert {"ckpt/meta.json", "ckpt/model-00.safetensors", "log.csv", "eval.json", "loss_curve.png"} <= set(got)
    assert len(got) <= 8 and all((out1 / g).stat().st_size <= 16 * 2**20 for g in got)
    ev = json.loads((out1 / "eval.json").read_text())
    assert len(ev["subjects"]) == 2 and 0.0 <= ev["mean"]["dice"] <= 1.0
    # next window: the returned checkpoint and log travel back in .devdata/ckpt
    (dev / "ckpt").mkdir()
    for f in (out1 / "ckpt").iterdir():
        shutil.copy(f, dev / "ckpt" / f.name)
    shutil.copy(out1 / "log.csv", dev / "ckpt" / "log.csv")
    out2 = tmp_path / "out2"
    text = window(out2, 4)
    assert "resuming from step 2" in text and "preparing" not in text
    assert json.loads((out2 / "ckpt" / "meta.json").read_text())["step"] == 4
    steps = [r["step"] for r in read_csv_log(out2 / "log.csv") if "loss" in r]
    assert steps == [1.0, 2.0, 3.0, 4.0]


class _NaNAtStep1:
    def __init__(self, source):
        self.source = source

    def batch(self, step, rank=0, world_size=1):
        b = self.source.batch(step, rank, world_size)
        if step == 1:
            b.inputs = torch.full_like(b.inputs, float("nan"))
        return b


def test_non_finite_loss_skips_the_update(tmp_path):
    import math

    cfg = tiny_config(tmp_path / "run", "run.max_steps=3")
    trainer = Trainer(cfg, source=_NaNAtStep1(tiny_source(cfg)), resume="none")
    res = trainer.fit()
    assert math.isnan(res.losses[1]) and math.isfinite(res.losses[0]) and math.isfinite(res.losses[2])
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
