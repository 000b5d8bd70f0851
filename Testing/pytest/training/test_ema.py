"""The moving average of the weights (optim.ema_decay): its value after real training steps, exact
resume, export of the average, and a run resumed from a checkpoint that has no average."""
from __future__ import annotations

import pytest
import torch

from brainfm.errors import CheckpointError
from train_helpers import tiny_config, tiny_source
from brainfm.models import load_model
from brainfm.training.checkpoint import load_checkpoint, read_meta
from brainfm.training.ema import averaged_weights, build_ema
from brainfm.training.export import export_checkpoint
from brainfm.training.restore import model_from_checkpoint
from brainfm.training.trainer import Trainer, build_model

DECAY = 0.6


def _fit(out, steps, *extra, resume="auto"):
    cfg = tiny_config(out, f"run.max_steps={steps}", "run.deterministic=true", f"optim.ema_decay={DECAY}",
                      *extra)
    trainer = Trainer(cfg, source=tiny_source(cfg), resume=resume)
    return cfg, trainer, trainer.fit()


def _last_and_average(cfg, checkpoint):
    net, avg = build_model(cfg), build_model(cfg)
    load_checkpoint(checkpoint, model=net, restore_rng=False)
    load_checkpoint(checkpoint, model=avg, restore_rng=False, use_average=True)
    return net.state_dict(), avg.state_dict()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("ema")
    full = _fit(base / "full", 4, resume="none")
    _fit(base / "half", 2, resume="none")
    second = _fit(base / "half", 4)
    return full, second


def test_average_follows_the_update_rule_over_real_steps(tmp_path):
    """Replaying the optimizer steps by hand gives the average the trainer saved."""
    cfg, trainer, res = _fit(tmp_path / "run", 3, resume="none")
    # re-run the same 3 steps, recording the weights after each step
    cfg2 = tiny_config(tmp_path / "plain", "run.max_steps=1", "run.deterministic=true")
    snaps = []
    for steps in (1, 2, 3):
        cfg2.run.max_steps = steps
        Trainer(cfg2, source=tiny_source(cfg2), resume="auto").fit()
        net = build_model(cfg2)
        load_checkpoint(tmp_path / "plain" / "checkpoints" / f"step_{steps:08d}", model=net, restore_rng=False)
        snaps.append(net.state_dict())
    expect = {k: v.clone() for k, v in snaps[0].items()}  # the first update copies
    for s in snaps[1:]:
        for k in expect:
            expect[k] = DECAY * expect[k] + (1 - DECAY) * s[k]
    last, avg = _last_and_average(cfg, res.checkpoint)
    assert all(torch.equal(last[k], snaps[-1][k]) for k in last)  # the average does not change training
    changed = [k for k in avg if not torch.equal(avg[k], last[k])]
    assert changed, "the average equals the last weights"
    for k in avg:
        torch.testing.assert_close(avg[k], expect[k], rtol=1e-5, atol=1e-7)
    assert read_meta(res.checkpoint)["groups"]["ema"]
    assert trainer.ema is not None and int(trainer.ema.n_averaged) == 3


def test_resumed_average_equals_an_uninterrupted_one(runs):
    (cfg, _, full), (_, _, second) = runs
    assert second.start_step == 2
    a_last, a_avg = _last_and_average(cfg, full.checkpoint)
    b_last, b_avg = _last_and_average(cfg, second.checkpoint)
    assert all(torch.equal(a_last[k], b_last[k]) for k in a_last)
    assert all(torch.equal(a_avg[k], b_avg[k]) for k in a_avg)


def test_the_run_exports_and_restores_the_average(runs, tmp_path):
    (cfg, trainer, full), _ = runs
    _, avg = _last_and_average(cfg, full.checkpoint)
    exported = load_model(full.native_model).net.state_dict()
    assert all(torch.equal(exported[k], avg[k]) for k in avg)
    # export from the checkpoint and the evaluation network: the average too, unless asked otherwise
    w, step = export_checkpoint(full.checkpoint, tmp_path / "x")
    again = load_model(w).net.state_dict()
    assert step == 4 and all(torch.equal(again[k], avg[k]) for k in avg)
    net, _, _ = model_from_checkpoint(full.checkpoint)
    assert all(torch.equal(net.state_dict()[k], avg[k]) for k in avg)
    last_net, _, _ = model_from_checkpoint(full.checkpoint, use_average=False)
    last, _ = _last_and_average(cfg, full.checkpoint)
    assert all(torch.equal(last_net.state_dict()[k], last[k]) for k in last)


def test_resuming_a_run_without_average_starts_it_from_the_resumed_weights(tmp_path):
    plain = tiny_config(tmp_path, "run.max_steps=2", "run.deterministic=true")
    first = Trainer(plain, source=tiny_source(plain), resume="none").fit()
    cfg, trainer, res = _fit(tmp_path, 3)
    assert res.start_step == 2 and int(trainer.ema.n_averaged) == 1
    last, avg = _last_and_average(cfg, res.checkpoint)
    # one update since the resume: the average is the weights after step 3, not the initial weights
    assert all(torch.equal(last[k], avg[k]) for k in last)
    assert not all(torch.equal(last[k], v) for k, v in _last_and_average(plain, first.checkpoint)[0].items())


def test_average_of_a_checkpoint_for_another_model_is_refused(runs, tmp_path):
    (cfg, _, full), _ = runs
    other = build_model(tiny_config(tmp_path, "model.f_maps=8"))

    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(full.checkpoint, model=build_model(cfg), averaged=build_ema(other, decay=0.5),
                        restore_rng=False)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_decay_outside_the_open_interval_is_refused(bad):
    with pytest.raises(ValueError, match="ema_decay"):
        build_ema(torch.nn.Linear(2, 2), decay=bad)


def test_averaged_weights_strip_the_wrapper():
    net = torch.nn.Linear(3, 2)
    ema = build_ema(net, decay=0.9)
    got = averaged_weights(ema.state_dict())
    assert set(got) == {"weight", "bias"} and torch.equal(got["weight"], net.weight.detach())
