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
                   n_samples=1, lr=0.01, device="cpu", name="toy-seg", n_val=1)
    loaded = load_model(res.native_model)
    assert loaded.info.label_scheme == "fs33"
    assert loaded.info.config.heads == {"image": 1, "segmentation": 33}
    assert loaded.info.config.head_hidden == {"segmentation": 32}  # the new head's hidden layer, by default
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
    # trained on the CPU in channels_last_3d: the decoder's first GroupNorm gets the frozen encoder's
    # output (no gradient) and needs its own weight's; PyTorch's kernel for that crashed the process
    # (brainfm.training.memory_format)
    res = finetune(base, data_dir, tmp_path / "encoder", task="seg", mode="encoder", steps=2, size=24,
                   n_samples=2, lr=0.01, device="cpu")  # a batch of 2 keeps the channels_last_3d layout
    sd, bsd = load_model(res.native_model).net.state_dict(), base.state_dict()
    assert torch.equal(sd[enc], bsd[enc])  # the encoder stays as it was
    dec = "backbone.decoders.0.basic_module.SingleConv1.groupnorm.weight"
    assert not torch.equal(sd[dec], bsd[dec]) and all(np.isfinite(res.losses))


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


def test_a_fine_tuned_model_works_on_its_base_s_grid_and_keeps_its_other_outputs(data_dir, tmp_path):
    """A 2 mm base (like the bundled model): fine-tuning sees each image exactly as inference prepares it
    on 2 mm, the fine-tuned model keeps the base's description (grid, filter, flip, output units,
    atlas, the measured reliability of the heads it did not retrain), and those heads' results are the
    base's, voxel for voxel."""
    from brainfm.inference import Predictor
    from brainfm.inference.preprocess import prepare
    from brainfm.labels import get_scheme
    from brainfm.models import save_native
    from brainfm.training.finetune import _load_pair

    base = _base()
    units = {"images": "min-max [0,1] of the target contrast", "registration_scale": 100.0}
    info = {"name": "toy-compact", "version": "s7", "voxel_mm": 2.0, "input_antialias": False,
            "test_time_flip": True, "atlas": {"name": "gca"}, "output_units": units,
            "quality": {"level": "release", "real_t1_dice17": 0.81, "bias_applied_corr": 0.04}}
    weights, _ = save_native(base, tmp_path / "base" / "toy-compact", info=info)

    image, labels = data_dir / "images" / "s0.nii.gz", data_dir / "labels" / "s0.nii.gz"
    x, t = _load_pair(image, labels, "seg", get_scheme("fs33"), voxel_mm=2.0, antialias=False)
    net = prepare(image, spacing=2.0, antialias=False).net
    np.testing.assert_array_equal(x, net.data)  # what inference gives the network, 2 mm
    assert t.shape == x.shape and set(np.unique(t)) <= set(range(33)) and len(np.unique(t)) > 2

    res = finetune(str(weights), data_dir, tmp_path / "ft", task="seg", mode="head", steps=3, size=16,
                   n_samples=1, lr=0.01, device="cpu", name="toy-seg")
    tuned = load_model(res.native_model).info
    assert (tuned.voxel_mm, tuned.input_antialias, tuned.test_time_flip) == (2.0, False, True)
    assert tuned.atlas == {"name": "gca"} and tuned.output_units == units
    assert tuned.quality == {"bias_applied_corr": 0.04}  # the new head's quality is not the base's
    assert tuned.provenance["base_model"]["name"] == "toy-compact"
    assert tuned.provenance["base_model"]["sha256"] == load_model(weights).info.sha256
    from brainfm.training.export import export_checkpoint

    again, _ = export_checkpoint(tmp_path / "ft", tmp_path / "exported")  # later, from the run's checkpoint
    kept = load_model(again).info
    assert (kept.voxel_mm, kept.input_antialias, kept.atlas, kept.quality) == (2.0, False, {"name": "gca"},
                                                                               {"bias_applied_corr": 0.04})

    scan = blob_head(SHAPE, GEOMETRY_CASES["oblique"], seed=5)
    a = Predictor.from_pretrained(str(weights), device="cpu").predict(scan, tasks=["t1"], synth_method="head")
    b = Predictor.from_pretrained(str(res.native_model), device="cpu").predict(scan, tasks=["t1", "seg"],
                                                                               synth_method="head")
    assert b.metadata["model"]["voxel_mm"] == 2.0 and b["seg"].shape == scan.shape
    np.testing.assert_allclose(np.asarray(b["synth_t1"].data), np.asarray(a["synth_t1"].data), atol=1e-6)
    assert float(np.ptp(np.asarray(a["synth_t1"].data))) > 0


