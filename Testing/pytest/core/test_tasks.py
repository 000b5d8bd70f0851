"""Task post-processing on known raw head outputs (no network): units, splits, masks, label numbers,
registration geometry and atlas warping of a known affine map."""
from __future__ import annotations

import numpy as np
import pytest

from brainfm.errors import InputError
from brainfm.tasks import available_tasks, head_map, resolve_tasks
from brainfm.tasks.bias import run_bias
from brainfm.tasks.context import TaskContext
from brainfm.tasks.distance import run_dist
from brainfm.tasks.features import run_feat
from brainfm.tasks.registration import run_reg, sample_at, splat_inverse
from brainfm.tasks.segmentation import run_seg
from brainfm.tasks.superres import run_sr
from brainfm.tasks.synthesis import run_ct, run_t1
from brainfm.volume import Volume
from fixtures import affine, rotation

SHAPE = (10, 12, 8)
AFF = affine((1, 1, 1), rot=rotation(2, 20), origin=(-5.0, 3.0, 7.0))


def _ctx(raw, *, image=None, **kw):
    img = image if image is not None else np.linspace(0.0, 1.0, np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    return TaskContext.identity(raw, img, AFF, **kw)


def test_synth_images_keep_unit_scale_and_mask_background():
    raw = np.random.default_rng(0).random((1,) + SHAPE).astype(np.float32)
    ctx = _ctx({"T1": raw}, heads={"t1": "T1"})
    out = run_t1(ctx)["synth_t1"]
    fg = ctx.net_image > 0
    assert not fg.all() and fg.any()
    np.testing.assert_array_equal(out.data[fg], raw[0][fg])
    assert np.all(out.data[~fg] == 0)
    np.testing.assert_array_equal(out.affine, AFF)
    ctx.mask_background = False
    np.testing.assert_array_equal(run_t1(ctx)["synth_t1"].data, raw[0])


def test_brain_id_image_head_serves_t1():
    raw = np.full((1,) + SHAPE, 0.3, np.float32)
    ctx = _ctx({"image": raw}, heads=head_map(["t1"], ["image"]), mask_background=False)
    assert np.allclose(run_t1(ctx)["synth_t1"].data, 0.3)


def test_ct_is_hounsfield_units():
    raw = np.full((1,) + SHAPE, 0.042, np.float32)
    ctx = _ctx({"CT": raw}, heads={"ct": "CT"})
    out = run_ct(ctx)["synth_ct"]
    fg = ctx.net_image > 0
    np.testing.assert_allclose(out.data[fg], 42.0, rtol=1e-6)
    assert np.all(out.data[~fg] == -1000.0) and out.meta["units"] == "HU"


def test_distance_is_clamped_and_split():
    raw = np.stack([np.full(SHAPE, v, np.float32) for v in (-7.0, -1.25, 2.5, 11.0)])
    out = run_dist(_ctx({"distance": raw}, heads={"dist": "distance"}))
    assert sorted(out) == ["dist_lp", "dist_lw", "dist_rp", "dist_rw"]
    for key, want in zip(("dist_lp", "dist_lw", "dist_rp", "dist_rw"), (-3.0, -1.25, 2.5, 3.0)):
        assert np.all(out[key].data == np.float32(want)) and out[key].meta["units"] == "mm"


def test_bias_field_is_exp_and_correction_divides_inside_foreground():
    raw = np.full((1,) + SHAPE, np.log(2.0), np.float32)
    img = np.zeros(SHAPE, np.float32)
    img[2:8, 2:10, 2:6] = 50.0
    ctx = _ctx({"bias_field_log": raw}, image=img / 50.0, heads={"bias": "bias_field_log"},
               image_out=img, foreground_out=img > 0)
    out = run_bias(ctx)
    np.testing.assert_allclose(out["bias_field"].data, 2.0, rtol=1e-6)
    np.testing.assert_allclose(out["bias_corrected"].data[img > 0], 25.0, rtol=1e-6)
    assert np.all(out["bias_corrected"].data[img == 0] == 0)


def test_sr_adds_residual_and_undoes_minmax():
    img = np.random.default_rng(1).random(SHAPE).astype(np.float32)
    raw = np.full((1,) + SHAPE, 0.1, np.float32)
    ctx = _ctx({"high_res_residual": raw}, image=img, heads={"sr": "high_res_residual"},
               norm_range=(20.0, 220.0), mask_background=False)
    out = run_sr(ctx)["superres"]
    np.testing.assert_allclose(out.data, (img + 0.1) * 200.0 + 20.0, rtol=1e-5)


def test_segmentation_maps_argmax_channel_to_freesurfer_numbers():
    from brainfm.labels import get_scheme

    scheme = get_scheme("brainfm56")
    logits = np.zeros((56,) + SHAPE, np.float32)
    logits[21, :5] = 4.0  # Left-Cerebral-Cortex -> FreeSurfer 3
    logits[39, 5:] = 4.0  # Right-Cerebral-Cortex -> FreeSurfer 42
    ctx = _ctx({"segmentation": logits}, heads={"seg": "segmentation"}, scheme=scheme,
               return_probabilities=True, mask_background=False)
    out = run_seg(ctx)
    seg = out["seg"].data
    assert seg.dtype == np.int32 and seg.shape == SHAPE
    assert np.all(seg[:5] == scheme.fs_values[21]) and np.all(seg[5:] == scheme.fs_values[39])
    assert scheme.fs_values[21] == 3 and scheme.fs_values[39] == 42
    probs = out["seg_probabilities"].data
    assert probs.shape == SHAPE + (56,)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    rows = {r["value"]: r for r in ctx.tables["seg_volumes"]}
    assert rows[3]["voxels"] == 5 * 12 * 8 and rows[42]["voxels"] == 5 * 12 * 8
    assert rows[3]["volume_mm3"] == pytest.approx(480.0) and rows[3]["name"] == "Left-Cerebral-Cortex"


def test_registration_units_and_displacement_are_exact():
    b = np.array([0.12, -0.30, 0.05], np.float32)
    raw = np.broadcast_to(b[:, None, None, None], (3,) + SHAPE).astype(np.float32)
    ctx = _ctx({"registration": raw}, heads={"reg": "registration"}, mask_background=False)
    out = run_reg(ctx)
    coords = out["reg_atlas_coords"].data
    np.testing.assert_allclose(coords, np.broadcast_to(b * 100, SHAPE + (3,)), rtol=1e-6)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1).reshape(-1, 3)
    world = (ijk @ AFF[:3, :3].T + AFF[:3, 3]).reshape(SHAPE + (3,))
    np.testing.assert_allclose(out["reg_displacement"].data, coords - world, atol=1e-4)
    assert out["reg_displacement"].meta["intent"] == "displacement"
    assert "atlas_warped" not in out and any("atlas" in w for w in ctx.warnings)


