"""Residual full-resolution refinement blocks (``ModelConfig.refine``): a new block changes no output
and still learns, the no-autograd path computes what the autograd path does, the blocks survive the
sidecar, export, loading and key inference, official descriptions and keys are unchanged, and a
training run grows them at its step without changing what it computes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from brainfm.errors import CheckpointError
from brainfm.models import BrainFMNet, ModelConfig, load_model
from brainfm.models.common import infer_config
from brainfm.models.unet import RefineBlock, UNet3D

CFG = dict(f_maps=8, num_levels=3, num_groups=4, unit_feat=False, heads={"T1": 1, "segmentation": 5})


def _randomised(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every weight random (as after training), so each block changes the feature."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if p.dim() == 1 else 0.0))
    return module


def test_new_block_is_the_identity_and_learns():
    blk = RefineBlock(8, 16, num_groups=4)
    x = torch.randn(2, 8, 5, 6, 7)
    assert torch.equal(blk(x), x)
    blk(x).square().mean().backward()
    assert blk.conv2.weight.grad.abs().sum() > 0  # the zero output conv gets a gradient
    assert blk.conv1.weight.grad.abs().sum() == 0  # and nothing else moves until it does


def test_backbone_with_blocks_computes_the_blocks_after_the_last_decoder():
    torch.manual_seed(0)
    refined = UNet3D(1, 8, 3, 4, unit_feat=True, refine=[16, 8])
    _randomised(refined.refine)
    trunk = UNet3D(1, 8, 3, 4, unit_feat=False, align_input=False)  # the same backbone without blocks
    trunk.load_state_dict(refined.state_dict(), strict=False)
    x = torch.rand(1, 1, 19, 21, 17)  # not a multiple of 4: padded and cropped back
    plain = F.normalize(trunk(refined._aligned(x)), dim=1)[:, :, :19, :21, :17]
    h = trunk(refined._aligned(x))
    for blk in refined.refine:
        h = blk(h)
    h = F.normalize(h, dim=1)[:, :, :19, :21, :17]
    assert not torch.allclose(h, plain, atol=1e-2)  # the blocks change the feature
    assert torch.allclose(refined(x), h, atol=1e-5)
    with torch.no_grad():  # the memory-lean path
        assert torch.allclose(refined(x), h, atol=1e-5)
    feats = refined.get_feature(x)
    assert len(feats) == 3 and torch.allclose(feats[-1], h, atol=1e-5)


def test_config_records_blocks_only_when_present():
    plain = ModelConfig(**CFG)
    assert "refine" not in plain.to_dict()
    assert not any(".refine." in k for k in BrainFMNet(plain).state_dict())
    cfg = ModelConfig(**CFG, refine=[16])
    assert cfg.to_dict()["refine"] == [16] and ModelConfig.from_dict(cfg.to_dict()) == cfg
    keys = set(BrainFMNet(cfg).state_dict())
    assert {"backbone.refine.0.conv1.weight", "backbone.refine.0.conv2.weight",
            "backbone.refine.0.groupnorm1.weight", "backbone.refine.0.groupnorm2.bias"} <= keys
    assert infer_config(BrainFMNet(cfg).state_dict(), unit_feat=False, num_groups=4) == cfg
    with pytest.raises(CheckpointError, match="refinement block of 0"):
        ModelConfig(**CFG, refine=[0])
    with pytest.raises(CheckpointError, match="not divisible"):
        ModelConfig(**CFG, refine=[6])  # 6 channels in 4 GroupNorm groups
    with pytest.raises(CheckpointError, match="list of widths"):
        ModelConfig(**CFG, refine=16)


def test_export_and_load_keep_the_blocks(tmp_path):
    from brainfm.training.export import export_native

    net = BrainFMNet(ModelConfig(**CFG, refine=[12]))
    _randomised(net.backbone.refine)
    path = export_native(net, tmp_path, step=3, name="ref")
    loaded = load_model(path).net
    assert loaded.config.refine == [12]
    x = torch.rand(1, 1, 12, 12, 12)
    net.eval()
    with torch.no_grad():
        a, b = net(x, heads=["segmentation"]), loaded(x, heads=["segmentation"])
    assert torch.allclose(a["segmentation"], b["segmentation"], atol=1e-2)  # fp16 export


def test_grown_run_computes_what_the_run_did_then_trains_the_blocks(tmp_path):
    from brainfm.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
    from brainfm.training.config import TrainConfig, apply_overrides
    from brainfm.training.grow import grow_checkpoint
    from brainfm.training.trainer import architecture_of, build_model

    small = ["model.f_maps=4", "model.num_levels=2", "model.num_groups=2", "model.unit_feat=false"]
    cfg = apply_overrides(TrainConfig(), small)
    net = _randomised(build_model(cfg))
    old = save_checkpoint(tmp_path / "run", model=net, step=7, architecture=architecture_of(cfg))
    bigger = apply_overrides(TrainConfig(), small + ["model.refine=[8]"])
    assert architecture_of(bigger)["refine"] == [8] and "refine" not in architecture_of(cfg)
    new = grow_checkpoint(old, tmp_path / "grown", bigger)
    grown = build_model(bigger)
    load_checkpoint(latest_checkpoint(tmp_path / "grown"), model=grown)
    x = torch.rand(1, 1, 8, 8, 8)
    net.eval(), grown.eval()
    with torch.no_grad():
        a, b = net(x), grown(x)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert new.name == "step_00000007"
    grown.train()
    grown(x)["segmentation"].square().mean().backward()
    assert grown.backbone.refine[0].conv2.weight.grad.abs().sum() > 0


def test_inference_paths_apply_the_blocks():
    """The product's tile forward (mixed precision, channels-last, test-time flip) runs the blocks."""
    from brainfm.inference.forward import forward_tile

    torch.manual_seed(0)
    net = BrainFMNet(ModelConfig(**CFG, refine=[16])).eval()
    _randomised(net.backbone.refine, seed=2)
    plain = BrainFMNet(ModelConfig(**CFG)).eval()
    plain.load_state_dict(net.state_dict(), strict=False)
    x = torch.rand(1, 1, 20, 16, 12)
    ref = forward_tile(net, x, ["segmentation"], want_feat=False)["segmentation"]
    without = forward_tile(plain, x, ["segmentation"], want_feat=False)["segmentation"]
    assert (ref - without).abs().max() > 0.1  # the blocks contribute
    with torch.no_grad():
        assert torch.allclose(ref, net(x, heads=["segmentation"])["segmentation"], atol=1e-5)
    amp = forward_tile(net, x, ["segmentation"], want_feat=False, amp_dtype=torch.bfloat16, channels_last=True)
    assert torch.allclose(amp["segmentation"], ref, atol=0.1 * float(ref.abs().max()))
    t1 = forward_tile(net, x, ["T1"], want_feat=False)["T1"]
    flip = forward_tile(net, x, ["T1"], want_feat=False, test_time_flip=True)["T1"]
    with torch.no_grad():
        mirrored = net(x.flip(2), heads=["T1"])["T1"].flip(2)
    assert torch.allclose(flip, (t1 + mirrored) / 2, atol=1e-5)


def test_resuming_names_a_block_the_configuration_lacks(tmp_path):
    from brainfm.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
    from brainfm.training.config import TrainConfig, apply_overrides
    from brainfm.training.trainer import architecture_of, build_model

    small = ["model.f_maps=4", "model.num_levels=2", "model.num_groups=2"]
    grown = apply_overrides(TrainConfig(), small + ["model.refine=[8]"])
    save_checkpoint(tmp_path / "run", model=build_model(grown), step=3, architecture=architecture_of(grown))
    plain = apply_overrides(TrainConfig(), small)
    with pytest.raises(CheckpointError, match=r"refine: checkpoint \[8\] vs model None"):
        load_checkpoint(latest_checkpoint(tmp_path / "run"), model=build_model(plain),
                        architecture=architecture_of(plain))
