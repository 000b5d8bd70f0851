"""Models that work on a grid coarser than 1 mm (``voxel_mm``, the compact model's 2 mm): the native
file records it, the Predictor resamples to it and back, hides 1 mm super-resolution, and the ``1mm``
output frame really is 1 mm; the generator draws windows of ``size`` voxels of ``voxel_mm``."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from brainfm.errors import CheckpointError, InputError
from brainfm.generator import Generator, GeneratorConfig, SubjectData
from brainfm.inference import Predictor
from brainfm.models import BrainFMNet, ModelConfig, load_model, save_native
from brainfm.models.common import ModelInfo
from brainfm.volume import Volume
from fixtures import GEOMETRY_CASES, blob_head

HEADS = {"T1": 1, "segmentation": 33, "registration": 3, "high_res_residual": 1, "distance": 4}


def tiny(voxel_mm: float, *, seed: int = 0) -> Predictor:
    torch.manual_seed(seed)
    net = BrainFMNet(ModelConfig(f_maps=8, num_levels=3, heads=dict(HEADS)))
    info = ModelInfo(name="tiny", version="1", format="native", sha256="", config=net.config,
                     label_scheme="fs33", voxel_mm=voxel_mm)
    from brainfm.models.common import LoadedModel

    return Predictor(LoadedModel(net, info), device="cpu")


def test_native_file_keeps_voxel_size_and_quality(tmp_path):
    net = BrainFMNet(ModelConfig(f_maps=8, num_levels=3, heads={"segmentation": 33}))
    q = {"level": "preview", "real_t1_dice17": 0.71}
    w, j = save_native(net, tmp_path / "m", info={"name": "m", "voxel_mm": 2.0, "quality": q})
    loaded = load_model(w)
    assert loaded.info.voxel_mm == 2.0 and loaded.info.quality == q
    meta = json.loads(j.read_text())
    del meta["voxel_mm"], meta["quality"]  # files written before these fields: 1 mm, unknown quality
    j.write_text(json.dumps(meta))
    old = load_model(w)
    assert old.info.voxel_mm == 1.0 and old.info.quality == {}
    meta["voxel_mm"] = 0.0
    j.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="voxel_mm"):
        load_model(w)


@pytest.mark.parametrize("voxel_mm", [1.0, 2.0])
def test_model_lists_offer_the_tasks_the_predictor_runs(tmp_path, voxel_mm):
    """What ``brainfm info``, ``brainfm models`` and the Slicer selector read from a file is what runs."""
    from brainfm.models.selection import describe_file

    torch.manual_seed(0)
    net = BrainFMNet(ModelConfig(f_maps=8, num_levels=3, heads=dict(HEADS)))
    w, _ = save_native(net, tmp_path / "m", info={"name": "m", "voxel_mm": voxel_mm})
    listed = describe_file(w)["tasks"]
    assert listed == Predictor.from_pretrained(str(w), device="cpu").available_tasks
    assert ("sr" in listed) is (voxel_mm == 1.0)


def test_predictor_runs_on_the_model_grid_and_returns_the_input_grid():
    head = blob_head((44, 52, 40))
    p1, p2 = tiny(1.0), tiny(2.0)
    r1 = p1.predict(head, tasks=["seg", "t1"])
    r2 = p2.predict(head, tasks=["seg", "t1"])
    s1, s2 = r1.metadata["network_shape"], r2.metadata["network_shape"]
    assert all(abs(b - a / 2) <= 1.5 for a, b in zip(s1, s2)), (s1, s2)
    assert abs(np.linalg.norm(np.asarray(r2.metadata["network_affine"])[:3, :3], axis=0) - 2.0).max() < 1e-9
    assert r2.metadata["model"]["voxel_mm"] == 2.0
    for key in ("seg", "synth_t1"):
        assert r2[key].shape == head.shape and np.allclose(r2[key].affine, head.affine)


@pytest.mark.parametrize("case", ["oblique", "lps_stored", "left_handed"])
def test_coarse_model_outputs_land_on_oblique_lps_and_left_handed_inputs(case):
    vol = blob_head((40, 44, 36), GEOMETRY_CASES[case])
    out = tiny(2.0).predict(vol, tasks=["t1"])["synth_t1"]
    assert out.shape == vol.shape and np.allclose(out.affine, vol.affine)
    # outputs are zero outside the input's foreground and non-zero inside it
    fg = np.asarray(vol.data) > np.asarray(vol.data).min()
    assert not np.any(np.asarray(out.data)[~fg])


def test_super_resolution_needs_a_1mm_model():
    p = tiny(2.0)
    assert "sr" not in p.available_tasks and "sr" in tiny(1.0).available_tasks
    with pytest.raises(InputError, match="sr"):
        p.predict(blob_head((32, 32, 32)), tasks=["sr"])
    assert "superres" not in p.predict(blob_head((32, 32, 32)), tasks=["all"]).outputs


def test_1mm_output_frame_of_a_2mm_model_is_1mm_over_the_same_box():
    head = blob_head((44, 52, 40))
    r = tiny(2.0).predict(head, tasks=["seg", "t1"], output_frame="1mm")
    net_aff, net_shape = np.asarray(r.metadata["network_affine"]), r.metadata["network_shape"]
    seg = r["seg"]
    assert np.allclose(np.linalg.norm(seg.affine[:3, :3], axis=0), 1.0)
    assert seg.shape == tuple(2 * s for s in net_shape)
    # first and last voxel corners of both grids coincide (same world box)
    lo_net = net_aff[:3, 3] - net_aff[:3, :3] @ np.full(3, 0.5)
    lo_1mm = seg.affine[:3, 3] - seg.affine[:3, :3] @ np.full(3, 0.5)
    assert np.allclose(lo_net, lo_1mm)
    # the synthetic T1 is non-zero only where the input (resampled to 1 mm) is foreground
    assert np.count_nonzero(r["synth_t1"].data) > 0


def test_registration_of_a_2mm_model_fills_the_atlas_without_holes():
    head = blob_head((40, 44, 36))
    torch.manual_seed(0)
    net = BrainFMNet(ModelConfig(f_maps=8, num_levels=3, heads={"registration": 3}))
    with torch.no_grad():  # identity-like map: atlas coordinate = world coordinate / 100 (raw units)
        net.head.final_conv_registration.weight.zero_()
        net.head.final_conv_registration.bias.zero_()
    from brainfm.models.common import LoadedModel

    info = ModelInfo(name="t", version="1", format="native", sha256="", config=net.config, voxel_mm=2.0)
    p = Predictor(LoadedModel(net, info), device="cpu")
    atlas = Volume(np.ones((9, 9, 9), np.float32), np.diag([1.0, 1.0, 1.0, 1.0]) @ _shift(-4))
    out = p.predict(head, tasks=["reg"], atlas=atlas)
    inv = np.asarray(out["subject_in_atlas"].data)
    # every subject point maps to the atlas origin: the splat lands around voxel (4, 4, 4) only
    assert inv[4, 4, 4] > 0 and np.count_nonzero(inv) <= 8


def _shift(t: float) -> np.ndarray:
    a = np.eye(4)
    a[:3, 3] = t
    return a


def test_generator_window_covers_size_times_voxel_mm():
    lab = torch.zeros(64, 64, 64, dtype=torch.long)
    lab[24:40, 24:40, 24:40] = 2  # a 16 mm cube of cerebral white matter
    still = GeneratorConfig(rotation_deg=0.0, shear=0.0, scaling=0.0, svf_std=(0.0, 0.0), p_flip=0.0,
                            p_pathology=0.0)
    gen = Generator(still)
    b1 = gen.sample(SubjectData(lab), n_samples=2, size=32, seed=1, voxel_mm=1.0)
    b2 = gen.sample(SubjectData(lab), n_samples=2, size=32, seed=1, voxel_mm=2.0)
    n1 = int((b1.targets["segmentation"] > 0).sum())
    n2 = int((b2.targets["segmentation"] > 0).sum())
    assert n1 == 16 ** 3 and n2 == 8 ** 3
    assert b2.params["voxel_mm"] == 2.0 and tuple(b2.inputs.shape) == (2, 1, 32, 32, 32)
    with pytest.raises(InputError, match="voxel_mm"):
        gen.sample(SubjectData(lab), n_samples=1, size=16, seed=0, voxel_mm=0.0)


def test_severe_fraction_sets_the_share_of_severe_samples():
    lab = torch.zeros(24, 24, 24, dtype=torch.long)
    lab[6:18, 6:18, 6:18] = 2
    for frac, want in ((0.0, 0), (1.0, 4)):
        b = Generator(GeneratorConfig(severe_fraction=frac)).sample(SubjectData(lab), n_samples=4, size=16, seed=3)
        assert sum(s["severity"] == "severe" for s in b.params["samples"]) == want
    counts = [sum(s["severity"] == "severe" for s in Generator(GeneratorConfig(severe_fraction=0.25)).sample(
        SubjectData(lab), n_samples=2, size=16, seed=k).params["samples"]) for k in range(40)]
    assert 0.2 < np.mean(counts) / 2 < 0.4  # 0.25 on average


@pytest.mark.parametrize("slab,factor", [(1, 2), (3, 2), (8, 2), (64, 2), (2, 3)])
def test_refined_labels_equal_whole_volume_interpolation(slab, factor):
    from brainfm.tasks.segmentation import refined_channel_indices

    rng = np.random.default_rng(slab)
    logits = rng.normal(size=(5, 11, 7, 6)).astype(np.float32)
    full = torch.nn.functional.interpolate(torch.from_numpy(logits)[None], scale_factor=factor, mode="trilinear",
                                           align_corners=False)[0].argmax(0).numpy()
    got = refined_channel_indices(logits, factor, slab=slab)
    assert got.shape == full.shape and np.array_equal(got, full)


@pytest.mark.parametrize("factor", [2, 4])
def test_refined_labels_keep_first_maximum_on_ties(factor):
    """Only cells whose corners disagree are interpolated; elsewhere the corners' channel is copied.
    With small integer logits and dyadic weights (exact in float32, so many exact ties) every fine
    voxel must still be the first maximum of the interpolated logits, borders included."""
    from brainfm.tasks.segmentation import refined_channel_indices

    rng = np.random.default_rng(factor)
    logits = rng.integers(0, 3, size=(4, 9, 5, 7)).astype(np.float32)
    logits[:, 2:6, 1:4, 2:5] = 0.0
    logits[2, 2:6, 1:4, 2:5] = 1.0  # a block of one channel: its inner cells agree
    full = torch.nn.functional.interpolate(torch.from_numpy(logits)[None], scale_factor=factor, mode="trilinear",
                                           align_corners=False)[0]
    want = torch.max(full, 0).indices.numpy()
    got = refined_channel_indices(logits, factor, slab=2)
    assert got.dtype == np.uint8 and got.shape == want.shape
    assert np.array_equal(got, want)
    assert (got == 2).sum() >= (4 * 3 * 3 - 2 * 2 * 2) * factor ** 3  # the block's interior is there


def test_coarse_model_segmentation_is_decided_at_1mm():
    """A 2 mm model's labels on a 1 mm RAS input follow the interpolated logits: boundaries fall
    between 2 mm voxels, where nearest-neighbour upsampling could only make 2 mm steps (the model's
    own labels: ``seg_method="head"``, not refined to the image)."""
    head = blob_head((40, 44, 36))
    p = tiny(2.0)
    r = p.predict(head, tasks=["seg"], keep_raw=True, seg_method="head")
    seg = np.asarray(r["seg"].data)
    logits = r.raw["segmentation"]
    from brainfm.labels import get_scheme

    fine = torch.nn.functional.interpolate(torch.from_numpy(logits)[None], scale_factor=2, mode="trilinear",
                                           align_corners=False)[0].argmax(0).numpy()
    lut = np.asarray(get_scheme("fs33").fs_values)
    # the input grid is the fine grid shifted by whole voxels (same spacing, RAS): compare on the overlap
    net_aff = np.asarray(r.metadata["network_affine"])
    from brainfm.inference.predictor import one_mm_grid

    fine_aff, _ = one_mm_grid(net_aff, logits.shape[1:], 2.0)
    off = np.rint(np.linalg.solve(fine_aff, head.affine @ np.array([0, 0, 0, 1.0]))[:3]).astype(int)
    fg = np.asarray(head.data) > 0
    ii = np.argwhere(fg)
    jj = ii + off
    ok = np.all((jj >= 0) & (jj < np.array(fine.shape)), axis=1)
    want = lut[fine[tuple(jj[ok].T)]]
    got = seg[tuple(ii[ok].T)]
    # equal, except background that the labels surround: it gets the next structure (fill_holes)
    from brainfm.tasks.segrefine import enclosed

    holes = enclosed(fine == list(lut).index(0))[tuple(jj[ok].T)]
    assert ok.mean() > 0.99 and np.array_equal(got[~holes], want[~holes]) and (got[holes] != 0).all()


@pytest.mark.parametrize("voxel_mm", [1.0, 2.0])
def test_labels_are_never_painted_outside_the_head(voxel_mm):
    """A model that calls every voxel white matter, on a head with a noisy (non-zero) background:
    labels only inside the head, none in the air; the volume table counts the same voxels."""
    rng = np.random.default_rng(0)
    shape = (48, 52, 44)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt((x / 0.7) ** 2 + (y / 0.75) ** 2 + (z / 0.7) ** 2)
    img = (0.03 + 0.03 * rng.random(shape)).astype(np.float32)  # Rician-like floor everywhere
    img[r < 1.0] = 0.8
    img[r < 0.3] = 0.1  # dark ventricles inside: still head
    head = Volume(img * 1000, np.diag([1.0, 1.0, 1.0, 1.0]))
    net = BrainFMNet(ModelConfig(f_maps=8, num_levels=3, heads={"segmentation": 33}))
    with torch.no_grad():
        net.head.final_conv_segmentation.weight.zero_()
        net.head.final_conv_segmentation.bias.zero_()
        net.head.final_conv_segmentation.bias[1] = 5.0  # fs33 channel 1 = Left-Cerebral-White-Matter (2)
    from brainfm.models.common import LoadedModel

    info = ModelInfo(name="t", version="1", format="native", sha256="", config=net.config, label_scheme="fs33",
                     voxel_mm=voxel_mm)
    res = Predictor(LoadedModel(net, info), device="cpu").predict(head, tasks=["seg"])
    seg = np.asarray(res["seg"].data)
    assert set(np.unique(seg)) == {0, 2}
    assert (seg[r < 0.95] == 2).all()  # the whole head, ventricles included
    assert not seg[r > 1.3].any()  # nothing in the air beyond 5 mm of the head (a 2 mm voxel + its edge)
    rows = res.tables["seg_volumes"]
    counted = {row["value"]: row["voxels"] for row in rows if row["voxels"]}
    assert counted == {2: int((seg == 2).sum())}
    assert "Otsu" in res.metadata["label_mask"]


@pytest.mark.parametrize("case", ["ras", "oblique"])
def test_network_frame_without_anti_alias_filter_keeps_the_grid(case):
    """``antialias=False`` only drops the Gaussian filter: the same lattice of 2 mm voxels (the
    foreground box may be tighter: no filter halo), sharper values."""
    from brainfm.geometry import to_network_frame
    from brainfm.geometry.resample import resample_to_spacing

    vol = blob_head((40, 48, 36), GEOMETRY_CASES[case])
    smooth, tf_s = to_network_frame(vol, spacing=2.0)
    sharp, tf_p = to_network_frame(vol, spacing=2.0, antialias=False)
    assert np.allclose(smooth.affine[:3, :3], sharp.affine[:3, :3])
    shift = np.linalg.solve(smooth.affine[:3, :3], sharp.affine[:3, 3] - smooth.affine[:3, 3])
    assert np.allclose(shift, np.round(shift), atol=1e-6)  # whole voxels of one lattice
    assert all(ps <= pp and pp + n <= ps + m for ps, pp, n, m in
               zip(np.zeros(3), shift, sharp.shape, smooth.shape))  # inside the filtered box
    sub = tuple(slice(int(round(a)), int(round(a)) + n) for a, n in zip(shift, sharp.shape))
    assert not np.allclose(np.asarray(smooth.data)[sub], sharp.data)
    # sharper: more variance between neighbouring 2 mm voxels
    grad = lambda a: float(np.abs(np.diff(np.asarray(a), axis=0)).mean())  # noqa: E731
    assert grad(sharp.data) > grad(np.asarray(smooth.data)[sub])
    if case == "ras":  # axis-aligned: exactly the unfiltered separable resampling, cropped
        ref = resample_to_spacing(vol, 2.0, exact=True, antialias=False)
        box = tuple(slice(a, b) for a, b in tf_p.crop_bbox)
        np.testing.assert_allclose(sharp.data, np.asarray(ref.data)[box], rtol=0, atol=1e-5)


def test_predictor_resamples_inputs_as_the_model_expects(tmp_path):
    """The sidecar's ``input_antialias`` reaches the network input, and the prediction records it."""
    from brainfm.inference.preprocess import prepare

    torch.manual_seed(0)
    net = BrainFMNet(ModelConfig(f_maps=8, num_levels=3, heads=dict(HEADS)))
    vol = blob_head((40, 48, 36), GEOMETRY_CASES["lps_stored"])
    seen = {}
    for flag in (True, False):
        w, j = save_native(net, tmp_path / f"m{flag}", info={"name": "m", "voxel_mm": 2.0, "input_antialias": flag})
        assert json.loads(j.read_text())["input_antialias"] is flag
        pred = Predictor.from_pretrained(str(w), device="cpu", channels_last=False)
        assert pred.input_antialias is flag
        hook = pred.net.register_forward_pre_hook(lambda m, args: seen.__setitem__(flag, args[0].detach().clone()))
        out = pred.predict(vol, tasks=["seg"])
        hook.remove()
        assert out.metadata["model"]["input_antialias"] is flag
        expect = prepare(vol, spacing=2.0, antialias=flag).net.data
        np.testing.assert_allclose(seen[flag][0, 0].numpy(), expect, rtol=0, atol=1e-6)
    assert not torch.allclose(seen[True], seen[False])
    # sidecars written before the field: filtered, as before
    meta = json.loads(j.read_text())
    del meta["input_antialias"]
    j.write_text(json.dumps(meta))
    assert load_model(w).info.input_antialias is True


def test_models_trained_on_a_coarser_grid_are_exported_without_the_filter(tmp_path):
    from brainfm.training.config import TrainConfig, apply_overrides
    from brainfm.training.export import export_native
    from brainfm.training.trainer import build_model

    for vox, flag in ((2.0, False), (1.0, True)):
        cfg = apply_overrides(TrainConfig(), ["model.f_maps=4", "model.num_levels=3", "model.num_groups=2",
                                              f"model.voxel_mm={vox}"])
        w = export_native(build_model(cfg), tmp_path / str(vox), cfg=cfg)
        assert load_model(w).info.input_antialias is flag
