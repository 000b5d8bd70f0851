"""Exact resume: 2N steps == N steps + resume + N steps (losses and weights bit-identical on CPU);
clear errors for checkpoints of another architecture and for corrupt files."""
from __future__ import annotations

import json

import pytest
import torch

from train_helpers import tiny_config, tiny_source
from brainfm.errors import CheckpointError
from brainfm.training.checkpoint import latest_checkpoint, load_checkpoint, read_meta
from brainfm.training.trainer import Trainer, build_model


def _weights(ckpt_dir, cfg):
    net = build_model(cfg)
    load_checkpoint(ckpt_dir, model=net, restore_rng=False)
    return net.state_dict()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    full_cfg = tiny_config(base / "full", "run.max_steps=4", "run.deterministic=true")
    full = Trainer(full_cfg, source=tiny_source(full_cfg), resume="none").fit()
    half_cfg = tiny_config(base / "half", "run.max_steps=2", "run.deterministic=true")
    first = Trainer(half_cfg, source=tiny_source(half_cfg), resume="none").fit()
    cont_cfg = tiny_config(base / "half", "run.max_steps=4", "run.deterministic=true")
    second = Trainer(cont_cfg, source=tiny_source(cont_cfg), resume="auto").fit()
    return full_cfg, full, first, second


def test_two_halves_equal_one_run(runs):
    cfg, full, first, second = runs
    assert second.start_step == 2 and second.step == 4
    assert first.losses + second.losses == full.losses  # bit-identical loss values
    a, b = _weights(full.checkpoint, cfg), _weights(second.checkpoint, cfg)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert latest_checkpoint(second.checkpoint.parent.parent) == second.checkpoint
    meta = read_meta(second.checkpoint)
    assert meta["step"] == 4 and meta["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.002)
    # the CSV log of the resumed run continues the first one
    from brainfm.training.runlog import read_csv_log

    rows = read_csv_log(second.log_csv)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert [r["loss"] for r in rows if "loss" in r] == pytest.approx(full.losses, rel=1e-9)


def test_resume_from_another_architecture_names_the_mismatch(runs, tmp_path):
    cfg, full, _, _ = runs
    other = tiny_config(tmp_path, "model.f_maps=8")
    with pytest.raises(CheckpointError, match=r"f_maps: checkpoint 4 vs model 8"):
        Trainer(other, source=tiny_source(other), resume=str(full.checkpoint)).fit()
    # without the architecture record, tensor shapes are compared and named
    with pytest.raises(CheckpointError, match=r"backbone\.encoders\.0\..*checkpoint .* vs model"):
        load_checkpoint(full.checkpoint, model=build_model(other))


def test_corrupt_or_incomplete_checkpoint_is_refused(runs, tmp_path):
    import shutil

    cfg, full, _, _ = runs
    bad = tmp_path / "bad"
    shutil.copytree(full.checkpoint, bad)
    weights = sorted(bad.glob("model-*.safetensors"))[0]
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(bad, model=build_model(cfg))
    weights.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(bad, model=build_model(cfg))
    (bad / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad, model=build_model(cfg))


def test_sharding_and_half_precision_optimizer_state(tmp_path):
    from brainfm.training.checkpoint import save_checkpoint
    from brainfm.training.optim import build_optimizer

    cfg = tiny_config(tmp_path)
    net = build_model(cfg)
    opt, sched = build_optimizer(net.parameters(), lr=1e-3)
    net(torch.rand(1, 1, 16, 16, 16))["T1"].mean().backward()
    opt.step()
    path = save_checkpoint(tmp_path, model=net, optimizer=opt, scheduler=sched, step=1, optim_dtype="bf16",
                           max_file_mb=0.1)
    shards = sorted(p.name for p in path.glob("*.safetensors"))
    assert len([s for s in shards if s.startswith("model-")]) > 1
    assert all(p.stat().st_size <= 0.1 * 2**20 for p in path.glob("*.safetensors"))
    net2 = build_model(cfg)
    opt2, sched2 = build_optimizer(net2.parameters(), lr=1e-3)
    load_checkpoint(path, model=net2, optimizer=opt2, scheduler=sched2)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), net2.state_dict().values()))
    s1, s2 = opt.state_dict()["state"][0], opt2.state_dict()["state"][0]
    assert s2["exp_avg"].dtype == torch.float32
    assert torch.allclose(s1["exp_avg"], s2["exp_avg"], rtol=1e-2, atol=1e-8)
    assert json.loads((path / "meta.json").read_text())["optim_dtype"] == "bf16"
