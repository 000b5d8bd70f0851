"""brainfm.models checkpoint formats: official, Brain-ID, native; strictness, checksums, safety."""
from __future__ import annotations

import json
import os

import pytest
import torch

from brainfm.errors import CheckpointError
from brainfm.models import load_model, save_native
from brainfm.models.common import infer_config
from brainfm.models.registry import sha256_file
from ckpt_factory import (
    write_brainid, write_brainid_features, write_brainid_head, write_forbidden_pickle, write_native,
    write_official, write_os_system_pickle,
)

X = torch.rand(1, 1, 15, 12, 13, generator=torch.Generator().manual_seed(0)) * 80


def outputs(net, x=X):
    with torch.inference_mode():
        return net(x)


def assert_same_outputs(a, b, atol=1e-6):
    oa, ob = outputs(a), outputs(b)
    assert sorted(oa) == sorted(ob)
    for k in oa:
        assert torch.allclose(oa[k], ob[k], atol=atol), k


def test_official_checkpoint_roundtrip(tmp_path):
    p = tmp_path / "brainfm_pretrained.pth"
    net = write_official(p, epoch=11, max_surf_distance=2.5)
    loaded = load_model(p)
    net2, info = loaded  # unpacks as a pair
    assert_same_outputs(net, net2)
    assert not net2.training
    assert all(q.requires_grad for q in net2.parameters())  # usable for fine-tuning
    assert info.format == "brainfm-official" and info.name == "brainfm-official"
    assert info.version == "epoch-11" and info.provenance["epoch"] == 11
    assert info.sha256 == sha256_file(p)
    assert info.config.num_levels == 3 and info.config.f_maps == 8 and info.config.unit_feat
    assert info.config.heads["segmentation"] == 56 and info.label_scheme == "brainfm56"
    assert list(info.config.heads) == list(net.config.heads)
    assert info.atlas["name"] == "gca" and len(info.atlas["sha256"]) == 64
    assert info.output_units["CT_scale"] == 1000.0 and info.output_units["registration_scale"] == 100.0
    assert info.output_units["distance_clamp"] == 2.5  # read from gen_args.max_surf_distance
    assert info.provenance["train_args"]["layer_order"] == "gcl"
    json.dumps(info.to_dict())  # metadata is JSON-serialisable


def test_official_unit_feat_from_train_args_and_override(tmp_path):
    p = tmp_path / "nounit.pth"
    net = write_official(p, unit_feat=False, heads={"T1": 1, "segmentation": 18})
    loaded = load_model(p)
    assert loaded.info.config.unit_feat is False and loaded.info.label_scheme == "brainfm_left18"
    assert_same_outputs(net, loaded.net)
    forced = load_model(p, unit_feat=True)
    feat = outputs(forced.net)["feat"]
    assert torch.allclose(feat.norm(dim=1), torch.ones_like(feat[:, 0]), atol=1e-5)
    p2 = tmp_path / "noflag.pth"
    write_official(p2, unit_feat=None)
    assert load_model(p2).info.config.unit_feat is True  # BrainFM default when train_args lacks it


def test_legacy_non_zip_pth_loads(tmp_path):
    import argparse

    from ckpt_factory import random_net
    from brainfm.models import ModelConfig

    net = random_net(ModelConfig(f_maps=8, num_levels=3, heads={"CT": 1}))
    p = tmp_path / "legacy.pth"
    torch.save({"model": net.state_dict(), "train_args": argparse.Namespace(unit_feat=True), "epoch": 2}, str(p),
               _use_new_zipfile_serialization=False)
    loaded = load_model(p)
    assert loaded.info.version == "epoch-2"
    assert_same_outputs(net, loaded.net)


def test_bare_state_dicts_follow_head_naming(tmp_path):
    from ckpt_factory import random_net
    from brainfm.models import ModelConfig

    official = random_net(ModelConfig(f_maps=8, num_levels=3, heads={"T1": 1, "distance": 4}))
    torch.save(official.state_dict(), str(tmp_path / "bare.pth"))
    a = load_model(tmp_path / "bare.pth")
    assert a.info.format == "brainfm-official" and a.info.config.unit_feat is True
    assert_same_outputs(official, a.net)
    backbone = {k: v for k, v in official.state_dict().items() if k.startswith("backbone.")}
    torch.save(backbone, str(tmp_path / "backbone.pth"))
    b = load_model(tmp_path / "backbone.pth")
    assert b.info.format == "brainid" and b.info.config.unit_feat is False and b.net.head_names == []


def test_module_prefix_is_stripped(tmp_path):
    p = tmp_path / "ddp.pth"
    net = write_official(p, key_prefix="module.", heads={"T1": 1, "registration": 3})
    assert_same_outputs(net, load_model(p).net)