def test_fine_tuning_prepares_a_ct_as_inference_does(tmp_path):
    """A head CT in Hounsfield units trains on the CT window that inference applies, not on min-max HU."""
    from brainfm.inference.preprocess import prepare
    from brainfm.labels import get_scheme
    from brainfm.training.finetune import _load_pair

    aff = GEOMETRY_CASES["ras"]
    img = blob_head(SHAPE, seed=2).data
    hu = np.where(img > 1, 20.0 + img * 0.5, -1000.0)
    hu[:3] = 1500.0  # bone far above the window
    _write(tmp_path / "ct.nii.gz", hu.astype(np.int16), aff)
    _write(tmp_path / "lab.nii.gz", label_head(SHAPE).astype(np.int16), aff)
    x, _ = _load_pair(tmp_path / "ct.nii.gz", tmp_path / "lab.nii.gz", "seg", get_scheme("fs33"))
    prep = prepare(tmp_path / "ct.nii.gz")
    assert prep.ct_window
    np.testing.assert_array_equal(x, prep.net.data)
    assert float(np.median(x[x > 0])) > 0.3  # brain in the middle of the window, not squeezed near 0 by bone


def test_label_maps_are_read_as_label_maps_everywhere_else(tmp_path):
    """A label map stored as float32 with whole numbers (5 of the 20 SynthSeg maps are) trains as its
    integer copy; one that holds values between labels (16.99998: an image, or a map resampled with
    interpolation) fails naming the file, as the product's label reader does, instead of being cut down
    to other labels (16.99998 to 16, the brainstem); so does a map without a label of the scheme, and
    ``label_scheme="auto"`` refuses the same file."""
    from brainfm.labels import get_scheme
    from brainfm.training.finetune import _load_pair, fine_tuning_scheme

    aff, scheme = GEOMETRY_CASES["ras"], get_scheme("fs33")
    lab = label_head(SHAPE)
    image = tmp_path / "img.nii.gz"
    _write(image, blob_head(SHAPE, seed=1).data, aff)
    _write(tmp_path / "int.nii.gz", lab.astype(np.int16), aff)
    _write(tmp_path / "float.nii.gz", lab.astype(np.float32), aff)
    _, exact = _load_pair(image, tmp_path / "int.nii.gz", "seg", scheme)
    _, t = _load_pair(image, tmp_path / "float.nii.gz", "seg", scheme)
    np.testing.assert_array_equal(t, exact)
    assert set(np.unique(t)) == {scheme.fs_values.index(v) for v in (0, 2, 3, 4, 24, 41, 42, 43)}

    _write(tmp_path / "between.nii.gz", np.where(lab == 24, 16.99998, lab).astype(np.float32), aff)
    with pytest.raises(InputError, match="between.nii.gz is not a label map"):
        _load_pair(image, tmp_path / "between.nii.gz", "seg", scheme)
    with pytest.raises(InputError, match="between.nii.gz is not a label map"):
        fine_tuning_scheme("auto", [(image, tmp_path / "between.nii.gz")])
    _write(tmp_path / "none.nii.gz", np.where(lab > 0, 999, 0).astype(np.int16), aff)
    with pytest.raises(InputError, match="none.nii.gz has no label of the fs33 scheme"):
        _load_pair(image, tmp_path / "none.nii.gz", "seg", scheme)


