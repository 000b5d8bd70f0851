"""brainfm.models network: reference topology, key names/shapes, forward semantics."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from brainfm.errors import CheckpointError, InputError
from brainfm.models import BrainFMNet, ModelConfig, UNet3D
from brainfm.models.lean import Upsampled
from brainfm.models.config import OFFICIAL_HEADS
from ckpt_factory import random_net

# Reference §2.3, written out by hand: per encoder (gn1 channels, conv1 out, conv2 out) and per decoder
# (gn1 channels = skip + up, out). conv1 input = gn1 channels, conv2 input = conv1 out.
ENC_L6 = [(1, 32, 64), (64, 64, 128), (128, 128, 256), (256, 256, 512), (512, 512, 1024), (1024, 1024, 2048)]
DEC_L6 = [(3072, 1024), (1536, 512), (768, 256), (384, 128), (192, 64)]
ENC_L5, DEC_L5 = ENC_L6[:5], [(1536, 512), (768, 256), (384, 128), (192, 64)]


def expected_backbone(enc, dec):
    shapes = {}
    for k, (g1, c1, c2) in enumerate(enc):
        p = f"encoders.{k}.basic_module."
        shapes.update({p + "SingleConv1.groupnorm.weight": (g1,), p + "SingleConv1.groupnorm.bias": (g1,),
                       p + "SingleConv1.conv.weight": (c1, g1, 3, 3, 3),
                       p + "SingleConv2.groupnorm.weight": (c1,), p + "SingleConv2.groupnorm.bias": (c1,),
                       p + "SingleConv2.conv.weight": (c2, c1, 3, 3, 3)})
    for j, (g1, out) in enumerate(dec):
        p = f"decoders.{j}.basic_module."
        shapes.update({p + "SingleConv1.groupnorm.weight": (g1,), p + "SingleConv1.groupnorm.bias": (g1,),
                       p + "SingleConv1.conv.weight": (out, g1, 3, 3, 3),
                       p + "SingleConv2.groupnorm.weight": (out,), p + "SingleConv2.groupnorm.bias": (out,),
                       p + "SingleConv2.conv.weight": (out, out, 3, 3, 3)})
    return shapes


@pytest.mark.parametrize("levels,enc,dec,n_params", [(6, ENC_L6, DEC_L6, 264_063_138), (5, ENC_L5, DEC_L5, 65_869_986)])
def test_backbone_keys_shapes_and_parameter_count(levels, enc, dec, n_params):
    with torch.device("meta"):
        net = UNet3D(1, 64, levels)
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert got == expected_backbone(enc, dec)
    assert len(got) == 12 * levels - 6
    assert sum(p.numel() for p in net.parameters()) == n_params
    assert list(net.buffers()) == []


def test_full_official_net_keys_and_groupnorm_groups():
    with torch.device("meta"):
        net = BrainFMNet(ModelConfig(heads=OFFICIAL_HEADS))
    sd = net.state_dict()
    assert len(sd) == 84
    assert sum(v.numel() for v in sd.values()) == 264_067_623
    assert sd["backbone.encoders.0.basic_module.SingleConv1.conv.weight"].shape == (32, 1, 3, 3, 3)
    assert sd["head.final_conv_segmentation.weight"].shape == (56, 64, 1, 1, 1)
    assert sd["head.final_conv_segmentation.bias"].shape == (56,)
    assert sd["head.final_conv_registration.weight"].shape == (3, 64, 1, 1, 1)
    assert [k for k in sd if k.startswith("head.")][:2] == ["head.final_conv_T1.weight", "head.final_conv_T1.bias"]
    enc0 = net.backbone.encoders[0].basic_module
    assert enc0.SingleConv1.groupnorm.num_groups == 1  # 1 channel < 8 groups
    assert enc0.SingleConv2.groupnorm.num_groups == 8
    assert net.backbone.encoders[0].pooling is None
    assert all(isinstance(e.pooling, torch.nn.MaxPool3d) for e in net.backbone.encoders[1:])
    conv = enc0.SingleConv1.conv
    assert conv.bias is None and conv.padding == (1, 1, 1) and conv.kernel_size == (3, 3, 3)
    assert enc0.SingleConv1.LeakyReLU.negative_slope == 0.01


def reference_forward(sd, x, levels, unit_feat=True, groups=8, align=True):
    """Independent functional re-statement of the reference forward (reference §1.1); ``align``:
    pad the high end of each axis (with the volume's minimum) to a multiple of 2 ** (levels - 1) first, crop at the end."""
    size = x.shape[2:]
    if align:
        m = 2 ** (levels - 1)
        lo = x.amin(dim=(2, 3, 4), keepdim=True)
        x = F.pad(x - lo, sum(((0, (-n) % m) for n in reversed(size)), ())) + lo

    def single(prefix, h):
        c = h.shape[1]
        h = F.group_norm(h, 1 if c < groups else groups, sd[prefix + "groupnorm.weight"], sd[prefix + "groupnorm.bias"])
        return F.leaky_relu(F.conv3d(h, sd[prefix + "conv.weight"], padding=1), 0.01)

    skips = []
    for k in range(levels):
        if k:
            x = F.max_pool3d(x, 2)
        p = f"backbone.encoders.{k}.basic_module."
        x = single(p + "SingleConv2.", single(p + "SingleConv1.", x))
        skips.append(x)
    x = skips.pop()
    for j in range(levels - 1):
        skip = skips.pop()
        up = F.interpolate(x, size=skip.shape[2:], mode="nearest")
        p = f"backbone.decoders.{j}.basic_module."
        x = single(p + "SingleConv2.", single(p + "SingleConv1.", torch.cat([skip, up], 1)))
    x = x[:, :, :size[0], :size[1], :size[2]]
    return F.normalize(x, dim=1) if unit_feat else x


@pytest.mark.parametrize("grad,shape", [(True, (1, 1, 19, 23, 17)), (False, (1, 1, 19, 23, 17)),
                                        (False, (2, 1, 6, 5, 7))])
def test_forward_matches_functional_reference_on_odd_size(grad, shape):
    # float64 so that only topology differences (not float32 summation order) can show up;
    # no-grad runs the lean path (split/slab convolutions at 19x23x17, concatenation at 6x5x7)
    net = random_net(ModelConfig(f_maps=8, num_levels=3, heads={"T1": 1}), seed=5).double()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 40 + 100
    x0 = x.clone()
    with torch.set_grad_enabled(grad):
        y = net.backbone(x)
    ref = reference_forward({k: v.detach() for k, v in net.state_dict().items()}, x0, 3)
    assert y.shape == (shape[0], 8) + shape[2:]
    assert torch.allclose(y, ref, atol=1e-9), (y - ref).abs().max()
    assert torch.equal(x, x0)  # input untouched (also on the in-place inference path)
    net.backbone.align_input = False  # the volume as it is, like the reference demo
    with torch.set_grad_enabled(grad):
        y_raw = net.backbone(x)
    raw = reference_forward({k: v.detach() for k, v in net.state_dict().items()}, x0, 3, align=False)
    assert torch.allclose(y_raw, raw, atol=1e-9), (y_raw - raw).abs().max()
    assert not torch.allclose(y_raw, y, atol=1e-3)  # alignment changes odd sizes


@pytest.mark.parametrize("align", [True, False])
def test_aligned_input_gives_the_features_of_the_padded_volume(align):
    # the model sees a 2 mm brain window of 80^3 in training; an input of any other size must get the
    # features it would get inside a zero-padded aligned window, otherwise the coarse levels are shifted
    net = random_net(ModelConfig(f_maps=8, num_levels=4), seed=7).double()
    net.backbone.align_input = align
    assert net.backbone.size_multiple == 8
    x = torch.rand(1, 1, 21, 18, 13, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    padded = F.pad(x - x.min(), (0, 3, 0, 6, 0, 3)) + x.min()  # 24 x 24 x 16, background = the minimum
    with torch.inference_mode():
        y, y_pad = net.backbone(x), net.backbone(padded)[:, :, :21, :18, :13]
        feats = net.backbone.get_feature(x)
    assert y.shape == (1, 8, 21, 18, 13)
    assert torch.allclose(y, y_pad, atol=1e-9) is align
    if align:  # every level covers the input: ceil(size / stride) voxels
        assert [tuple(f.shape[2:]) for f in feats] == [(3, 3, 2), (6, 5, 4), (11, 9, 7), (21, 18, 13)]
        assert torch.allclose(feats[-1], y, atol=1e-9)


@pytest.mark.parametrize("coarse,size", [((4, 5, 3), (9, 11, 7)), ((3, 3, 3), (6, 7, 6)), ((5, 2, 4), (5, 4, 9))])
def test_upsampled_view_matches_interpolate(coarse, size):
    x = torch.randn((2, 5) + coarse, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    full = F.interpolate(x, size=size, mode="nearest")
    up = Upsampled(x, size)
    assert up.shape == full.shape and torch.equal(up.rows(0, size[0]), full)
    assert torch.equal(up.rows(2, 4), full[:, :, 2:4])
    var, mean = up.stats()
    v_ref, m_ref = torch.var_mean(full, dim=(2, 3, 4), unbiased=False)
    assert torch.allclose(var, v_ref, atol=1e-12) and torch.allclose(mean, m_ref, atol=1e-12)


def test_get_feature_levels_coarse_to_fine():
    net = random_net(ModelConfig(f_maps=8, num_levels=3), seed=1)
    with torch.inference_mode():
        feats = net.backbone.get_feature(torch.rand(1, 1, 19, 23, 17))
        last = net.backbone(torch.rand(1, 1, 19, 23, 17))
    assert [tuple(f.shape) for f in feats] == [(1, 32, 5, 6, 5), (1, 16, 10, 12, 9), (1, 8, 19, 23, 17)]
    assert torch.allclose(feats[-1].norm(dim=1), torch.ones(1, 19, 23, 17), atol=1e-5)
    assert not torch.allclose(feats[1].norm(dim=1), torch.ones(1, 10, 12, 9), atol=1e-2)  # only the last is unit
    assert last.shape == feats[-1].shape


def test_inference_path_equals_training_path_and_unit_norm():
    net = random_net(ModelConfig(f_maps=8, num_levels=3, num_groups=4), seed=2)
    x = torch.rand(1, 1, 21, 18, 20, generator=torch.Generator().manual_seed(3))
    y_grad = net.backbone(x)
    with torch.inference_mode():
        y_inf = net.backbone(x)
    assert torch.allclose(y_grad.detach(), y_inf, atol=1e-4)  # float32 summation order differs
    assert torch.allclose(y_inf.norm(dim=1), torch.ones(1, 21, 18, 20), atol=1e-5)


def test_feature_invariant_to_positive_affine_intensity_change():
    net = random_net(ModelConfig(f_maps=8, num_levels=3, heads={"T1": 1, "segmentation": 5}), seed=4)
    # image-like intensities (variance >> GroupNorm eps 1e-5, whose effect is the only exact deviation)
    x = 50 + 10 * torch.randn(1, 1, 24, 20, 22, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        a, b = net(x), net(3.7 * x + 12.0)
        a64, b64 = net.double()(x.double()), net(3.7 * x.double() + 12.0)
    for key in ("feat", "T1", "segmentation"):
        assert (a64[key] - b64[key]).abs().max() < 1e-4, key  # the property itself
        d = (a[key] - b[key]).abs()  # float32: rounding of the input, amplified at a few voxels
        assert d.mean() < 1e-5 and d.max() < 1e-3, key
    with torch.inference_mode():  # a non-affine change does alter the features (the test can fail)
        c = net.float()(x ** 2 / 50)
    assert (a["feat"] - c["feat"]).abs().max() > 1e-2


def test_unit_feat_false_keeps_raw_feature():
    net = random_net(ModelConfig(f_maps=8, num_levels=3, unit_feat=False), seed=6)
    with torch.no_grad():
        y = net.backbone(torch.rand(1, 1, 16, 16, 16))
    assert not torch.allclose(y.norm(dim=1), torch.ones(1, 16, 16, 16), atol=1e-2)


def test_net_forward_heads_selection_and_errors():
    net = random_net(ModelConfig(f_maps=8, num_levels=3, heads={"T1": 1, "distance": 4, "segmentation": 7}))
    x = torch.rand(1, 1, 13, 11, 12)
    with torch.inference_mode():
        out = net(x)
        some = net(x, heads=["distance"])
        none = net(x, heads=())
    assert sorted(out) == ["T1", "distance", "feat", "segmentation"]
    assert out["segmentation"].shape == (1, 7, 13, 11, 12)
    with torch.inference_mode():
        manual = F.conv3d(out["feat"], net.head.final_conv_distance.weight, net.head.final_conv_distance.bias)
    assert torch.allclose(some["distance"], manual, atol=1e-6)
    assert sorted(none) == ["feat"]
    with pytest.raises(InputError, match="unknown head.*nope"):
        net(x, heads=["nope"])
    with pytest.raises(InputError, match="expects a"):
        net(x[0])


def test_training_backward_reaches_every_parameter():
    net = random_net(ModelConfig(f_maps=4, num_levels=3, num_groups=4, heads={"T1": 1})).train()
    loss = net(torch.rand(1, 1, 12, 12, 12))["T1"].square().mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_config_roundtrip_and_validation():
    cfg = ModelConfig(f_maps=8, num_levels=3, heads={"T1": 1, "segmentation": 56}, unit_feat=False)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.head_in_channels == 8
    with pytest.raises(CheckpointError, match="DepHead"):
        ModelConfig(f_maps=8, num_levels=3, heads={"sr": 1}, head_in_channels=9)
    with pytest.raises(CheckpointError, match="not divisible"):
        ModelConfig(f_maps=4, num_levels=3)  # decoder GroupNorm over 4 + 8 = 12 channels, 8 groups
    with pytest.raises(CheckpointError, match="unknown architecture fields"):
        ModelConfig.from_dict({"f_maps": 8, "depth": 3})