def test_brainid_checkpoint(tmp_path):
    p = tmp_path / "brain_id_pretrained.pth"
    net = write_brainid(p)
    loaded = load_model(p)
    assert loaded.info.format == "brainid" and loaded.info.config.unit_feat is False
    assert loaded.net.head_names == ["image"] and loaded.info.label_scheme is None
    assert_same_outputs(net, loaded.net)


def test_brainid_features_plus_head_file(tmp_path):
    fp, hp = tmp_path / "checkpoint_feat_0.pth", tmp_path / "checkpoint_head_0.pth"
    net = write_brainid_features(fp)
    head = write_brainid_head(hp, name="seg", channels=33)
    alone = load_model(fp)
    assert alone.net.head_names == [] and alone.info.format == "brainid"
    loaded = load_model(fp, head_paths=[hp])
    assert loaded.net.head_names == ["segmentation"] and loaded.info.label_scheme == "brainid33"
    assert loaded.info.provenance["head_renames"] == {"seg": "segmentation"}
    assert set(loaded.info.provenance["head_files_sha256"]) == {hp.name}
    out = outputs(loaded.net)
    feat = outputs(net)["feat"]
    assert torch.allclose(out["feat"], feat, atol=1e-6)
    manual = torch.nn.functional.conv3d(feat, head["final_conv_seg.weight"], head["final_conv_seg.bias"])
    assert torch.allclose(out["segmentation"], manual, atol=1e-5)


def test_brainid_dephead_rejected(tmp_path):
    fp, hp = tmp_path / "feat.pth", tmp_path / "sr_head.pth"
    write_brainid_features(fp)
    write_brainid_head(hp, name="sr", channels=1, in_channels=9)
    with pytest.raises(CheckpointError, match="DepHead"):
        load_model(fp, head_paths=[hp])


@pytest.mark.parametrize("fp16", [False, True])
def test_native_roundtrip(tmp_path, fp16):
    net, w, j = write_native(tmp_path / "tiny", fp16=fp16)
    assert (w.name, j.name) == ("tiny.safetensors", "tiny.json")
    meta = json.loads(j.read_text())
    assert meta["format_version"] == 1 and meta["weights_sha256"] == sha256_file(w)
    assert meta["architecture"]["f_maps"] == 8 and meta["heads"]["segmentation"] == 33
    assert meta["weights_dtype"] == ("float16" if fp16 else "float32")
    for spec in (w, j, tmp_path / "tiny"):
        loaded = load_model(spec)
        assert loaded.info.format == "native" and loaded.info.name == "tiny-native"
        assert loaded.info.label_scheme == "fs33" and loaded.info.atlas == {"name": "gca", "sha256": None}
        assert loaded.info.provenance["training_runs"][0]["iterations"] == 10
        assert loaded.info.sha256 == meta["weights_sha256"]
    if fp16:  # the stored weights are the float16-rounded ones
        with torch.no_grad():
            for q in net.parameters():
                q.copy_(q.half().float())
    assert_same_outputs(net, loaded.net)
    assert sorted(os.listdir(tmp_path)) == ["tiny.json", "tiny.safetensors"]  # no temp files left


def test_native_resave_of_loaded_model_keeps_info(tmp_path):
    _, w, _ = write_native(tmp_path / "a")
    first = load_model(w)
    w2, _ = save_native(first.net, tmp_path / "b.safetensors", info=first.info)
    second = load_model(w2)
    assert second.info.name == first.info.name and second.info.provenance == first.info.provenance
    assert second.info.config == first.info.config
    assert_same_outputs(first.net, second.net)


def test_tampered_native_weights_fail_checksum(tmp_path):
    _, w, _ = write_native(tmp_path / "t")
    data = bytearray(w.read_bytes())
    data[-10] ^= 0x01  # one byte of tensor data
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch.*corrupt or tampered"):
        load_model(w)


def test_tampered_pth_fails_expected_checksum(tmp_path):
    p = tmp_path / "m.pth"
    write_official(p, heads={"T1": 1})
    good = sha256_file(p)
    load_model(p, expected_sha256=good)  # correct checksum passes
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch.*corrupt or tampered"):
        load_model(p, expected_sha256=good)


def test_native_expected_checksum_and_missing_sidecar(tmp_path):
    _, w, j = write_native(tmp_path / "n")
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_model(w, expected_sha256="0" * 64)
    j.unlink()
    with pytest.raises(CheckpointError, match="sidecar.*missing"):
        load_model(w)


def test_native_sidecar_cannot_point_outside_its_folder(tmp_path):
    _, w, j = write_native(tmp_path / "n")
    assert os.stat(w).st_mode & 0o777 == 0o644
    meta = json.loads(j.read_text())
    meta["weights_file"] = "../elsewhere.safetensors"
    j.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="must be a file name in the same folder"):
        load_model(j)
    meta["weights_file"], meta["format_version"] = w.name, 99
    j.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_model(j)