def test_a_new_segmentation_head_starts_from_the_base_s_classes_of_the_same_labels(data_dir, tmp_path):
    from brainfm.labels import get_scheme
    from brainfm.models import save_native

    torch.manual_seed(1)
    base = BrainFMNet(ModelConfig(f_maps=4, num_levels=3, num_groups=4, unit_feat=False,
                                  heads={"image": 1, "segmentation": 33}))
    weights, _ = save_native(base, tmp_path / "base" / "toy-seg", info={"name": "toy-seg", "label_scheme": "fs33"})
    res = finetune(str(weights), data_dir, tmp_path / "ft", task="seg", mode="head", label_scheme="brainid33",
                   steps=1, size=16, n_samples=1, lr=1e-9, device="cpu")
    both = load_model(res.native_model).net.state_dict()["head.final_conv_segmentation.weight"]
    tuned, image = both[:, :4], both[:, 4:]   # the new head reads the image after the 4 features
    assert float(image.abs().max()) < 1e-5     # and starts as a head of the features alone
    old = load_model(weights).net.state_dict()["head.final_conv_segmentation.weight"]
    fs33, brainid = get_scheme("fs33").fs_values, get_scheme("brainid33").fs_values
    for c, value in enumerate(brainid):
        if value in fs33:  # the base's class of that label, barely moved by one tiny step
            torch.testing.assert_close(tuned[c], old[fs33.index(value)], atol=1e-5, rtol=0)
    new = [c for c, v in enumerate(brainid) if v not in fs33]
    assert new and all(not torch.allclose(tuned[c], old[0], atol=1e-3) for c in new)


def test_fine_tuning_for_labels_of_your_own(data_dir, tmp_path):
    """A label table names the user's labels (Lesion 1, Edema 7): the model learns those classes, writes
    those values with those names and colours (volume table, Slicer colour table beside the map), and
    uses none of the fits to FreeSurfer anatomy, which its labels no longer describe."""
    from brainfm.inference import Predictor
    from brainfm.labels import custom_scheme
    from brainfm.models import save_native
    from brainfm.report.save import save_prediction
    from brainfm.training.finetune import fine_tuning_scheme

    own = tmp_path / "own"
    for sub in ("images", "labels"):
        (own / sub).mkdir(parents=True)
    aff = GEOMETRY_CASES["lps_stored"]
    for i in range(2):
        _write(own / "images" / f"s{i}.nii.gz", blob_head(SHAPE, seed=i).data, aff)
        lab = label_head(SHAPE)
        mine = np.where(np.isin(lab, (2, 41)), 1, np.where(np.isin(lab, (4, 43)), 7, 0)).astype(np.int16)
        _write(own / "labels" / f"s{i}.nii.gz", mine, aff)
    table = tmp_path / "mine.csv"
    table.write_text("LabelValue,Name,Color_R,Color_G,Color_B,Color_A\n1,Lesion,255,0,0,255\n7,Edema,0,0,255,255\n")
    assert fine_tuning_scheme("auto", pair_folder(own)).values == (0, 1, 7)
    # without a table: FreeSurfer's names for FreeSurfer's numbers
    assert fine_tuning_scheme("auto", pair_folder(own)).names[1:] == ("Left-Cerebral-Exterior",
                                                                        "Left-Cerebellum-White-Matter")

    torch.manual_seed(0)
    base = BrainFMNet(ModelConfig(f_maps=4, num_levels=3, num_groups=4, unit_feat=False,
                                  heads={"image": 1, "segmentation": 33, "bias_field_log": 1}))
    weights, _ = save_native(base, tmp_path / "base" / "toy", info={
        "name": "toy", "label_scheme": "fs33", "voxel_mm": 2.0, "quality": {"bias_applied_corr": 0.04}})
    res = finetune(str(weights), own, tmp_path / "ft", task="seg", label_scheme=str(table), steps=2, size=16,
                   n_samples=1, device="cpu", name="lesions")
    info = load_model(res.native_model).info
    assert isinstance(info.label_scheme, dict) and info.label_scheme["names"] == ["Unknown", "Lesion", "Edema"]
    assert info.config.heads["segmentation"] == 3

    predictor = Predictor.from_pretrained(str(res.native_model), device="cpu")
    assert not predictor.segments_anatomy and Predictor.from_pretrained(str(weights), device="cpu").segments_anatomy
    scan = blob_head(SHAPE, aff, seed=4)
    pred = predictor.predict(scan, tasks=["seg", "bias"])
    assert set(np.unique(np.asarray(pred["seg"].data))) <= {0, 1, 7}
    assert pred.metadata["seg_method"] == "model head" and pred.metadata["bias_method"] == "model head"
    assert not any("segmentation check" in w for w in pred.metadata.get("warnings", []))
    names = {r["value"]: r["name"] for r in pred.tables["seg_volumes"]}
    assert names[1] == "Lesion" and names[7] == "Edema" and set(names) <= {1, 7}
    summary = save_prediction(pred, tmp_path / "case", input_volume=scan, png=True)
    rows = (tmp_path / "case" / "seg_labels.csv").read_text().splitlines()
    assert rows[1].startswith("1,Lesion,255,0,0,255") and rows[2].startswith("7,Edema,0,0,255,255")
    assert summary["outputs"]["seg"]["label_table"] == "seg_labels.csv"
    from brainfm.report.save import write_label_table

    named = write_label_table([[17, "Left-Hippocampus", 1, 2, 3]], tmp_path / "t.csv").read_text()
    assert "17,Left-Hippocampus,1,2,3,255" in named and "SCT" not in named  # a user's name, no code guessed
    with pytest.raises(InputError, match="labels of your own"):
        predictor.predict(scan, tasks=["seg"], seg_method="fit")
    with pytest.raises(InputError, match="no segmentation head"):
        predictor.predict(scan, tasks=["bias"], bias_method="fit")
    assert custom_scheme([0, 1, 7], names={1: "Lesion", 7: "Edema"}).anatomical is False


