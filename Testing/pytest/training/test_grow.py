"""Growing a run (brainfm.training.grow): a checkpoint for a model with an added head hidden layer
computes exactly what the old one did, keeps the moments and random streams, resumes, and learns."""
from __future__ import annotations

import pytest
import torch

from train_helpers import tiny_config, tiny_source
from brainfm.errors import CheckpointError
from brainfm.training.checkpoint import load_checkpoint, read_meta, _read_shards
from brainfm.training.grow import grow_checkpoint
from brainfm.training.trainer import Trainer, architecture_of, build_model

HIDDEN = "model.head_hidden={segmentation: 6}"
COMMON = ("run.deterministic=true", "optim.ema_decay=0.9")


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    base = tmp_path_factory.mktemp("grow")
    cfg = tiny_config(base / "old", "run.max_steps=2", *COMMON)
    first = Trainer(cfg, source=tiny_source(cfg), resume="none").fit()
    new_cfg = tiny_config(base / "new", "run.max_steps=2", HIDDEN, *COMMON)
    path = grow_checkpoint(first.checkpoint, base / "new", new_cfg)
    return base, cfg, new_cfg, first, path


def test_grown_checkpoint_computes_what_the_old_one_did(grown):
    _, cfg, new_cfg, first, path = grown
    meta = read_meta(path)
    assert meta["step"] == 2 and meta["architecture"]["head_hidden"] == {"segmentation": 6}
    assert sorted(meta["extra"]["grown_from"]["added"]) == [
        "head.final_conv_segmentation.hidden.0.bias", "head.final_conv_segmentation.hidden.0.weight",
        "head.final_conv_segmentation.hidden.2.weight"]
    x = torch.rand(1, 1, 16, 16, 16)
    for average in (False, True):
        old, new = build_model(cfg), build_model(new_cfg)
        load_checkpoint(first.checkpoint, model=old, use_average=average, restore_rng=False)
        load_checkpoint(path, model=new, use_average=average, restore_rng=False,
                        architecture=architecture_of(new_cfg))
        with torch.no_grad():
            a, b = old(x), new(x)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_grown_checkpoint_keeps_the_adam_moments_of_shared_tensors(grown):
    _, cfg, new_cfg, first, path = grown
    old_meta, new_meta = read_meta(first.checkpoint), read_meta(path)
    old = _read_shards(first.checkpoint, old_meta["groups"]["optim"], "cpu")
    new = _read_shards(path, new_meta["groups"]["optim"], "cpu")
    names_old = [n for n, _ in build_model(cfg).named_parameters()]
    names_new = [n for n, _ in build_model(new_cfg).named_parameters()]
    compared = 0
    for j, n in enumerate(names_new):
        i = names_old.index(n) if n in names_old else None
        if i is not None and f"{i}.exp_avg_sq" in old:
            assert torch.equal(new[f"{j}.exp_avg_sq"], old[f"{i}.exp_avg_sq"]), n
            assert torch.equal(new[f"{j}.step"], old[f"{i}.step"]), n
            compared += 1
        else:  # an added tensor (or one the objective never used) has no moments yet
            assert f"{j}.exp_avg" not in new, n
    assert compared >= 40
    assert new_meta["rng"] == old_meta["rng"]


def test_grown_run_resumes_with_the_same_first_loss_and_trains_the_hidden_layer(grown):
    base, cfg, new_cfg, first, path = grown
    cont_old = tiny_config(base / "old", "run.max_steps=4", *COMMON)
    old = Trainer(cont_old, source=tiny_source(cont_old), resume="auto").fit()
    cont_new = tiny_config(base / "new", "run.max_steps=4", HIDDEN, *COMMON)
    new = Trainer(cont_new, source=tiny_source(cont_new), resume="auto").fit()
    assert new.start_step == 2 and new.step == 4
    # same weights, data and random streams: the step-3 loss is the old run's
    assert new.losses[0] == pytest.approx(old.losses[0], rel=1e-6)
    net = build_model(cont_new)
    load_checkpoint(new.checkpoint, model=net, restore_rng=False)
    assert net.head["final_conv_segmentation"].hidden[2].weight.abs().sum() > 0


def test_growing_refuses_to_remove_tensors_or_overwrite(grown, tmp_path):
    base, cfg, new_cfg, first, path = grown
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        grow_checkpoint(first.checkpoint, base / "new", new_cfg)
    fewer = tiny_config(tmp_path / "fewer", "model.heads={T1: 1, segmentation: 33}")
    with pytest.raises(CheckpointError, match="is not in the new model"):
        grow_checkpoint(first.checkpoint, tmp_path / "fewer", fewer)
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(first.checkpoint, broken)
    weights = next(broken.glob("model*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(CheckpointError, match="corrupt"):
        grow_checkpoint(broken, tmp_path / "from_broken", new_cfg)
    wider = tiny_config(tmp_path / "wider", "model.f_maps=8")
    with pytest.raises(CheckpointError, match=r"checkpoint \(4, .* vs new model \(8"):
        grow_checkpoint(first.checkpoint, tmp_path / "wider", wider)


def test_finetuning_another_head_keeps_the_hidden_layer():
    from brainfm.models import BrainFMNet, ModelConfig
    from brainfm.models.heads import ResidualHead
    from brainfm.training.finetune import build_finetune_model

    base = BrainFMNet(ModelConfig(f_maps=4, num_levels=3, num_groups=4, heads={"T1": 1, "segmentation": 5},
                                  head_hidden={"segmentation": 6}))
    with torch.no_grad():
        base.head["final_conv_segmentation"].hidden[2].weight.fill_(0.3)
    net = build_finetune_model(base, head="T1", channels=1, mode="head")
    seg = net.head["final_conv_segmentation"]
    assert isinstance(seg, ResidualHead) and torch.all(seg.hidden[2].weight == 0.3)
    assert net.config.head_hidden == {"segmentation": 6}
    assert not any(p.requires_grad for p in seg.parameters())


def test_grow_script_grows_the_latest_checkpoint_of_a_run(grown, tmp_path):
    import importlib.util
    from pathlib import Path

    base, cfg, new_cfg, first, path = grown
    repo = Path(__file__).resolve().parents[3]
    spec = importlib.util.spec_from_file_location("grow_run", repo / "Training" / "grow_run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yaml = tmp_path / "cfg.yaml"
    yaml.write_text("model: {f_maps: 4, num_levels: 3, num_groups: 4, head_hidden: {segmentation: 6}}\n"
                    "optim: {ema_decay: 0.9}\n")
    assert mod.main(["--config", str(yaml), "--from", str(base / "old"), "--out", str(tmp_path / "g")]) == 0
    from brainfm.training.checkpoint import latest_checkpoint

    latest = latest_checkpoint(base / "old")
    meta = read_meta(tmp_path / "g" / "checkpoints" / latest.name)  # the step of the run's latest checkpoint
    assert meta["step"] == read_meta(latest)["step"]
    assert meta["architecture"]["head_hidden"] == {"segmentation": 6}
    assert meta["config"]["run"]["out_dir"] == str(tmp_path / "g")
    assert mod.main(["--config", str(yaml), "--from", str(tmp_path / "nothing"), "--out", str(tmp_path / "h")]) == 2