def test_strict_loading_names_missing_unexpected_and_misshaped(tmp_path):
    src = tmp_path / "ok.pth"
    sd = {k: v.clone() for k, v in write_official(src, heads={"T1": 1, "distance": 4}).state_dict().items()}
    del sd["backbone.decoders.1.basic_module.SingleConv2.groupnorm.bias"]
    sd["backbone.final_conv.weight"] = torch.zeros(1, 8, 1, 1, 1)
    sd["backbone.encoders.1.basic_module.SingleConv1.conv.weight"] = torch.zeros(8, 8, 3, 3, 2)
    bad = tmp_path / "bad.pth"
    torch.save({"model": sd, "train_args": None}, str(bad))
    with pytest.raises(CheckpointError) as e:
        load_model(bad)
    msg = str(e.value)
    assert "missing tensors (1): backbone.decoders.1.basic_module.SingleConv2.groupnorm.bias" in msg
    assert "unexpected tensors (1): backbone.final_conv.weight" in msg
    assert "backbone.encoders.1.basic_module.SingleConv1.conv.weight (file (8, 8, 3, 3, 2), model (8, 8, 3, 3, 3))" in msg


def test_forbidden_global_is_refused(tmp_path):
    p = tmp_path / "evil.pth"
    write_forbidden_pickle(p)
    with pytest.raises(CheckpointError) as e:
        load_model(p)
    assert str(e.value) == ("refused: evil.pth holds executable objects (ckpt_factory.UntrustedObject) \u2014 only "
                            "load checkpoints you trust. BrainFM reads checkpoints that hold weights (and argparse "
                            "arguments) only.")


@pytest.mark.parametrize("legacy", [False, True])
def test_os_system_pickle_is_refused_and_never_runs(tmp_path, legacy):
    marker = tmp_path / "PWNED"
    p = tmp_path / "model.pth"
    write_os_system_pickle(p, marker, legacy=legacy)
    with pytest.raises(CheckpointError) as e:
        load_model(p)
    msg = str(e.value)
    assert msg.startswith("refused: model.pth holds executable objects (os.system)") and "trust" in msg
    for wrong in ("truncated", "weights_only", "Weights only", "can still be loaded"):
        assert wrong not in msg
    assert not marker.exists()


def test_refusal_does_not_depend_on_torch_wording(tmp_path, monkeypatch):
    """The objects are named from the file itself, whatever torch's message says."""
    import pickle

    marker = tmp_path / "PWNED"
    p = tmp_path / "model.pth"
    write_os_system_pickle(p, marker)

    def refuse(*a, **k):
        raise pickle.UnpicklingError("some future wording without any names")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(CheckpointError, match=r"^refused: model.pth holds executable objects \(os.system\)"):
        load_model(p)
    ok = tmp_path / "ok.pth"
    write_official(ok, heads={"T1": 1})  # only allowed objects: a refusal still says "refused", names none
    with pytest.raises(CheckpointError, match="^refused: ok.pth holds Python objects that a weights file"):
        load_model(ok)
    assert not marker.exists()


def test_truncated_garbage_and_missing_files(tmp_path):
    p = tmp_path / "m.pth"
    write_official(p, heads={"T1": 1})
    data = p.read_bytes()
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="cannot read checkpoint.*truncated"):
        load_model(trunc)
    half = tmp_path / "half.pth"  # cut in half: same clear message, no torch advice
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint.*truncated") as e:
        load_model(half)
    assert "weights_only" not in str(e.value) and "refused" not in str(e.value)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint" * 20)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_model(junk)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "absent.pth")
    empty = tmp_path / "empty.pth"
    torch.save({"model": {}, "train_args": None}, str(empty))
    with pytest.raises(CheckpointError, match="no BrainFM/Brain-ID backbone"):
        load_model(empty)
    jbad = tmp_path / "x.json"
    jbad.write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read native checkpoint metadata"):
        load_model(jbad)


def test_infer_config_from_official_shapes_on_meta():
    from brainfm.models import BrainFMNet, ModelConfig
    from brainfm.models.config import OFFICIAL_HEADS

    with torch.device("meta"):
        sd = BrainFMNet(ModelConfig(heads=OFFICIAL_HEADS)).state_dict()
    cfg = infer_config(sd)
    assert (cfg.num_levels, cfg.f_maps, cfg.in_channels, cfg.heads) == (6, 64, 1, OFFICIAL_HEADS)
    sd5 = {k: v for k, v in sd.items() if not k.startswith(("backbone.encoders.5", "head."))}
    assert infer_config(sd5).num_levels == 5