def test_a_class_the_base_lacks_starts_from_the_base_s_classes_inside_it():
    from brainfm.training.finetune import start_new_classes

    torch.manual_seed(3)
    base = BrainFMNet(ModelConfig(f_maps=4, num_levels=3, num_groups=4, heads={"segmentation": 33}))
    base.eval()
    x = blob_head((24, 24, 24), seed=1).data.astype(np.float32)  # one window, no padding
    x /= x.max()
    with torch.no_grad():
        arg = base(torch.from_numpy(x)[None, None], heads=["segmentation"])["segmentation"][0].argmax(0).numpy()
    k = int(np.bincount(arg.ravel()).argmax())
    target = (arg == k).astype(np.int64)  # the user's label 1 is exactly where the base sees class k
    net = build_finetune_model(base, head="segmentation", channels=2)
    started = start_new_classes(net, base, [(x, target)], head="segmentation", skip=[0], size=24)
    assert started == [1]
    new, old = net.state_dict(), base.state_dict()
    for part in ("weight", "bias"):
        key = f"head.final_conv_segmentation.{part}"
        torch.testing.assert_close(new[key][1], old[key][k])
    assert start_new_classes(net, base, [(x, np.zeros_like(target))], head="segmentation", skip=[0]) == []


def test_an_image_head_the_base_has_starts_from_the_base_s(data_dir, tmp_path):
    torch.manual_seed(2)
    base = BrainFMNet(ModelConfig(f_maps=4, num_levels=3, num_groups=4, unit_feat=False, heads={"T2": 1}))
    with torch.no_grad():
        base.head.final_conv_T2.bias.fill_(0.37)
    res = finetune(base, data_dir, tmp_path / "t2", task="image", mode="head", head="T2", steps=1, size=16,
                   n_samples=1, lr=1e-9, device="cpu")
    tuned = load_model(res.native_model).net.state_dict()
    for part in ("weight", "bias"):
        key = f"head.final_conv_T2.{part}"
        torch.testing.assert_close(tuned[key], base.state_dict()[key], atol=1e-5, rtol=0)


