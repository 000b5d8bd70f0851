"""Hidden layers of heads fitted on frozen features (brainfm.training.head_fit) and a run grown from them
(brainfm.training.grow, ``init``): a per-voxel hidden layer gives a contrast that no linear head gives,
the fitted values start the grown run (weights and average), and wrong values are refused."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from train_helpers import tiny_config, tiny_source
from brainfm.errors import CheckpointError
from brainfm.models.heads import ResidualHead
from brainfm.training.checkpoint import load_checkpoint, read_meta
from brainfm.training.grow import grow_checkpoint
from brainfm.training.head_fit import fit_hidden_layers, frozen_samples
from brainfm.training.trainer import Trainer, architecture_of, build_model

COMMON = ("run.deterministic=true", "optim.ema_decay=0.9")


def _tissues():
    """Features of three tissues (a T1-like intensity: CSF 0.2 < grey 0.6 < white 1.0, and a constant)
    and a FLAIR-like target that orders them grey 0.9 > white 0.5 > CSF 0.1: not monotonic in the feature."""
    g = torch.Generator().manual_seed(0)
    tissue = torch.randint(3, (1, 1, 24, 24, 24), generator=g)
    t1 = torch.tensor([0.2, 0.6, 1.0])[tissue] + 0.02 * torch.randn(tissue.shape, generator=g)
    feats = torch.cat([t1, torch.ones_like(t1)], 1)
    target = torch.tensor([0.1, 0.9, 0.5])[tissue]
    return tissue, feats, target


def test_a_hidden_layer_fits_a_contrast_that_no_linear_head_gives():
    tissue, feats, target = _tissues()
    x = feats.movedim(1, -1).reshape(-1, 2)
    coef = torch.linalg.lstsq(x, target.reshape(-1, 1)).solution  # the best linear head
    linear = nn.Conv3d(2, 1, 1, bias=True)
    with torch.no_grad():
        linear.weight.copy_(coef.view(1, 2, 1, 1, 1))
        linear.bias.zero_()
    net = SimpleNamespace(head=nn.ModuleDict({"final_conv_FLAIR": linear}))
    fitted = fit_hidden_layers(net, feats.half(), {"FLAIR": target.half()}, hidden=8, iters=300, voxels=2048, lr=3e-2)
    head = ResidualHead(2, 1, hidden=8)
    head.load_state_dict({"weight": linear.weight, "bias": linear.bias,
                          **{"hidden." + k.split(".hidden.", 1)[1]: v for k, v in fitted.items()}})
    with torch.no_grad():
        lin_out, out = linear(feats), head(feats)
    means = [float(out[tissue == k].mean()) for k in range(3)]
    lin_means = [float(lin_out[tissue == k].mean()) for k in range(3)]
    assert means[1] > means[2] > means[0]  # grey > white > CSF, as the target
    assert not lin_means[1] > lin_means[2] > lin_means[0]
    assert float((out - target).abs().mean()) < 0.5 * float((lin_out - target).abs().mean())
    assert torch.equal(head.weight, linear.weight)  # the linear part stays as it was


def test_frozen_samples_broadcast_subject_targets_and_refuse_a_missing_one():
    from brainfm.models import BrainFMNet, ModelConfig

    net = BrainFMNet(ModelConfig(f_maps=4, num_levels=2, num_groups=2, heads={"T1": 1, "CT": 1}))
    batch = SimpleNamespace(inputs=torch.rand(2, 1, 8, 8, 8), targets={"T1": torch.rand(1, 1, 8, 8, 8)})
    feats, targets = frozen_samples(net, [batch, batch], heads=["T1"])
    assert feats.shape == (4, 4, 8, 8, 8) and feats.dtype == torch.float16
    assert targets["T1"].shape == (4, 1, 8, 8, 8)
    assert torch.equal(targets["T1"][3], batch.targets["T1"][0].half())
    with pytest.raises(ValueError, match="no 'CT' target"):
        frozen_samples(net, [batch], heads=["CT"])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("fitgrow")
    cfg = tiny_config(base / "old", "run.max_steps=2", *COMMON)
    return base, Trainer(cfg, source=tiny_source(cfg), resume="none").fit()


def test_a_run_grown_with_fitted_values_starts_from_them(run):
    base, first = run
    new_cfg = tiny_config(base / "new", "run.max_steps=2", "model.head_hidden={T1: 5}", *COMMON)
    init = {"head.final_conv_T1.hidden.0.weight": torch.full((5, 4, 1, 1, 1), 0.5),
            "head.final_conv_T1.hidden.0.bias": torch.full((5,), 0.1),
            "head.final_conv_T1.hidden.2.weight": torch.full((1, 5, 1, 1, 1), -0.2)}
    path = grow_checkpoint(first.checkpoint, base / "new", new_cfg, init=init)
    assert read_meta(path)["extra"]["grown_from"]["fitted"] == sorted(init)
    for average in (False, True):
        net = build_model(new_cfg)
        load_checkpoint(path, model=net, use_average=average, restore_rng=False,
                        architecture=architecture_of(new_cfg))
        state = net.state_dict()
        assert all(torch.equal(state[k], v) for k, v in init.items())


def test_growing_refuses_values_for_kept_or_misshapen_tensors(run, tmp_path):
    base, first = run
    cfg = tiny_config(tmp_path / "a", "model.head_hidden={T1: 5}", *COMMON)
    with pytest.raises(CheckpointError, match="is not a tensor the growing adds"):
        grow_checkpoint(first.checkpoint, tmp_path / "a", cfg, init={"head.final_conv_T1.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"\(2, 4, 1, 1, 1\) vs \(5, 4, 1, 1, 1\)"):
        grow_checkpoint(first.checkpoint, tmp_path / "a", cfg,
                        init={"head.final_conv_T1.hidden.0.weight": torch.zeros(2, 4, 1, 1, 1)})
    assert not (tmp_path / "a" / "checkpoints").exists()  # nothing written


def test_grow_script_refuses_to_fit_a_head_the_configuration_does_not_grow(run, tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    base, first = run
    repo = Path(__file__).resolve().parents[3]
    spec = importlib.util.spec_from_file_location("grow_run", repo / "Training" / "grow_run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yaml = tmp_path / "cfg.yaml"
    yaml.write_text("model: {f_maps: 4, num_levels: 3, num_groups: 4, head_hidden: {segmentation: 6}}\n")
    args = ["--config", str(yaml), "--from", str(base / "old"), "--out", str(tmp_path / "g"), "--fit-heads", "T1"]
    assert mod.main(args) == 2
    assert "heads ['T1']: the configuration adds no hidden layer to them" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


def _script(name):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "Training" / name
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_model_grown_for_a_new_run_has_its_added_layers_fitted(tmp_path, monkeypatch):
    """What `cpu_train.sh start` does on a machine without a run when the configuration gives heads a
    hidden layer the model lacks: the model's tensors kept, the added layers fitted (not zero)."""
    import brainfm.training.head_fit as head_fit
    from brainfm.models import load_model
    from ckpt_factory import write_native

    cfg = tiny_config(tmp_path / "run", *COMMON)
    _, weights, _ = write_native(tmp_path / "base.safetensors", heads=dict(cfg.model.heads))
    source = tiny_source(cfg)
    real_fit = head_fit.fit_for_config
    monkeypatch.setattr(head_fit, "fit_for_config",
                        lambda net, c, heads, **kw: real_fit(net, c, heads, **{**kw, "source": source, "iters": 20}))
    mod = _script("grow_model.py")
    yaml = tmp_path / "cfg.yaml"
    yaml.write_text("model: {f_maps: 8, num_levels: 3, head_hidden: {FLAIR: 5, CT: 5}}\n")
    out = tmp_path / "init" / "grown.safetensors"
    assert mod.main(["--config", str(yaml), "--from", str(weights), "--out", str(out), "--fit-batches", "1"]) == 0
    base, grown = load_model(weights).net, load_model(out).net
    assert grown.config.head_hidden == {"FLAIR": 5, "CT": 5}
    g = grown.state_dict()
    assert all(torch.equal(v, g[k]) for k, v in base.state_dict().items())
    for h in ("FLAIR", "CT"):
        assert g[f"head.final_conv_{h}.hidden.2.weight"].abs().sum() > 0
    # a model that has them already: nothing to add, nothing written
    assert mod.main(["--config", str(yaml), "--from", str(out), "--out", str(tmp_path / "again.safetensors")]) == \
        mod.NOTHING_TO_ADD
    assert not (tmp_path / "again.safetensors").exists()
