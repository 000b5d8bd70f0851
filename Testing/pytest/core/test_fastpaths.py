"""The engine's fast paths give the same results as the straightforward ones: the streaming NIfTI
writer (byte-identical to nibabel), the parallel gzip stream, the cached-grid output mapper (same
values as the general pull-back resample_to_grid), the channel-index segmentation table, torch sampling and
splatting, and the predictor's exact-grid shortcuts (same outputs as the generic mapping)."""
from __future__ import annotations

import gzip
import io
import zlib

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

import brainfm.io.writers as writers
from brainfm.geometry import GridMapper, resample_to_grid, to_network_frame
from brainfm.geometry import mapping
from brainfm.inference import Predictor
from brainfm.io import read_volume, write_volume
from brainfm.labels import get_scheme, structure_volumes
from brainfm.models import BrainFMNet, ModelConfig
from brainfm.tasks import TASKS
from brainfm.tasks.context import TaskContext
from brainfm.tasks.registration import sample_at, splat_inverse
from brainfm.tasks.segmentation import run_seg
from brainfm.volume import Volume
from fixtures import GEOMETRY_CASES, affine, blob_head, rotation


def _nibabel_bytes(vol: Volume, tmp_path) -> bytes:
    """What nibabel.save writes for the same voxels/header settings (uncompressed)."""
    data = writers._cast(vol.data, None, "nifti")
    if data.ndim == 4:
        data = data[:, :, :, None, :]
    img = nib.Nifti1Image(data, vol.affine)
    img.header.set_data_dtype(data.dtype)
    img.set_qform(vol.affine, code=1)
    img.set_sform(vol.affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    if data.ndim == 5:
        img.header.set_intent(1006 if vol.meta.get("intent") == "displacement" else "vector")
    ref = tmp_path / "ref.nii"
    nib.save(img, str(ref))
    return ref.read_bytes()


def _cases():
    rng = np.random.default_rng(0)
    img = rng.random((37, 41, 29), dtype=np.float32)
    img[:5] = 0.0
    return {
        "float_oblique": Volume(img, GEOMETRY_CASES["oblique"]),
        "labels_int16": Volume(rng.integers(0, 60, (30, 20, 10)).astype(np.int32), GEOMETRY_CASES["lps_stored"]),
        "displacement": Volume(rng.random((11, 12, 13, 3), dtype=np.float32), np.eye(4), {"intent": "displacement"}),
        "features_f16": Volume(rng.random((9, 8, 7, 5)).astype(np.float16), np.eye(4)),
        "fortran_uint8": Volume(np.asfortranarray(rng.integers(0, 255, (20, 21, 22)).astype(np.uint8)), np.eye(4)),
        "strided_view": Volume(rng.random((40, 30, 40), dtype=np.float32)[::2, :, ::-2], np.eye(4)),
        "constant_runs": Volume(np.full((33, 17, 19), 3.0, np.float32), np.eye(4)),  # default deflate strategy
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_nifti_writer_is_byte_identical_to_nibabel(tmp_path, monkeypatch, name):
    vol = _cases()[name]
    monkeypatch.setattr(writers, "_CHUNK_BYTES", 2048)  # many pieces, odd piece boundaries
    monkeypatch.setenv("BRAINFM_WRITE_THREADS", "3")
    ref = _nibabel_bytes(vol, tmp_path)
    gz = write_volume(vol, tmp_path / "out.nii.gz")
    assert gzip.decompress(gz.read_bytes()) == ref  # also checks the CRC-32 and size trailer
    assert zlib.decompress(gz.read_bytes(), 31) == ref
    plain = write_volume(vol, tmp_path / "out.nii")
    assert plain.read_bytes() == ref
    back = read_volume(gz)
    np.testing.assert_array_equal(back.data, vol.data)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-5)
    if vol.data.ndim == 3:  # ITK (what Slicer uses) reads the multi-piece stream too
        itk = sitk.GetArrayFromImage(sitk.ReadImage(str(gz))).transpose(2, 1, 0)
        np.testing.assert_array_equal(itk, vol.data)


def test_gzip_stream_and_crc_combination():
    rng = np.random.default_rng(1)
    noisy = (rng.random((8, 64, 64), dtype=np.float32) * (rng.random((8, 64, 64)) > 0.5)).astype(np.float32)
    pieces = [b"header", noisy, np.full((4, 64, 64), -1000.0, np.float32), b"", rng.integers(0, 9, 5000).astype(np.int16)]
    want = b"".join(p.tobytes() if isinstance(p, np.ndarray) else p for p in pieces)
    for threads in (1, 4):
        f = io.BytesIO()
        writers.write_gzip_stream(f, pieces, threads=threads)
        assert gzip.decompress(f.getvalue()) == want
    f = io.BytesIO()
    writers.write_gzip_stream(f, [], threads=2)
    assert gzip.decompress(f.getvalue()) == b""
    blob = rng.integers(0, 256, 100_000).astype(np.uint8).tobytes()
    for cut in (0, 1, 4095, 65536, 100_000):
        a, b = blob[:cut], blob[cut:]
        assert writers.crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(blob)
    assert writers._strategy(noisy, memoryview(noisy.reshape(-1).view(np.uint8))) == zlib.Z_RLE
    labels = np.full((8, 64, 64), 2.0, np.float32)
    assert writers._strategy(labels, memoryview(labels.reshape(-1).view(np.uint8))) == zlib.Z_DEFAULT_STRATEGY


def _crop_case() -> Volume:
    """1 mm RAS input whose foreground is much smaller than the grid: the network frame is a crop."""
    data = np.zeros((44, 40, 36), np.float32)
    data[8:30, 6:28, 5:25] = blob_head((22, 22, 20)).data + 1.0
    return Volume(data, affine((1, 1, 1), origin=(-20, -22, -15)))


@pytest.mark.parametrize("case", list(GEOMETRY_CASES) + ["cropped"])
def test_grid_mapper_equals_frame_to_input(case, monkeypatch):
    """The mapper behind FrameTransform.to_input gives the values of the general pull-back
    (resample_to_grid onto the input grid), for scalars, labels and channels."""
    vol = _crop_case() if case == "cropped" else blob_head((30, 34, 26), GEOMETRY_CASES[case])
    net, tf = to_network_frame(vol)
    m = GridMapper(tf.net_affine, tf.net_shape, tf.input_affine, tf.input_shape)
    expected = {"ras": "identity", "cropped": "exact", "lps_stored": "exact", "left_handed": "exact"}
    assert m.kind == expected.get(case, "resample")
    assert tf.mapper().kind == m.kind

    def ref_to_input(a, **kw):
        return resample_to_grid(Volume(a, tf.net_affine), tf.input_affine, tf.input_shape, **kw).data

    rng = np.random.default_rng(2)
    arr = rng.random(net.shape, dtype=np.float32)
    ref = ref_to_input(arr, order="linear", fill=-2.0)
    np.testing.assert_allclose(m(arr, "linear", -2.0), ref, rtol=0, atol=1e-6)
    lab = rng.integers(0, 40, net.shape).astype(np.uint8)
    got = m(lab, "nearest", 41)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, ref_to_input(lab, order="nearest", fill=41))
    ch = rng.random((3,) + net.shape, dtype=np.float32)
    ref3 = np.stack([ref_to_input(c, fill=1.5) for c in ch], -1)
    np.testing.assert_allclose(m.channels(ch, "linear", 1.5), ref3, rtol=0, atol=1e-6)
    np.testing.assert_allclose(m.channels(ch, "linear", 1.5), ref3, rtol=0, atol=1e-6)  # cached grid reused
    monkeypatch.setattr(mapping, "CHANNEL_BLOCK_BYTES", 1)  # one channel per grid_sample call
    monkeypatch.setattr(mapping, "GRID_CACHE_BYTES", 1)  # grid recomputed in slabs
    monkeypatch.setattr(mapping, "_CHUNK", 64)
    m2 = GridMapper(tf.net_affine, tf.net_shape, tf.input_affine, tf.input_shape)
    np.testing.assert_allclose(m2.channels(ch, "linear", 1.5), ref3, rtol=0, atol=1e-6)
    half = m2.channels(ch, "linear", 1.5, dtype=np.float16)
    assert half.dtype == np.float16
    np.testing.assert_allclose(half, ref3, rtol=2e-3, atol=2e-3)
    if case == "cropped":
        assert np.all(m(arr, "linear", -2.0)[:4] == -2.0)  # outside the crop: fill


