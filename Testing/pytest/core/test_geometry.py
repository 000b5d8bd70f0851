"""brainfm.geometry: every check is made in world (RAS mm) coordinates."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from brainfm.errors import InputError
from brainfm.geometry import (FrameTransform, axcodes, crop, crop_to_foreground, pad, reorient_to_ras,
                              resample_to_grid, resample_to_spacing, to_network_frame)
from brainfm.volume import Volume
from fixtures import GEOMETRY_CASES, affine, rotation

SHAPES = {"ras": (30, 32, 28), "lps_stored": (30, 32, 28), "left_handed": (30, 32, 28),
          "oblique": (28, 36, 24), "anisotropic": (40, 42, 12)}
EXACT_CASES = ("ras", "lps_stored", "left_handed")  # pure axis permutations/flips of a 1 mm grid


def world_grid(aff: np.ndarray, shape) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    return (ijk @ aff[:3, :3].T + aff[:3, 3]).reshape(tuple(shape) + (3,))


def centre_of(aff, shape) -> np.ndarray:
    return (np.asarray(shape) - 1) / 2.0 @ aff[:3, :3].T + aff[:3, 3]


def smooth(world: np.ndarray, c: np.ndarray, s: float = 7.0) -> np.ndarray:
    return np.exp(-((world - c) ** 2).sum(-1) / (2 * s * s)).astype(np.float32)


def spheres(world: np.ndarray, c: np.ndarray) -> np.ndarray:
    r = np.sqrt(((world - c) ** 2).sum(-1))
    lab = np.zeros(r.shape, np.int32)
    lab[r < 13] = 24
    lab[r < 10] = 3
    lab[r < 6] = 41
    lab[(r < 10) & (world[..., 0] < c[0] - 2)] = 2  # a left/right asymmetry so that flips show
    return lab


def case_volumes(case):
    aff, shape = GEOMETRY_CASES[case], SHAPES[case]
    w = world_grid(aff, shape)
    c = centre_of(aff, shape) + np.array([1.3, -0.7, 0.9])  # off-centre: a wrong shift shows
    return Volume(smooth(w, c), aff), Volume(spheres(w, c), aff), c


# -- reorientation -----------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(GEOMETRY_CASES))
def test_reorient_to_ras_is_exact_in_world(case):
    rng = np.random.default_rng(0)
    v = Volume(rng.random(SHAPES[case]).astype(np.float32), GEOMETRY_CASES[case])
    r = reorient_to_ras(v)
    assert axcodes(r.affine) == "RAS"
    if case == "ras":
        assert r is v
    ijk = np.argwhere(np.ones(r.shape, bool))
    src = v.voxel_of(r.world_of(ijk))
    np.testing.assert_allclose(src, np.round(src), atol=1e-6)  # every voxel lands on a source voxel
    s = np.round(src).astype(int)
    np.testing.assert_array_equal(r.data.reshape(-1), v.data[s[:, 0], s[:, 1], s[:, 2]])


def test_reorient_keeps_channel_axis_last():
    rng = np.random.default_rng(1)
    d = rng.random((8, 9, 10, 2)).astype(np.float32)
    aff = GEOMETRY_CASES["lps_stored"]
    r = reorient_to_ras(Volume(d, aff))
    assert r.data.shape == (8, 9, 10, 2)
    for ch in range(2):
        np.testing.assert_array_equal(r.data[..., ch], reorient_to_ras(Volume(d[..., ch], aff)).data)


# -- separable resampling (reference recipe) ------------------------------------------------
def test_resample_to_spacing_preserves_a_world_linear_function():
    aff = affine((0.8, 0.8, 3.0), origin=(-18, -20, -15))
    shape = (40, 42, 12)
    f = lambda w: w[..., 0] + 2 * w[..., 1] + 3 * w[..., 2]  # noqa: E731
    v = Volume(f(world_grid(aff, shape)).astype(np.float32), aff)
    r = resample_to_spacing(v, 1.0)
    assert r.shape == (32, 34, 36)
    expected = f(world_grid(r.affine, r.shape))
    inner = (slice(3, -3),) * 3  # away from the zero-padded blur and the clamped border
    np.testing.assert_allclose(r.data[inner], expected[inner], atol=2e-3)
    np.testing.assert_allclose(centre_of(r.affine, r.shape), centre_of(aff, shape), atol=1e-9)


def test_resample_to_spacing_reference_shape_and_exact_option():
    v = Volume(np.ones((45, 20, 20), np.float32), affine((0.9, 1.0, 1.0)))
    ref = resample_to_spacing(v, 1.0)
    assert ref.shape == (40, 20, 20) and ref.spacing[0] == pytest.approx(45 * 0.9 / 40)
    ex = resample_to_spacing(v, 1.0, exact=True)
    assert ex.shape == (40, 20, 20) and ex.spacing == pytest.approx((1.0, 1.0, 1.0))
    for out in (ref, ex):
        np.testing.assert_allclose(centre_of(out.affine, out.shape), centre_of(v.affine, v.shape), atol=1e-9)
    assert resample_to_spacing(Volume(np.ones((9, 9, 9)), np.eye(4)), 1.0).shape == (9, 9, 9)


def test_antialias_removes_aliasing_on_downsampled_axes():
    x = np.arange(64) * 0.5
    wave = np.sin(2 * np.pi * x / 1.5).astype(np.float32)  # 1.5 mm period: above the 1 mm Nyquist limit
    v = Volume(np.broadcast_to(wave[:, None, None], (64, 10, 10)).copy() + 5, affine((0.5, 1.0, 1.0)))
    on = resample_to_spacing(v, 1.0).data[5:-5, 5, 5]
    off = resample_to_spacing(v, 1.0, antialias=False).data[5:-5, 5, 5]
    assert np.std(off) > 0.25 and np.std(on) < 0.06
    assert np.mean(on) == pytest.approx(5.0, abs=0.05)


def test_nearest_keeps_labels_and_dtype():
    lab = np.zeros((20, 20, 8), np.int16)
    lab[5:15, 5:15, 2:6] = 17
    r = resample_to_spacing(Volume(lab, affine((0.7, 0.7, 2.5))), 1.0, order="nearest")
    assert r.data.dtype == np.int16 and set(np.unique(r.data)) == {0, 17}


# -- world-coordinate resampling -------------------------------------------------------------
@pytest.mark.parametrize("backend", ["torch", "scipy"])
@pytest.mark.parametrize("case", sorted(GEOMETRY_CASES))
def test_resample_to_grid_pulls_back_world_positions(case, backend):
    aff, shape = GEOMETRY_CASES[case], SHAPES[case]
    f = lambda w: 2 * w[..., 0] - w[..., 1] + 0.5 * w[..., 2] + 100  # noqa: E731
    v = Volume(f(world_grid(aff, shape)).astype(np.float32), aff)
    tgt = affine((1.2, 0.9, 1.1), rot=rotation(1, 25) @ rotation(2, -40))
    tgt[:3, 3] = centre_of(aff, shape) - tgt[:3, :3] @ np.array([4.5, 4.5, 4.5])
    out = resample_to_grid(v, tgt, (10, 10, 10), backend=backend)
    assert out.data.dtype == np.float32 and np.allclose(out.affine, tgt)
    np.testing.assert_allclose(out.data, f(world_grid(tgt, (10, 10, 10))), atol=2e-2)


def test_resample_to_grid_exact_path_fill_and_nearest():
    aff = GEOMETRY_CASES["lps_stored"]
    _, lab, _ = case_volumes("lps_stored")
    ras = reorient_to_ras(lab)
    same = resample_to_grid(lab, ras.affine, ras.shape, order="linear")
    assert same.data.dtype == np.int32  # exact copy: no interpolation, type kept
    np.testing.assert_array_equal(same.data, ras.data)
    shifted = ras.affine.copy()
    shifted[:3, 3] += [5.0, 0, 0]  # target 5 voxels to the right: last 5 columns outside
    out = resample_to_grid(lab, shifted, ras.shape, order="nearest", fill=-1)
    np.testing.assert_array_equal(out.data[:-5], ras.data[5:])
    assert (out.data[-5:] == -1).all()
    far = np.eye(4)
    far[:3, 3] = 500
    assert (resample_to_grid(lab, far @ affine(rot=rotation(0, 10)), (6, 6, 6), fill=-5).data == -5).all()
    rot = affine((1.0, 1.0, 1.0), rot=rotation(2, 30))
    rot[:3, 3] = centre_of(aff, lab.shape) - rot[:3, :3] @ np.array([10.0, 10, 10])
    near = resample_to_grid(lab, rot, (21, 21, 21), order="nearest")
    assert near.data.dtype == np.int32 and set(np.unique(near.data)) <= set(np.unique(lab.data))


def test_resample_to_grid_antialias_and_channels():
    x = np.arange(64) * 0.5
    wave = np.sin(2 * np.pi * x / 1.5).astype(np.float32)
    v = Volume(np.broadcast_to(wave[:, None, None], (64, 12, 12)).copy(), affine((0.5, 1.0, 1.0)))
    tgt = affine((1.0, 1.0, 1.0), rot=rotation(2, 0.5), origin=(8, 3, 3))
    assert np.std(resample_to_grid(v, tgt, (12, 4, 4)).data) < 0.1  # amplitude 1 -> ~0.1
    assert np.std(resample_to_grid(v, tgt, (12, 4, 4), antialias=False).data) > 0.5
    two = Volume(np.stack([v.data, 2 * v.data + 1], -1), v.affine)
    out2 = resample_to_grid(two, tgt, (12, 4, 4))
    assert out2.data.shape == (12, 4, 4, 2)
    np.testing.assert_allclose(out2.data[..., 1], 2 * resample_to_grid(v, tgt, (12, 4, 4)).data + 1, atol=1e-5)


# -- crop and pad ----------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["oblique", "lps_stored"])
def test_crop_and_pad_keep_world_positions(case):
    _, lab, _ = case_volumes(case)
    marker = np.argwhere(lab.data == 41)[0]
    c, bbox = crop_to_foreground(lab, threshold=None, margin_vox=2)
    assert c.shape < lab.shape or c.shape != lab.shape
    assert (lab.data != 0).sum() == (c.data != 0).sum()  # every foreground voxel kept
    moved = marker - [b[0] for b in bbox]
    np.testing.assert_allclose(c.world_of(moved), lab.world_of(marker), atol=1e-9)
    np.testing.assert_array_equal(c.data, lab.data[tuple(slice(a, b) for a, b in bbox)])
    p = pad(c, ((1, 2), (3, 0), (0, 4)), value=-1)
    assert p.shape == (c.shape[0] + 3, c.shape[1] + 3, c.shape[2] + 4) and p.data[0, 0, 0] == -1
    np.testing.assert_allclose(p.world_of(moved + [1, 3, 0]), lab.world_of(marker), atol=1e-9)
    back = crop(p, ((1, 1 + c.shape[0]), (3, 3 + c.shape[1]), (0, c.shape[2])))
    assert back.same_grid(c) and np.array_equal(back.data, c.data)
    with pytest.raises(InputError, match="outside the volume"):
        crop(lab, ((0, 5), (0, 5), (0, lab.shape[2] + 1)))


# -- network frame ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(GEOMETRY_CASES))
def test_network_frame_is_ras_1mm_and_geometrically_right(case):
    img, lab, c = case_volumes(case)
    net, tf = to_network_frame(img)
    np.testing.assert_allclose(net.affine[:3, :3], np.eye(3), atol=1e-9)  # RAS, 1 mm, diagonal positive
    assert tf.net_shape == net.shape and np.allclose(tf.net_affine, net.affine)
    w = world_grid(net.affine, net.shape)
    inside = np.all(np.abs(w - c) < 9, axis=-1)  # well within every case's field of view
    np.testing.assert_allclose(net.data[inside], smooth(w, c)[inside], atol=0.03)
    net_lab, tf_lab = to_network_frame(lab, is_label=True)
    assert net_lab.data.dtype == np.int32
    agree = np.mean(net_lab.data == spheres(world_grid(net_lab.affine, net_lab.shape), c))
    assert agree > (0.999 if case in EXACT_CASES else 0.95), agree
    assert (lab.data != 0).sum() == pytest.approx((net_lab.data != 0).sum() * 1.0 / np.prod(lab.spacing), rel=0.1)


@pytest.mark.parametrize("case", sorted(GEOMETRY_CASES))
def test_to_input_inverts_the_network_frame(case):
    img, lab, _ = case_volumes(case)
    net, tf = to_network_frame(img)
    back = tf.to_input(net)
    assert back.same_grid(img) and back.data.dtype == np.float32
    err = np.abs(back.data - img.data)
    # exact cases: a pure copy; others: two linear interpolations (+ anti-alias on 3 mm slices)
    # of a Gaussian of sigma 7 mm and peak 1
    assert err.max() < (1e-6 if case in EXACT_CASES else 0.06), err.max()
    assert err.mean() < (1e-7 if case in EXACT_CASES else 0.005), err.mean()
    net_lab, tf_lab = to_network_frame(lab, is_label=True)
    back_lab = tf_lab.to_input(net_lab, order="nearest")
    assert back_lab.same_grid(lab) and back_lab.data.dtype == np.int32
    if case in EXACT_CASES:
        np.testing.assert_array_equal(back_lab.data, lab.data)
    else:  # 2 nearest-neighbour resamplings: only boundary voxels may change
        fg = (lab.data != 0) | (back_lab.data != 0)
        assert np.mean(back_lab.data[fg] == lab.data[fg]) > 0.93
        assert set(np.unique(back_lab.data)) <= set(np.unique(lab.data))


@pytest.mark.parametrize("case", sorted(GEOMETRY_CASES) + ["cropped"])
def test_to_input_equals_the_general_pull_back(case):
    """FrameTransform.to_input (the production mapper) gives exactly what resample_to_grid onto the
    input grid gives: values, dtype, metadata, for scalars, channels and every dtype path."""
    img, _, _ = case_volumes("ras" if case == "cropped" else case)
    net, tf = to_network_frame(img, crop_foreground=case == "cropped")
    if case == "cropped":
        net, tf = to_network_frame(img.with_data(np.pad(img.data[5:-5, 5:-5, 5:-5], 5)))
    rng = np.random.default_rng(4)
    arrays = {
        "float32": rng.random(net.shape, dtype=np.float32),
        "float64": rng.random(net.shape),
        "int16": rng.integers(-50, 50, net.shape).astype(np.int16),
        "uint16": rng.integers(0, 60000, net.shape).astype(np.uint16),  # SciPy path for nearest
        "big_int": rng.integers(0, 2 ** 26, net.shape).astype(np.int64),  # beyond float32 integers
        "channels": rng.random(net.shape + (3,), dtype=np.float32),
    }
    for name, arr in arrays.items():
        vol = Volume(arr, tf.net_affine, {"task": name})
        for order in ("linear", "nearest"):
            got = tf.to_input(vol, order=order, fill=-3.0 if arr.dtype.kind != "u" else 7)
            ref = resample_to_grid(vol, tf.input_affine, tf.input_shape, order=order,
                                   fill=-3.0 if arr.dtype.kind != "u" else 7)
            assert got.same_grid(img) and got.meta == {"task": name}, (name, order)
            assert got.data.dtype == ref.data.dtype and got.data.shape == ref.data.shape, (name, order)
            np.testing.assert_array_equal(got.data, ref.data, err_msg=f"{case} {name} {order}")
            assert not np.shares_memory(got.data, arr)


def test_fast_path_returns_the_same_array():
    img, _, _ = case_volumes("ras")
    net, tf = to_network_frame(img, crop_foreground=False)
    assert net.data is img.data and tf.method == "exact" and tf.crop_bbox is None
    cropped, tf2 = to_network_frame(img.with_data(np.pad(img.data[5:-5, 5:-5, 5:-5], 5)))
    assert tf2.method == "exact" and cropped.shape == (20 + 8, 22 + 8, 18 + 8)
    lps, _, _ = case_volumes("lps_stored")
    net2, tf3 = to_network_frame(lps, crop_foreground=False)
    assert tf3.method == "exact"
    np.testing.assert_array_equal(net2.data, lps.data[::-1, ::-1, :])


def test_to_frame_pushes_input_grid_volumes_like_the_image():
    img, lab, _ = case_volumes("anisotropic")
    net, tf = to_network_frame(img)
    pushed = tf.to_frame(img)
    assert pushed.same_grid(net) and np.array_equal(pushed.data, net.data)
    lab_net = tf.to_frame(lab, order="nearest")
    assert lab_net.same_grid(net) and lab_net.data.dtype == np.int32
    with pytest.raises(InputError, match="does not match the input grid"):
        tf.to_frame(net)
    with pytest.raises(InputError, match="does not match the network frame"):
        tf.to_input(img)


def test_frame_transform_json_round_trip():
    img, _, _ = case_volumes("oblique")
    net, tf = to_network_frame(img, margin_mm=2.0)
    d = json.loads(json.dumps(tf.to_dict()))
    tf2 = FrameTransform.from_dict(d)
    assert tf2.method == "grid" and tf2.net_shape == tf.net_shape and tf2.crop_bbox == tf.crop_bbox
    np.testing.assert_array_equal(tf2.to_input(net).data, tf.to_input(net).data)


def test_axis_aligned_frame_matches_reference_order():
    """The reference resamples in the stored axis order, then reorients; we reorient first.
    An independent re-implementation of the reference (np.convolve + np.interp per line) must
    give the same 1 mm volume for an LIA-stored, anisotropic input."""
    rng = np.random.default_rng(5)
    shape, sp = (12, 20, 16), (1.5, 0.8, 1.0)
    lia = np.zeros((4, 4))
    lia[0, 0], lia[2, 1], lia[1, 2], lia[3, 3] = -sp[0], -sp[1], sp[2], 1
    data = rng.random(shape).astype(np.float32)
    ours, _ = to_network_frame(Volume(data, lia), crop_foreground=False)
    ref = data.astype(np.float64)
    for ax in range(3):
        n_old = shape[ax]
        n_new = int(round(n_old * sp[ax]))
        factor = n_old / n_new
        if factor > 1:
            sigma = math.log(5) / math.pi * factor
            r = math.ceil(2.5 * sigma)
            k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
            ref = np.apply_along_axis(lambda line: np.convolve(line, k / k.sum(), mode="same"), ax, ref)
        f = n_new / n_old
        pos = np.clip((1 - f) / (2 * f) + np.arange(n_new) / f, 0, n_old - 1)
        ref = np.apply_along_axis(lambda line: np.interp(pos, np.arange(n_old), line), ax, ref)
    ref = np.transpose(ref, (0, 2, 1))[::-1, :, ::-1]  # LIA -> RAS
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours.data, ref, atol=1e-5)


def test_exact_copy_path_for_every_signed_permutation():
    """Grids that differ by an axis permutation/flip and an integer shift are copied voxel by
    voxel: compare with a brute-force lookup for all 48 signed permutations."""
    import itertools

    d = np.random.default_rng(0).random((7, 8, 9)).astype(np.float32)
    shape = (9, 7, 8)
    k = np.argwhere(np.ones(shape, bool))
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product([1, -1], repeat=3):
            for off in [(3, -2, 5), (-1, 8, 0)]:
                m = np.eye(4)
                m[:3, :3] = 0
                for b, a in enumerate(perm):
                    m[a, b] = signs[b]
                m[:3, 3] = off
                out = resample_to_grid(Volume(d, np.eye(4)), m, shape, fill=-1)
                p = k @ m[:3, :3].T + m[:3, 3]
                ok = np.all((p >= 0) & (p < d.shape), axis=1)
                ref = np.full(len(k), -1, np.float32)
                ref[ok] = d[tuple(p[ok].astype(int).T)]
                np.testing.assert_array_equal(out.data.reshape(-1), ref, err_msg=f"{perm} {signs} {off}")


def test_real_label_map_round_trip_is_exact(shared_data):
    """A real 256^3 LIA label map (SynthSeg training_seg_01): net frame by permutation only,
    and back to the input grid voxel for voxel."""
    from brainfm.io import read_volume

    p = shared_data / "SynthSeg" / "data" / "training_label_maps" / "training_seg_01.nii.gz"
    if not p.exists():
        pytest.skip(f"{p} not found")
    lab = read_volume(p, kind="label")
    assert axcodes(lab.affine) == "LIA" and lab.data.dtype == np.int32
    net, tf = to_network_frame(lab, is_label=True)
    assert tf.method == "exact" and np.allclose(net.affine[:3, :3], np.eye(3))
    assert (net.data != 0).sum() == (lab.data != 0).sum()
    np.testing.assert_array_equal(tf.to_input(net, order="nearest").data, lab.data)


def test_oblique_crop_matches_the_uncropped_frame_and_handles_negative_backgrounds():
    """The oblique path resamples only around the foreground: the result must equal the crop of
    the full (uncropped) net frame, also for a CT-like image whose background is -1000."""
    img, lab, c = case_volumes("oblique")
    ct = img.with_data(img.data * (lab.data > 0) * 1000.0 - 1000.0)  # head of radius 13 mm in air
    full, tf_full = to_network_frame(ct, crop_foreground=False)
    net, tf = to_network_frame(ct, margin_mm=2.0)
    assert tf.method == "grid"
    assert all(n < f for n, f in zip(net.shape, full.shape)) and all(29 <= n <= 36 for n in net.shape)
    (i0, i1), (j0, j1), (k0, k1) = tf.crop_bbox
    np.testing.assert_allclose(net.data, full.data[i0:i1, j0:j1, k0:k1], atol=1e-3)
    assert net.data.min() >= -1000.0 - 1e-3 and (full.data[0, 0, 0] == -1000.0)  # outside FOV = background
    np.testing.assert_allclose(tf.to_frame(ct).data, net.data, atol=1e-3)
    back = tf.to_input(net, fill=-1000.0)
    r = np.sqrt(((world_grid(ct.affine, ct.shape) - c) ** 2).sum(-1))
    np.testing.assert_allclose(back.data[r > 20], -1000.0, atol=1e-2)  # air stays air (also outside the crop)
    np.testing.assert_allclose(back.data[r < 10], ct.data[r < 10], atol=30.0)  # smooth inside: 3 % of the peak
