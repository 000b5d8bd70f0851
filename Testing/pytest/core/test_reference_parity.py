"""Regression tests for behaviour verified numerically against the public reference code
(jhuldr/BrainFM @13a61e9 and peirong26/Brain-ID @979d42e; one-time comparison script outside the
repository). The expectations are written out by hand here, so the reference code is not needed.

Verified facts encoded below:

* Brain-ID labels its 33 segmentation channels with ``label_list_segmentation_with_csf``
  (``cfgs/default_dataset.yaml``) in that order; the label of a voxel is ``list[argmax(seg)]``.
  (Our loader used the sorted ``fs33`` order for Brain-ID heads: 74 % of voxels got wrong labels.)
* BrainFM's post-processor: ``label = label_list_brainseg_with_extracerebral[argmax]`` (values 0-56,
  which we report as FreeSurfer numbers through ``brainfm56``), distance clamped to +-3 mm,
  ``bias_field = exp(head)``, ``CT = head * 1000``, registration ``x 100`` (mm), ``high_res =
  residual + input`` on the min-max normalised input.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from brainfm.inference import Predictor
from brainfm.models import load_model
from brainfm.volume import Volume
from ckpt_factory import write_brainid_features, write_official

# Brain-ID cfgs/default_dataset.yaml: base_generator.label_list_segmentation_with_csf (channel order)
BRAINID_LIST = [0, 14, 15, 16, 24, 77, 85, 2, 3, 4, 7, 8, 10, 11, 12, 13, 17, 18, 26, 28,
                41, 42, 43, 46, 47, 49, 50, 51, 52, 53, 54, 58, 60]
# BrainFM Trainer/models/__init__.py: label_list_segmentation_brainseg_with_extracerebral (values 0-56)
BRAINFM_LIST = [0, 11, 12, 13, 16, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46,
                1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 14, 15, 17, 47, 49, 51, 53, 55,
                18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 48, 50, 52, 54, 56]
# brainseg value -> FreeSurfer number for the channels checked below (structure names of the LUT)
BRAINSEG_TO_FS = {0: 0, 11: 14, 16: 24, 33: 99, 1: 2, 17: 26, 47: 819, 18: 41, 56: 870}


def _image(shape=(14, 13, 12), lo=10.0, hi=110.0) -> Volume:
    g = np.random.default_rng(0)
    data = g.random(shape).astype(np.float32)
    data = lo + (hi - lo) * (data - data.min()) / (data.max() - data.min())
    return Volume(data, np.eye(4))


def _constant_head(net: torch.nn.Module, name: str, bias) -> None:
    """Make head ``name`` output the constant ``bias`` (one value per channel) everywhere."""
    conv = getattr(net.head, f"final_conv_{name}")
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.copy_(torch.as_tensor(bias, dtype=conv.bias.dtype))


def _predict(model, tasks, **kw):
    return Predictor(model, device="cpu").predict(_image(), tasks=tasks, crop_foreground=False,
                                                  mask_background=False, **kw)


@pytest.fixture(scope="module")
def brainid_seg(tmp_path_factory):
    d = tmp_path_factory.mktemp("brainid")
    fp, hp = d / "checkpoint_feat_seg.pth", d / "checkpoint_seg.pth"
    write_brainid_features(fp)
    state = {"final_conv_seg.weight": torch.zeros(33, 8, 1, 1, 1), "final_conv_seg.bias": torch.zeros(33)}
    torch.save({"model": state, "epoch": 1}, str(hp))
    return load_model(fp, head_paths=[hp])


def test_brainid_seg_head_uses_brainid_channel_order(brainid_seg):
    assert brainid_seg.info.label_scheme == "brainid33"
    for ch in (0, 4, 5, 6, 7, 19, 20, 32):  # neutral (CSF 24, WM-hypo 77, chiasm 85), left, right
        onehot = torch.zeros(33)
        onehot[ch] = 5.0
        _constant_head(brainid_seg.net, "segmentation", onehot)
        seg = _predict(brainid_seg, ["seg"])["seg"].data
        assert seg.dtype == np.int32 and np.all(seg == BRAINID_LIST[ch]), (ch, np.unique(seg))


def test_brainid_seg_probabilities_channel_labels(brainid_seg):
    bias = torch.linspace(-1.0, 1.0, 33)
    _constant_head(brainid_seg.net, "segmentation", bias)
    pred = _predict(brainid_seg, ["seg"], return_probabilities=True)
    probs = pred["seg_probabilities"]
    assert probs.meta["channel_labels"] == BRAINID_LIST
    expected = torch.softmax(bias, 0).numpy()
    np.testing.assert_allclose(probs.data[3, 4, 5], expected, rtol=1e-5, atol=1e-7)
    assert np.all(pred["seg"].data == BRAINID_LIST[32])  # argmax of an increasing bias = last channel


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    p = tmp_path_factory.mktemp("official") / "brainfm_pretrained.pth"
    write_official(p)
    return load_model(p)


@pytest.mark.parametrize("ch", [0, 1, 4, 7, 20, 32, 33, 38, 55])
def test_official_seg_label_is_reference_value_list_entry(official, ch):
    onehot = torch.zeros(56)
    onehot[ch] = 5.0
    _constant_head(official.net, "segmentation", onehot)
    seg = _predict(official, ["seg"])["seg"].data
    assert np.all(seg == BRAINSEG_TO_FS[BRAINFM_LIST[ch]]), (ch, np.unique(seg))


def test_official_continuous_postprocessing_matches_reference_formulas(official):
    net = official.net
    _constant_head(net, "T1", [0.3])
    _constant_head(net, "CT", [0.04])
    _constant_head(net, "bias_field_log", [math.log(2.0)])
    _constant_head(net, "distance", [-7.0, 1.5, 9.0, -0.5])
    _constant_head(net, "registration", [0.1, -0.2, 0.305])
    _constant_head(net, "high_res_residual", [0.1])
    img = _image()
    atlas = Volume(np.ones((4, 4, 4), np.float32), np.diag([60.0, 60.0, 60.0, 1.0]))
    pred = Predictor(official, device="cpu").predict(img, tasks=["t1", "ct", "bias", "dist", "reg", "sr"],
                                                     crop_foreground=False, mask_background=False, atlas=atlas)
    np.testing.assert_allclose(pred["synth_t1"].data, 0.3, atol=1e-6)
    np.testing.assert_allclose(pred["synth_ct"].data, 40.0, atol=1e-3)  # x 1000 -> HU
    np.testing.assert_allclose(pred["bias_field"].data, 2.0, rtol=1e-6)  # exp
    for key, value in (("dist_lp", -3.0), ("dist_lw", 1.5), ("dist_rp", 3.0), ("dist_rw", -0.5)):
        np.testing.assert_allclose(pred[key].data, value, atol=1e-6)  # clamp +-3, channel order lp lw rp rw
    np.testing.assert_allclose(pred["reg_atlas_coords"].data[2, 3, 4], [10.0, -20.0, 30.5], atol=1e-4)
    # high_res = residual + normalised input, reported in input units: (n + 0.1) * (hi - lo) + lo
    expected = img.data + np.float32(0.1 * (110.0 - 10.0))
    np.testing.assert_allclose(pred["superres"].data, expected, rtol=1e-5, atol=1e-3)
