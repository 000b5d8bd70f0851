"""Test-time flip: a prediction averaged with the one of the left-right mirrored input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from brainfm.inference import Predictor
from brainfm.inference.forward import run_network
from brainfm.labels.schemes import get_scheme
from brainfm.models import BrainFMNet, ModelConfig, load_model, save_native
from brainfm.models.mirror import mirror_output
from fixtures import blob_head

HEADS = {"T1": 1, "segmentation": 33, "distance": 4, "registration": 3, "bias_field_log": 1}
PARTNER = get_scheme("fs33").lr_partner


def _net(seed: int = 0) -> BrainFMNet:
    torch.manual_seed(seed)
    net = BrainFMNet(ModelConfig(f_maps=8, num_levels=3, heads=dict(HEADS))).eval()
    with torch.no_grad():  # heads that see side-specific features (random biases are symmetric)
        for p in net.head.parameters():
            p.add_(torch.randn_like(p))
    return net


@pytest.mark.parametrize("flip", [True, False])
def test_flipped_prediction_is_left_right_equivariant(flip):
    # averaged with its mirror, the prediction for a mirrored image is the mirrored prediction: labels
    # swap sides, distance maps swap lp/rp and lw/rw, the atlas x coordinate changes sign
    net = _net()
    img = np.random.default_rng(0).random((16, 12, 20)).astype(np.float32)  # sides: multiples of 4
    kw = dict(heads=list(HEADS), want_feat=True, device=torch.device("cpu"), test_time_flip=flip,
              lr_partner=PARTNER)
    a = run_network(net, img, **kw)
    b = run_network(net, np.ascontiguousarray(img[::-1]), **kw)
    for h in HEADS:
        back = mirror_output(h, torch.from_numpy(b[h])[None], lr_partner=PARTNER)[0].numpy()
        assert np.allclose(back, a[h], atol=1e-4) is flip, h
    plain = run_network(net, img, heads=list(HEADS), want_feat=True, device=torch.device("cpu"))
    assert np.array_equal(a["feat"], plain["feat"])  # the feature is the unmirrored one
    if flip:
        mirrored = run_network(net, np.ascontiguousarray(img[::-1]), heads=["segmentation"], want_feat=False,
                               device=torch.device("cpu"))["segmentation"]
        expect = 0.5 * (plain["segmentation"] + mirrored[:, ::-1][list(PARTNER)])
        assert np.allclose(a["segmentation"], expect, atol=1e-5)


def test_the_model_sidecar_decides_and_the_prediction_records_it(tmp_path):
    net = _net(1)
    vol = blob_head((30, 34, 28))
    w, j = save_native(net, tmp_path / "m", info={"name": "m", "label_scheme": "fs33", "test_time_flip": True})
    assert json.loads(j.read_text())["test_time_flip"] is True
    flipped = Predictor.from_pretrained(str(w), device="cpu")
    plain = Predictor.from_pretrained(str(w), device="cpu", test_time_flip=False)
    assert flipped.test_time_flip and not plain.test_time_flip
    a, b = (p.predict(vol, tasks=["seg", "t1"]) for p in (flipped, plain))
    assert a.metadata["model"]["test_time_flip"] is True and b.metadata["model"]["test_time_flip"] is False
    assert not np.array_equal(a["synth_t1"].data, b["synth_t1"].data)
    assert a["seg"].shape == vol.shape and np.allclose(a["seg"].affine, vol.affine)
    # sidecars written before the field: no flip
    meta = json.loads(j.read_text())
    del meta["test_time_flip"]
    j.write_text(json.dumps(meta))
    assert load_model(w).info.test_time_flip is False


def test_models_trained_with_mirrored_samples_are_exported_with_the_flip(tmp_path):
    from brainfm.training.config import TrainConfig, apply_overrides
    from brainfm.training.export import export_native
    from brainfm.training.trainer import build_model

    base = ["model.f_maps=4", "model.num_levels=3", "model.num_groups=2"]
    for options, flag in (([], True), (["generator.options={\"p_flip\": 0.0}"], False)):
        cfg = apply_overrides(TrainConfig(), base + options)
        w = export_native(build_model(cfg), tmp_path / str(flag), cfg=cfg)
        assert load_model(w).info.test_time_flip is flag
