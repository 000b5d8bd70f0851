"""Continuous CPU training: the CPU-time budget, timed checkpoints, channels_last, the background
command (start / status / stop / start again resumes) and the finishing step that bundles weights
only when they are better."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brainfm.training.checkpoint import latest_checkpoint, load_checkpoint, read_meta
from brainfm.training.runlog import read_csv_log
from brainfm.training.trainer import Trainer, build_model
from fixtures import label_head
from train_helpers import tiny_config, tiny_source

REPO = Path(__file__).resolve().parents[3]


def test_cpu_budget_stops_the_run_and_is_counted_across_resumes(tmp_path):
    cfg = tiny_config(tmp_path / "run", "run.max_cpu_minutes=0.02")  # 1.2 CPU-seconds in all
    res = Trainer(cfg, source=tiny_source(cfg), resume="none").fit()
    assert res.stopped == "cpu_budget" and res.step >= 1
    spent = read_meta(res.checkpoint)["extra"]["cpu_seconds"]
    assert spent >= 1.2
    rows = [r for r in read_csv_log(tmp_path / "run" / "log.csv") if "loss" in r]
    assert rows and all(float(r["cpu_s"]) <= spent + 1e-6 for r in rows)
    # resuming with the same total budget: nothing left to do
    again = Trainer(cfg, source=tiny_source(cfg), resume="auto").fit()
    assert again.stopped == "cpu_budget" and again.step == res.step


def test_timed_checkpoints(tmp_path):
    cfg = tiny_config(tmp_path / "run", "run.max_steps=3", "run.ckpt_minutes=0.000001", "run.keep_last=0")
    Trainer(cfg, source=tiny_source(cfg), resume="none").fit()
    steps = sorted(int(p.name.split("_")[1]) for p in (tmp_path / "run" / "checkpoints").glob("step_*"))
    assert steps == [1, 2, 3]


def test_channels_last_training_matches_contiguous(tmp_path):
    losses = {}
    for cl in ("false", "true"):
        cfg = tiny_config(tmp_path / cl, "run.max_steps=3", f"run.channels_last={cl}")
        losses[cl] = Trainer(cfg, source=tiny_source(cfg), resume="none").fit().losses
    # same first step (summation order only); later steps drift apart slowly through the updates
    assert abs(losses["false"][0] - losses["true"][0]) < 1e-4 * abs(losses["false"][0])
    assert np.allclose(losses["false"], losses["true"], rtol=1e-2)


def _toy_prepared(tmp_path: Path) -> Path:
    labels = tmp_path / "labels"
    labels.mkdir()
    for i, shape in enumerate([(40, 48, 36), (38, 44, 40), (42, 46, 34)]):
        nib.save(nib.Nifti1Image(label_head(shape).astype(np.int16), np.diag([-1.0, 1, 1, 1])),
                 str(labels / f"sub{i}.nii.gz"))
    from fixtures import blob_head

    nib.save(nib.Nifti1Image(blob_head((44, 50, 40)).data, np.eye(4)), str(tmp_path / "atlas.nii.gz"))
    prepared = tmp_path / "prepared"
    subprocess.run([sys.executable, "-m", "brainfm", "prepare", str(labels), "-o", str(prepared), "--atlas",
                    str(tmp_path / "atlas.nii.gz"), "--workers", "1", "--progress", "none", "--affine-only"],
                   check=True, capture_output=True)
    return prepared


def _wait(pred, timeout=180.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        time.sleep(0.5)
    return False


@pytest.mark.slow
def test_background_training_starts_stops_and_resumes(tmp_path):
    prepared = _toy_prepared(tmp_path)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"extends: {REPO / 'Training/configs/smoke.yaml'}\n"
                   "run: {max_steps: 0, ckpt_every: 1, keep_last: 2, log_every: 1}\n")
    run = tmp_path / "run"
    env = dict(os.environ, PYTHON=sys.executable, CONFIG=str(cfg), RUN_DIR=str(run), PREPARED=str(prepared),
               INIT_WEIGHTS=str(tmp_path / "none.safetensors"), THREADS="1")

    def sh(*args):
        return subprocess.run(["bash", str(REPO / "Training/cpu_train.sh"), *args], env=env, capture_output=True,
                              text=True, timeout=600)

    try:
        r = sh("start")
        assert r.returncode == 0 and "started" in r.stdout, r.stdout + r.stderr
        pid = int((run / "train.pid").read_text())
        # the lowest priority once nohup/nice have exec'd: idle cores only
        assert _wait(lambda: os.getpriority(os.PRIO_PROCESS, pid) == 19, timeout=10)
        # a session of its own, and where the kernel shares the CPU between sessions (autogroup), that
        # session at the lowest priority too: nice alone would only rank it within the caller's session
        assert _wait(lambda: os.getsid(pid) == pid, timeout=10) and os.getsid(0) != pid
        autogroup = Path(f"/proc/{pid}/autogroup")
        if autogroup.exists():
            assert _wait(lambda: autogroup.read_text().split()[-1] == "19", timeout=10), autogroup.read_text()
        assert "already running" in sh("start").stdout
        assert _wait(lambda: latest_checkpoint(run) is not None and read_meta(latest_checkpoint(run))["step"] >= 2), \
            (run / "train.out").read_text()[-2000:]
        assert "running" in sh("status").stdout
        r = sh("stop")
        assert r.returncode == 0 and "stopped" in r.stdout, r.stdout + r.stderr
        assert not Path(f"/proc/{pid}").exists() and not (run / "train.pid").exists()
        first = read_meta(latest_checkpoint(run))["step"]
        assert (run / "model" / "brainfm-compact.safetensors").is_file()  # a clean stop exports
        assert "not running" in sh("status").stdout
        # start again: resumes from the checkpoint (steps continue, nothing repeated)
        assert sh("start").returncode == 0
        assert _wait(lambda: read_meta(latest_checkpoint(run))["step"] >= first + 2), (run / "train.out").read_text()[-2000:]
        assert sh("stop").returncode == 0
    finally:  # a failed assertion must not leave the job training in the background
        if (run / "train.pid").exists():
            try:
                os.kill(int((run / "train.pid").read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
    steps = [int(float(r["step"])) for r in read_csv_log(run / "log.csv") if "loss" in r]
    assert steps == list(range(1, len(steps) + 1))


def _bundle_module(tmp_path: Path, monkeypatch):
    spec = importlib.util.spec_from_file_location("bundle_model", REPO / "Training" / "bundle_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    card = bundled / "MODEL_CARD.md"
    card.write_text("# card\n\n## Training history\n| date | hardware | compute | steps | loss | held-out | real T1 | shipped |\n"
                    "|---|---|---|---|---|---|---|---|\n\n## Next\ntext\n")
    reg = tmp_path / "registry.json"
    reg.write_text(json.dumps({"entries": [{"id": "brainfm-compact", "sha256": None}]}))
    monkeypatch.setattr(mod, "BUNDLED", bundled)
    monkeypatch.setattr(mod, "CARD", card)
    monkeypatch.setattr(mod, "REGISTRY", reg)
    return mod, bundled, card, reg


def test_finish_bundles_only_better_weights(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path / "run", "run.max_steps=2", "model.voxel_mm=2.0")
    Trainer(cfg, source=tiny_source(cfg), resume="none").fit()
    mod, bundled, card, reg = _bundle_module(tmp_path, monkeypatch)
    scores = iter([{"real_t1_dice17": 0.31, "heldout_dice17": 0.4, "level": "below-preview"},
                   {"real_t1_dice17": 0.29, "heldout_dice17": 0.41, "level": "below-preview"},
                   # the bundled weights measured again (the code changed since they were shipped)
                   {"real_t1_dice17": 0.33, "heldout_dice17": 0.42, "level": "below-preview"}])
    monkeypatch.setattr("brainfm.evaluation.quality.measure_quality", lambda *a, **k: dict(next(scores)))
    assert mod.main(["--run", str(tmp_path / "run"), "--data", str(tmp_path), "--no-commit"]) == 0
    meta = json.loads((bundled / "brainfm-compact.json").read_text())
    assert meta["quality"]["real_t1_dice17"] == 0.31 and meta["voxel_mm"] == 2.0
    assert meta["weights_dtype"] == "float16" and meta["provenance"]["totals"]["steps"] == 2
    # the shipped sidecar names no folder of the training machine
    assert meta["provenance"]["recipe"]["run"]["out_dir"] == "run"
    assert str(tmp_path) not in (bundled / "brainfm-compact.json").read_text()
    sha = json.loads(reg.read_text())["entries"][0]["sha256"]
    assert sha == meta["weights_sha256"]
    # a worse model than the bundled one measured again: a history row; the bundled weights stay and
    # their sidecar gets the new measurement
    assert mod.main(["--run", str(tmp_path / "run"), "--data", str(tmp_path), "--no-commit"]) == 0
    meta2 = json.loads((bundled / "brainfm-compact.json").read_text())
    assert meta2["quality"]["real_t1_dice17"] == 0.33 and meta2["weights_sha256"] == sha
    rows = [l for l in card.read_text().splitlines() if l.startswith("| 2")]
    assert len(rows) == 2 and "yes, below-preview" in rows[0] and "no (not better)" in rows[1]
    assert card.read_text().rstrip().endswith("text")  # the rest of the card untouched
    # the learning curve beside the card: one point per step and weights (the second finish replaced it)
    curve = list(csv.DictReader(open(bundled / "training_curve.csv")))
    assert [(c["steps"], c["weights"], c["real_t1_dice17"], c["input_aligned"]) for c in curve] == \
        [("2", "last", "0.29", "True")]
    assert (bundled / "training_curve.png").stat().st_size > 10_000


def test_points_measured_while_training_join_the_curve_at_finish(tmp_path, monkeypatch):
    run = tmp_path / "run"
    cfg = tiny_config(run, "run.max_steps=2", "model.voxel_mm=2.0", "optim.ema_decay=0.9")
    Trainer(cfg, source=tiny_source(cfg), resume="none").fit()
    mod, bundled, card, reg = _bundle_module(tmp_path, monkeypatch)
    before = card.read_text()
    measured, dice = [], iter([0.3, 0.2, 0.35])

    def fake_quality(weights, data, **kw):  # the real measurement needs the development data
        from brainfm.models import load_model

        measured.append(load_model(weights).net.state_dict())
        return {"real_t1_dice17": next(dice), "heldout_dice17": 0.05, "level": "below-preview"}

    monkeypatch.setattr("brainfm.evaluation.quality.measure_quality", fake_quality)
    args = ["--run", str(run), "--data", str(tmp_path), "--no-commit"]
    assert mod.main(args + ["--measure-only"]) == 0
    assert mod.main(args + ["--measure-only", "--weights", "last"]) == 0
    # measuring changes nothing beside the model
    assert card.read_text() == before and not (bundled / "training_curve.csv").exists()
    assert not (bundled / "brainfm-compact.safetensors").exists()
    points = [json.loads(l) for l in (run / "quality.jsonl").read_text().splitlines()]
    assert [(p["steps"], p["weights"]) for p in points] == [(2, "average"), (2, "last")]
    # the average and the last weights differ, and each measurement saw the one it names
    net_avg, net_last = build_model(cfg), build_model(cfg)
    ck = latest_checkpoint(run)
    load_checkpoint(ck, model=net_avg, restore_rng=False, use_average=True)
    load_checkpoint(ck, model=net_last, restore_rng=False)
    for got, want in zip(measured, (net_avg.state_dict(), net_last.state_dict())):
        assert all(torch.allclose(got[k], want[k].half().float()) for k in want)
    assert not all(torch.equal(net_avg.state_dict()[k], net_last.state_dict()[k]) for k in net_last.state_dict())
    # finish: its own point (average weights, as exported) replaces the measured one of the same kind
    assert mod.main(args) == 0
    curve = list(csv.DictReader(open(bundled / "training_curve.csv")))
    assert [(c["steps"], c["weights"], c["real_t1_dice17"]) for c in curve] == [("2", "average", "0.35"), ("2", "last", "0.2")]
    assert not (run / "quality.jsonl").exists()


def test_gpu_handoff_stages_and_adopts_one_continuing_run(tmp_path):
    import shutil

    spec = importlib.util.spec_from_file_location("gpu_handoff", REPO / "Training" / "gpu_handoff.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    run = tmp_path / "cpu"
    cfg = tiny_config(run, "run.max_steps=2", "optim.ema_decay=0.9")
    Trainer(cfg, source=tiny_source(cfg), resume="none").fit()
    staged = mod.stage(run, tmp_path / "dev" / "ckpt")
    meta = json.loads((staged / "meta.json").read_text())
    assert meta["step"] == 2 and meta["optim_dtype"] == "bf16" and (staged / "log.csv").is_file()
    # the moving average travels with the staged checkpoint, unchanged
    avg_run, avg_staged = build_model(cfg), build_model(cfg)
    load_checkpoint(latest_checkpoint(run), model=avg_run, restore_rng=False, use_average=True)
    load_checkpoint(staged, model=avg_staged, restore_rng=False, use_average=True)
    assert meta["groups"]["ema"] and all(torch.equal(a, b) for a, b in zip(avg_run.state_dict().values(),
                                                                           avg_staged.state_dict().values()))
    # the window: resume the staged checkpoint elsewhere and train 2 more steps
    win = tmp_path / "window"
    dst = win / "checkpoints" / "step_00000002"
    dst.mkdir(parents=True)
    for f in staged.iterdir():
        shutil.copy(f, dst / f.name)
    (win / "checkpoints" / "latest").write_text("step_00000002\n")
    shutil.copy(staged / "log.csv", win / "log.csv")
    cfg2 = tiny_config(win, "run.max_steps=4", "optim.ema_decay=0.9")
    res = Trainer(cfg2, source=tiny_source(cfg2), resume="auto").fit()
    assert res.start_step == 2 and res.step == 4
    out = tmp_path / "OUT"
    (out / "ckpt").mkdir(parents=True)
    for f in res.checkpoint.iterdir():
        shutil.copy(f, out / "ckpt" / f.name)
    shutil.copy(win / "log.csv", out / "log.csv")
    mod.adopt(out, run)
    assert read_meta(latest_checkpoint(run))["step"] == 4
    steps = [int(float(r["step"])) for r in read_csv_log(run / "log.csv") if "loss" in r]
    assert steps == [1, 2, 3, 4]
    with pytest.raises(SystemExit, match="not newer"):
        mod.adopt(out, run)
    # the CPU run continues from the adopted state
    cfg3 = tiny_config(run, "run.max_steps=5", "optim.ema_decay=0.9")
    assert Trainer(cfg3, source=tiny_source(cfg3), resume="auto").fit().start_step == 4


@pytest.mark.parametrize("new, old, ship", [
    ((0.30, 0.30), (0.31, 0.20), True),    # a higher mean of real-T1 and held-out Dice
    ((0.33, 0.10), (0.31, 0.20), False),   # a better real T1 alone does not decide
    ((0.310, 0.201), (0.31, 0.20), False),  # within 0.002: the real T1 decides (a tie here)
    ((0.69, 0.90), (0.71, 0.50), False),   # never a lower level (below preview vs preview)
    ((0.71, 0.10), (0.69, 0.90), True),    # a higher level always
    ((0.10, 0.10), None, True),            # nothing bundled yet
])
def test_which_weights_replace_the_bundled_ones(tmp_path, monkeypatch, new, old, ship):
    mod = _bundle_module(tmp_path, monkeypatch)[0]
    q = lambda v: None if v is None else {"real_t1_dice17": v[0], "heldout_dice17": v[1]}  # noqa: E731
    assert mod.better(q(new), q(old)) is ship


def test_the_curve_names_the_tasks_weighted_first(tmp_path, monkeypatch):
    import doctest

    from brainfm.training.config import load_config

    mod, *_ = _bundle_module(tmp_path, monkeypatch)
    assert doctest.testmod(mod).failed == 0
    cpu = load_config(REPO / "Training" / "configs" / "cpu.yaml")
    assert mod.objective_label(cpu.loss.weights) == "segmentation + synthesis first, bias field x20"
    assert mod.objective_label(load_config(REPO / "Training" / "configs" / "pretrain.yaml").loss.weights) == "equal weights"
    # every term the objective weighs belongs to a task the label can name
    from brainfm.training.objectives import BrainFMObjective

    named = {k for terms in mod.TASK_TERMS.values() for k in terms}
    assert set(BrainFMObjective().w) == named
    assert set(cpu.loss.weights) - {"contrastive"} <= named