def _smooth(points):
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    return 100 + 2.0 * x - 1.5 * y + 0.8 * z + 0.05 * x * y


def test_atlas_warping_and_inverse_of_a_known_affine_map():
    """Subject grid 1 mm RAS; the 'registration head' predicts y = A x + t exactly."""
    shape = (28, 30, 26)
    subj_aff = affine((1, 1, 1), origin=(-14, -15, -13))
    a = rotation(2, 10) @ np.diag([1.1, 0.95, 1.0])
    t = np.array([3.0, -2.0, 1.5])
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    world = ijk @ subj_aff[:3, :3].T + subj_aff[:3, 3]
    atlas_pts = world @ a.T + t
    raw = np.moveaxis(atlas_pts / 100.0, -1, 0).astype(np.float32)
    # atlas: smooth template on an LIA-stored 1 mm grid (like gca.mgz)
    at_aff = np.array([[-1, 0, 0, 20.0], [0, 0, 1, -22.0], [0, -1, 0, 20.0], [0, 0, 0, 1]])
    at_shape = (42, 42, 44)
    at_ijk = np.stack(np.meshgrid(*[np.arange(n) for n in at_shape], indexing="ij"), -1).astype(float)
    at_world = at_ijk @ at_aff[:3, :3].T + at_aff[:3, 3]
    atlas = Volume(_smooth(at_world).astype(np.float32), at_aff)
    # subject image = the atlas pulled back through the map: s(x) = T(A x + t)
    subj = _smooth(atlas_pts).astype(np.float32)
    ctx = TaskContext.identity({"registration": raw}, np.ones(shape, np.float32), subj_aff,
                               heads={"reg": "registration"}, atlas=atlas, image_out=subj,
                               norm_range=(0.0, 1.0), mask_background=False)
    ctx.net_image = (subj - subj.min() + 1) / (subj.max() - subj.min() + 1)  # > 0 everywhere
    ctx.norm_range = (float(subj.min()) - 1, float(subj.max()))
    out = run_reg(ctx)
    # atlas_warped(x) = T(A x + t) = subject image (exact for a linear template, up to float error)
    inside = np.all((atlas_pts > at_world.min((0, 1, 2)) + 1) & (atlas_pts < at_world.max((0, 1, 2)) - 1), -1)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(out["atlas_warped"].data[inside], subj[inside], rtol=2e-3, atol=0.5)
    # subject_in_atlas(y) = s(A^-1 (y - t)) = T(y) on atlas voxels covered by the subject
    inv = out["subject_in_atlas"]
    assert inv.same_grid(atlas)
    back = (at_world - t) @ np.linalg.inv(a).T
    vox = (back - subj_aff[:3, 3]) @ np.linalg.inv(subj_aff[:3, :3]).T
    covered = np.all((vox > 1) & (vox < np.array(shape) - 2), -1)
    assert covered.sum() > 5000
    err = np.abs(inv.data[covered] - atlas.data[covered])
    assert float(err.max()) < 1.5 and float(err.mean()) < 0.2  # template values span ~200


