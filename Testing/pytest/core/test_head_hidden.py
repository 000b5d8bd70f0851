"""Heads with a residual per-voxel hidden layer (``ModelConfig.head_hidden``): a new one changes no
output, the no-autograd slab path and the mixed-precision inference path compute what the module does,
the architecture survives export and loading, and models without one keep their description."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from brainfm.errors import CheckpointError, InputError
from brainfm.models import BrainFMNet, ModelConfig, load_model
from brainfm.models import heads as heads_mod
from brainfm.models.heads import ResidualHead, TaskHeads, head_float

CFG = dict(f_maps=8, num_levels=3, num_groups=4, unit_feat=False, heads={"T1": 1, "segmentation": 5})


def _trained(head: ResidualHead, seed: int = 0) -> ResidualHead:
    """The head with every weight random (as after training), so the hidden layer matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return head


def test_new_hidden_layer_changes_nothing_then_learns():
    head = ResidualHead(8, 5, hidden=16)
    x = torch.randn(2, 8, 5, 6, 7)
    assert torch.equal(head(x), F.conv3d(x, head.weight, head.bias))
    loss = head(x).square().mean()
    loss.backward()
    assert head.hidden[2].weight.grad.abs().sum() > 0  # the zero output layer gets a gradient


def test_forward_with_and_without_autograd_agree_across_slabs(monkeypatch):
    head = _trained(ResidualHead(8, 5, hidden=16))
    x = torch.randn(1, 8, 9, 6, 7)
    ref = F.conv3d(x, head.weight, head.bias) + head.hidden[2](F.leaky_relu(head.hidden[0](x), 0.01))
    assert torch.allclose(head(x), ref, atol=1e-5)
    monkeypatch.setattr(heads_mod, "SLAB_VOXELS", 2 * 6 * 7)  # two planes per slab: 5 slabs
    with torch.no_grad():
        assert torch.allclose(head(x), ref, atol=1e-5)
    with torch.inference_mode():
        y = head_float(head.half(), x.half())  # half weights and input, computed in fp32
    assert y.dtype == torch.float32 and torch.allclose(y, ref, atol=5e-2)


def test_task_heads_build_hidden_layers_only_where_asked():
    th = TaskHeads({"T1": 1, "segmentation": 5}, in_channels=8, hidden={"segmentation": 12})
    assert isinstance(th["final_conv_segmentation"], ResidualHead) and th["final_conv_segmentation"].hidden_channels == 12
    assert type(th["final_conv_T1"]) is torch.nn.Conv3d
    assert th.names == ["T1", "segmentation"] and th.channels() == {"T1": 1, "segmentation": 5}
    keys = set(BrainFMNet(ModelConfig(**CFG, head_hidden={"segmentation": 12})).state_dict())
    assert {"head.final_conv_segmentation.weight", "head.final_conv_segmentation.hidden.0.weight",
            "head.final_conv_segmentation.hidden.0.bias", "head.final_conv_segmentation.hidden.2.weight"} <= keys
    with pytest.raises(InputError, match="unknown head"):
        TaskHeads({"T1": 1}, in_channels=8, hidden={"segmentation": 4})


def test_config_records_hidden_layers_only_when_present():
    plain = ModelConfig(**CFG)
    assert "head_hidden" not in plain.to_dict()  # older readers still read models without them
    cfg = ModelConfig(**CFG, head_hidden={"segmentation": 12})
    assert cfg.to_dict()["head_hidden"] == {"segmentation": 12}
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(CheckpointError, match="not a head"):
        ModelConfig(**CFG, head_hidden={"distance": 4})
    with pytest.raises(CheckpointError, match="hidden layer of 0"):
        ModelConfig(**CFG, head_hidden={"segmentation": 0})


def test_export_and_load_keep_the_hidden_layer(tmp_path):
    from brainfm.training.export import export_native

    net = BrainFMNet(ModelConfig(**CFG, head_hidden={"segmentation": 12}))
    _trained(net.head["final_conv_segmentation"])
    path = export_native(net, tmp_path, step=3, name="hid")
    loaded = load_model(path).net
    assert loaded.config.head_hidden == {"segmentation": 12}
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        a, b = net.eval()(x)["segmentation"], loaded(x)["segmentation"]
    assert torch.allclose(a, b, atol=1e-6) and a.abs().max() > 0


def test_mixed_precision_inference_applies_the_hidden_layer():
    from brainfm.inference.forward import forward_tile

    torch.manual_seed(0)
    net = BrainFMNet(ModelConfig(**CFG, head_hidden={"segmentation": 12})).eval()
    head = _trained(net.head["final_conv_segmentation"], seed=1)
    x = torch.rand(1, 1, 16, 16, 16)
    amp = forward_tile(net, x, ["segmentation"], want_feat=True, amp_dtype=torch.bfloat16)
    with torch.inference_mode():  # the bf16 feature, then the whole head in fp32
        feat = amp["feat"]
        linear = F.conv3d(feat, head.weight, head.bias)
        full = linear + head.hidden[2](F.leaky_relu(head.hidden[0](feat), 0.01))
    assert (full - linear).abs().max() > 1.0  # the hidden layer contributes
    assert torch.allclose(amp["segmentation"], full, atol=1e-4)


def test_a_head_that_reads_the_image_takes_the_feature_then_the_image_channels():
    """``ModelConfig.head_input_channels``: the width of each head's input, the feature first, as the
    network builds it."""
    cfg = ModelConfig(in_channels=2, f_maps=4, num_levels=2, num_groups=2, heads={"segmentation": 3, "T1": 1},
                      head_image=["segmentation"])
    net = BrainFMNet(cfg)
    assert cfg.head_input_channels("segmentation") == 6 == net.head.final_conv_segmentation.in_channels
    assert cfg.head_input_channels("T1") == 4 == net.head.final_conv_T1.in_channels == cfg.feature_channels
