"""Fine-tuning: head-only / frozen-encoder / full modes on real files, native output, bad input."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from fixtures import GEOMETRY_CASES, blob_head, label_head
from brainfm.errors import InputError
from brainfm.models import BrainFMNet, ModelConfig, load_model
from brainfm.training.finetune import build_finetune_model, finetune, pair_folder

SHAPE = (30, 34, 28)


def _write(path, data, affine):
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))


@pytest.fixture()
def data_dir(tmp_path):
    root = tmp_path / "data"
    for sub in ("images", "labels", "targets"):
        (root / sub).mkdir(parents=True)
    aff = GEOMETRY_CASES["lps_stored"]
    for i in range(3):
        img = blob_head(SHAPE, seed=i).data
        _write(root / "images" / f"s{i}.nii.gz", img, aff)
        _write(root / "labels" / f"s{i}.nii.gz", label_head(SHAPE).astype(np.int16), aff)
        _write(root / "targets" / f"s{i}.nii.gz", 200.0 - img, aff)
    return root


def _base():
    torch.manual_seed(0)
    return BrainFMNet(ModelConfig(f_maps=4, num_levels=3, num_groups=4, unit_feat=False, heads={"image": 1}))


def test_head_only_adaptation_keeps_backbone_and_writes_native_model(data_dir, tmp_path):
    from brainfm.models import save_native

    base = _base()
    weights, _ = save_native(base, tmp_path / "base" / "toy-brainid", info={"name": "toy-brainid"})
    res = finetune(str(weights), data_dir, tmp_path / "ft", task="seg", mode="head", steps=4, size=24,
                   n_samples=1, lr=0.01, device="cpu", name="toy-seg")
    loaded = load_model(res.native_model)
    assert loaded.info.label_scheme == "fs33"
    assert loaded.info.config.heads == {"image": 1, "segmentation": 33}
    assert loaded.info.config.unit_feat is False
    sd, bsd = loaded.net.state_dict(), base.state_dict()
    assert all(torch.equal(sd[k], bsd[k]) for k in bsd)  # backbone and old head untouched
    assert not torch.equal(sd["head.final_conv_segmentation.bias"], torch.zeros(33))
    assert res.step == 4 and all(np.isfinite(res.losses))
    assert 0.0 <= res.val["dice"] <= 1.0


def test_frozen_encoder_and_full_modes(data_dir, tmp_path):
    base = _base()
    net = build_finetune_model(base, head="T1", channels=1, mode="encoder")
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("backbone.encoders.") for n in trainable)
    assert any(n.startswith("backbone.decoders.") for n in trainable)
    assert set(net.config.heads) == {"T1"}  # features change: the stale heads are dropped
    res = finetune(base, data_dir, tmp_path / "full", task="image", mode="full", head="T1", steps=2, size=24,
                   n_samples=1, device="cpu")
    loaded = load_model(res.native_model)
    assert set(loaded.info.config.heads) == {"T1"}
    enc = "backbone.encoders.0.basic_module.SingleConv1.conv.weight"
    assert not torch.equal(loaded.net.state_dict()[enc], base.state_dict()[enc])


def test_bad_fine_tuning_data(tmp_path, data_dir):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "labels").mkdir()
    with pytest.raises(InputError, match="no images"):
        pair_folder(tmp_path / "empty")
    with pytest.raises(InputError, match="labels"):
        pair_folder(tmp_path / "nothing")
    (data_dir / "labels" / "s2.nii.gz").unlink()
    with pytest.raises(InputError, match=r"no label for image\(s\) \['s2'\]"):
        pair_folder(data_dir)
    _write(data_dir / "labels" / "s2.nii.gz", np.full(SHAPE, 999, np.int16), GEOMETRY_CASES["lps_stored"])
    with pytest.raises(InputError, match="no label of the fs33 scheme"):
        finetune(_base(), data_dir, tmp_path / "x", steps=1, size=24, device="cpu")
    (data_dir / "images" / "s0.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(InputError):
        finetune(_base(), data_dir, tmp_path / "y", steps=1, size=24, device="cpu")
    with pytest.raises(InputError, match="mode"):
        build_finetune_model(_base(), head="segmentation", channels=33, mode="decoder")