def test_splat_and_sample_round_trip_on_identity():
    aff = affine((1, 1, 1), origin=(-3, -3, -3))
    data = np.arange(6 * 6 * 6, dtype=np.float32).reshape(6, 6, 6)
    vol = Volume(data, aff)
    ijk = np.stack(np.meshgrid(*[np.arange(6)] * 3, indexing="ij"), -1).reshape(-1, 3).astype(float)
    pts = ijk @ aff[:3, :3].T + aff[:3, 3]
    np.testing.assert_allclose(sample_at(vol, pts), data.ravel(), atol=1e-4)
    img, w = splat_inverse(data.ravel(), pts, aff, (6, 6, 6))
    np.testing.assert_allclose(img, data, atol=1e-4)
    np.testing.assert_allclose(w, 1.0, atol=1e-6)


def test_features_are_float16_channels_last():
    feat = np.random.default_rng(2).random((6,) + SHAPE).astype(np.float32)
    out = run_feat(_ctx({"feat": feat}))["features"]
    assert out.data.dtype == np.float16 and out.data.shape == SHAPE + (6,)
    np.testing.assert_allclose(out.data[..., 3], feat[3], atol=1e-3)


OFFICIAL = ["T1", "T2", "FLAIR", "CT", "bias_field_log", "segmentation", "distance", "registration"]


def test_task_registry():
    assert available_tasks(OFFICIAL) == ["t1", "t2", "flair", "ct", "seg", "dist", "bias", "reg", "feat"]
    assert "sr" in available_tasks(OFFICIAL + ["high_res_residual"])
    assert resolve_tasks(["all"], OFFICIAL) == ["t1", "t2", "flair", "ct", "seg", "dist", "bias", "reg"]
    assert resolve_tasks(["SEG", "feat", "seg"], OFFICIAL) == ["seg", "feat"]
    assert resolve_tasks("t1,ct", OFFICIAL) == ["t1", "ct"]
    with pytest.raises(InputError, match="unknown task 'segm'.*t1, t2"):
        resolve_tasks(["segm"], OFFICIAL)
    with pytest.raises(InputError, match="high_res_residual.*available tasks: t1"):
        resolve_tasks(["sr"], OFFICIAL)


def test_super_resolution_on_a_coarse_grid_is_refused_for_its_grid_not_a_missing_head():
    heads = OFFICIAL + ["high_res_residual"]
    assert resolve_tasks(["sr"], heads, voxel_mm=1.0) == ["sr"]
    assert "sr" not in resolve_tasks(["all"], heads, voxel_mm=2.0)
    with pytest.raises(InputError, match=r"task 'sr' \(1 mm super-resolution\) is not offered by a model that "
                                         r"works on a 2 mm grid; available tasks: t1,") as err:
        resolve_tasks(["sr"], heads, voxel_mm=2.0)
    assert "high_res_residual" not in str(err.value)