def test_a_new_head_with_a_hidden_layer_trains_it_and_the_model_uses_it(data_dir, tmp_path):
    """``head_hidden``: the new head starts as the plain 1x1x1 head (its hidden layer's output weights at
    zero), training moves them, and the exported model loads with the hidden layer and segments."""
    from brainfm.inference import Predictor
    from brainfm.models import save_native

    weights, _ = save_native(_base(), tmp_path / "base" / "toy", info={"name": "toy"})
    with pytest.raises(InputError, match="hidden layer"):
        build_finetune_model(_base(), head="segmentation", channels=33, hidden=-1)
    net = build_finetune_model(_base(), head="segmentation", channels=33, hidden=8)
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        feat = net.backbone(x)
        conv = net.head.final_conv_segmentation
        torch.testing.assert_close(net(x)["segmentation"], torch.nn.functional.conv3d(feat, conv.weight, conv.bias))
    res = finetune(str(weights), data_dir, tmp_path / "ft", task="seg", mode="head", steps=5, size=16,
                   n_samples=1, lr=0.01, device="cpu", head_hidden=8)
    loaded = load_model(res.native_model)
    assert loaded.info.config.head_hidden == {"segmentation": 8}
    out_w = loaded.net.state_dict()["head.final_conv_segmentation.hidden.2.weight"]
    assert out_w.shape[:2] == (33, 8) and float(out_w.abs().max()) > 0  # trained away from zero
    scan = blob_head(SHAPE, GEOMETRY_CASES["oblique"], seed=4)
    seg = Predictor.from_pretrained(str(res.native_model), device="cpu").predict(scan, tasks=["seg"])["seg"]
    assert seg.shape == scan.shape


def test_a_new_head_that_reads_the_image_starts_as_the_feature_s_head_and_the_model_uses_it(data_dir, tmp_path):
    """``head_image``: the new head reads the input image beside the feature through weights that start
    at zero (so it starts as a head of the feature alone), training moves them, with cached features
    and without, and the exported model predicts with it (the inference and the autocast paths agree)."""
    from brainfm.inference import Predictor
    from brainfm.inference.forward import forward_tile
    from brainfm.models import save_native

    weights, _ = save_native(_base(), tmp_path / "base" / "toy", info={"name": "toy"})
    net = build_finetune_model(_base(), head="segmentation", channels=33, hidden=8, image=True)
    plain = build_finetune_model(_base(), head="segmentation", channels=33, hidden=8)
    reads = ("head.final_conv_segmentation.weight", "head.final_conv_segmentation.hidden.0.weight")
    plain.load_state_dict({k: (v[:, :4] if k in reads else v) for k, v in net.state_dict().items()})
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(net(x)["segmentation"], plain(x)["segmentation"])
    for cached in (True, False):
        res = finetune(str(weights), data_dir, tmp_path / f"ft{cached}", task="seg", mode="head", steps=5, size=16,
                       n_samples=1, lr=0.01, device="cpu", head_hidden=8, head_image=True, feature_cache=cached)
        loaded = load_model(res.native_model)
        assert loaded.info.config.head_image == ["segmentation"]
        w = loaded.net.state_dict()["head.final_conv_segmentation.weight"]
        assert w.shape[:2] == (33, 5) and float(w[:, 4].abs().max()) > 0   # the image's column trained
    fp32 = forward_tile(loaded.net.float(), x, ["segmentation"], False)["segmentation"]
    amp = forward_tile(loaded.net.float(), x, ["segmentation"], False, amp_dtype=torch.bfloat16)["segmentation"]
    assert float((fp32.argmax(1) == amp.argmax(1)).float().mean()) > 0.9
    scan = blob_head(SHAPE, GEOMETRY_CASES["oblique"], seed=4)
    seg = Predictor.from_pretrained(str(res.native_model), device="cpu").predict(scan, tasks=["seg"])["seg"]
    assert seg.shape == scan.shape


def test_crops_find_a_small_label_a_third_of_the_time_or_more(tmp_path):
    """Per-step training (mode encoder, or no cache) draws crops; a share of them is centred on a
    labelled voxel, so a lesion-sized label is in a crop far more often than chance would put it."""
    from brainfm.io import write_volume
    from brainfm.labels import get_scheme
    from brainfm.training.finetune import PairedSource

    vol = blob_head((64, 64, 64), seed=3)
    lab = np.zeros(vol.shape, np.int16)
    lab[50:53, 10:13, 40:43] = 17   # 27 voxels: left hippocampus, somewhere off centre
    write_volume(vol, tmp_path / "img.nii.gz")
    write_volume(vol.with_data(lab), tmp_path / "lab.nii.gz")
    src = PairedSource([(tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz")], label_scheme=get_scheme("fs33"),
                       size=16, n_samples=2)
    hits = [bool((src.batch(step).targets["segmentation"][n] > 0).any()) for step in range(60) for n in range(2)]
    assert 0.25 < np.mean(hits) < 0.6   # chance: about 2 % of 16^3 crops of a 64^3 image