@pytest.mark.parametrize("case", ["ras", "cropped", "lps_stored", "oblique", "anisotropic"])
def test_grid_mapper_points_are_the_mapped_channels_at_those_voxels(case, monkeypatch):
    """``points`` gives the rows of ``channels`` at the voxels asked for, for every mapper kind (with the
    anti-alias of downsampled axes and ``fill`` outside), also when computed in several calls."""
    vol = _crop_case() if case == "cropped" else blob_head((30, 34, 26), GEOMETRY_CASES[case])
    net, tf = to_network_frame(vol)
    m = GridMapper(tf.net_affine, tf.net_shape, tf.input_affine, tf.input_shape)
    rng = np.random.default_rng(5)
    ch = rng.random((4,) + net.shape, dtype=np.float32)
    full = m.channels(ch, "linear", -3.0)
    vox = np.argwhere(rng.random(tf.input_shape) < 0.2)
    want = full[vox[:, 0], vox[:, 1], vox[:, 2]]
    np.testing.assert_allclose(m.points(ch, vox, "linear", -3.0), want, rtol=0, atol=1e-6)
    lab = rng.integers(0, 9, (2,) + net.shape).astype(np.uint8)
    got = m.points(lab, vox, "nearest", 11, dtype=np.uint8)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, m.channels(lab, "nearest", 11, dtype=np.uint8)[vox[:, 0], vox[:, 1], vox[:, 2]])
    if case == "cropped":
        assert (want == -3.0).any()  # voxels outside the crop take the fill
    monkeypatch.setattr(mapping, "_CHUNK", 7)  # several grid_sample calls
    np.testing.assert_allclose(m.points(ch, vox, "linear", -3.0), want, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        m.points(ch, vox[:, :2])


def test_segmentation_table_equals_structure_volumes():
    scheme = get_scheme("brainfm56")
    shape = (14, 12, 10)
    logits = np.random.default_rng(3).normal(size=(56,) + shape).astype(np.float32)
    logits[list(scheme.fs_values).index(0)] -= 10.0  # no background inside (test_segrefine: its holes)
    img = np.random.default_rng(4).random(shape).astype(np.float32)
    img[:3] = 0.0  # background: masked to label 0
    aff = affine((0.9, 1.1, 1.3), rot=rotation(1, 12))
    ctx = TaskContext.identity({"segmentation": logits}, img, aff, heads={"seg": "segmentation"}, scheme=scheme)
    seg = run_seg(ctx)["seg"]
    want_idx = np.argmax(logits, axis=0)
    want = np.where(img > 0, np.asarray(scheme.fs_values)[want_idx], 0)
    np.testing.assert_array_equal(seg.data, want)
    assert ctx.tables["seg_volumes"] == structure_volumes(seg, scheme=scheme)


def test_sample_at_and_splat_match_reference_implementations():
    from scipy.ndimage import map_coordinates

    rng = np.random.default_rng(5)
    aff = np.array([[-1.0, 0, 0, 12.0], [0, 0, 1.2, -10.0], [0, -0.9, 0, 9.0], [0, 0, 0, 1]])
    vol = Volume(rng.random((20, 18, 22), dtype=np.float32), aff)
    vox = rng.uniform(-2.0, 23.0, (4000, 3))
    # keep clear of the exact border (SciPy and the 1e-3 voxel tolerance may disagree there)
    for ax, n in enumerate(vol.shape):
        near = (np.abs(vox[:, ax]) < 2e-3) | (np.abs(vox[:, ax] - (n - 1)) < 2e-3)
        vox[near, ax] += 0.01
    pts = vol.world_of(vox)
    want = map_coordinates(vol.data, vox.T, order=1, mode="constant", cval=-7.0)
    np.testing.assert_allclose(sample_at(vol, pts, fill=-7.0), want, rtol=1e-5, atol=1e-5)
    # splatting: float64 np.add.at reference
    vals = rng.random(3000)
    spts = vol.world_of(rng.uniform(-1.5, 22.5, (3000, 3)))
    img, w = splat_inverse(vals, spts, vol.affine, vol.shape)
    v = vol.voxel_of(spts)
    base = np.floor(v).astype(int)
    frac = v - base
    num, den = np.zeros(vol.shape), np.zeros(vol.shape)
    for corner in np.ndindex(2, 2, 2):
        c = np.asarray(corner)
        idx = base + c
        wt = np.prod(np.where(c == 1, frac, 1 - frac), axis=1)
        ok = np.all((idx >= 0) & (idx < vol.shape), axis=1)
        np.add.at(num, tuple(idx[ok].T), wt[ok] * vals[ok])
        np.add.at(den, tuple(idx[ok].T), wt[ok])
    np.testing.assert_allclose(w, den, rtol=1e-5, atol=1e-5)
    ref = np.where(den >= 1e-3, num / np.maximum(den, 1e-3), 0.0)
    np.testing.assert_allclose(img, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", ["cropped", "lps_stored", "oblique"])
def test_predictor_shortcuts_equal_the_generic_mapping(case):
    """Outputs of predict() (exact-grid shortcuts: transforms after mapping, index-based labels)
    equal the post-processors run with the plain general pull-back (resample_to_grid onto the input grid)."""
    torch.manual_seed(0)
    heads = {"T1": 1, "CT": 1, "bias_field_log": 1, "distance": 4, "high_res_residual": 1, "segmentation": 33,
             "registration": 3}
    net = BrainFMNet(ModelConfig(f_maps=8, num_levels=2, heads=heads))
    with torch.no_grad():  # spread the random head outputs so that clamps and arg-max matter
        net.head.final_conv_distance.weight.mul_(40.0)
        net.head.final_conv_bias_field_log.weight.mul_(5.0)
    vol = _crop_case() if case == "cropped" else blob_head((30, 34, 26), GEOMETRY_CASES[case])
    atlas = Volume(blob_head((24, 24, 24)).data, affine((1, 1, 1), origin=(-12, -12, -12)))
    pred = Predictor(net, device="cpu").predict(vol, tasks=["all"], atlas=atlas, keep_raw=True)
    prep_net, tf = to_network_frame(
        vol.with_data((vol.data - vol.data.min()) / (vol.data.max() - vol.data.min())))
    assert tf.net_shape == pred.raw["T1"].shape[1:]

    def generic(arr, order, fill):
        return np.asarray(resample_to_grid(Volume(arr, tf.net_affine), tf.input_affine, tf.input_shape,
                                           order=order, fill=fill).data)

    lo, hi = pred.metadata["intensity_normalisation"]["min"], pred.metadata["intensity_normalisation"]["max"]
    ctx = TaskContext(
        raw=pred.raw, heads=pred.metadata["heads"], net_image=np.asarray(prep_net.data, np.float32),
        net_affine=tf.net_affine, norm_range=(lo, hi), out_affine=vol.affine, out_shape=vol.shape,
        image_out=np.asarray(vol.data, np.float32), foreground_out=(vol.data - vol.data.min()) > 0,
        to_output=generic, to_input=generic, input_affine=vol.affine, input_shape=vol.shape,
        foreground_in=(vol.data - vol.data.min()) > 0, scheme=get_scheme("fs33"), atlas=atlas,
        output_exact=False)
    ref = {}
    for task in pred.metadata["tasks"]:
        ref.update(TASKS[task].run(ctx))
    assert sorted(ref) == sorted(pred.outputs)
    for key, want in ref.items():
        got = pred.outputs[key]
        assert got.same_grid(want) and got.data.dtype == want.data.dtype, key
        if key == "seg":
            np.testing.assert_array_equal(got.data, want.data)
        else:
            scale = max(1.0, float(np.abs(want.data).max()))
            np.testing.assert_allclose(got.data, want.data, rtol=1e-5, atol=2e-5 * scale, err_msg=key)
    assert pred.tables["seg_volumes"] == ctx.tables["seg_volumes"]
    if case != "oblique":
        assert pred.metadata["task_timings"] and pred.metadata["cpu_timings"]["postprocess"] >= 0
