"""A scan with a noisy background: the network works on the box of the head, not on the whole field of
view, and outside that box every output is background, as for a masked scan."""
from __future__ import annotations

import numpy as np
import pytest

from brainfm.inference import Predictor
from brainfm.inference.preprocess import prepare
from brainfm.volume import Volume
from fixtures import GEOMETRY_CASES, blob_head
from test_predictor import tiny_net

FOV = (56, 60, 52)


def noisy_head(affine: np.ndarray, *, seed: int = 0) -> Volume:
    """``blob_head`` in the middle of a larger field of view whose air is a Rician floor (Rayleigh)."""
    head = blob_head((32, 34, 28), seed=seed).data
    rng = np.random.default_rng(seed)
    img = rng.rayleigh(2.0, FOV).astype(np.float32)
    inner = head > 0
    sub = img[12:44, 13:47, 12:40]
    sub[inner] = head[inner]
    return Volume(img, affine)


@pytest.mark.parametrize("case", ["ras", "lps_stored"])
def test_the_network_image_is_the_uncropped_one_cut_to_the_head_box(case):
    img = noisy_head(GEOMETRY_CASES[case])
    full = prepare(img, spacing=2.0, crop_foreground=False)
    prep = prepare(img, spacing=2.0)
    assert prep.head is not None and prep.head.shape == prep.net.shape
    assert all(c < f for c, f in zip(prep.net.shape, full.net.shape))
    box = prep.frame.crop_bbox
    start = np.array([a for a, _ in box])
    # the same voxels, at the same world positions
    np.testing.assert_array_equal(prep.net.data, full.net.data[tuple(slice(a, b) for a, b in box)])
    np.testing.assert_allclose(prep.net.affine[:3, 3], full.net.affine[:3, :3] @ start + full.net.affine[:3, 3])
    # the head is inside the box, with its margin
    assert prep.head.any() and not prep.head[[0, -1]].any()
    # outside the box the foreground is off; inside, the whole head is on
    assert not prep.foreground_in.all()
    assert prep.foreground_in[12:44, 13:47, 12:40][blob_head((32, 34, 28)).data > 0].all()
    # the head mask on the input grid: the network grid's, mapped back by nearest, inside the box
    mapped = prep.frame.to_input(Volume(prep.head.astype(np.uint8), prep.net.affine), order="nearest")
    np.testing.assert_array_equal(prep.head_in, np.asarray(mapped.data) > 0)
    assert prep.head_in.shape == img.shape and prep.head_in.any() and not np.any(prep.head_in & ~prep.foreground_in)


def test_a_masked_scan_is_not_cropped_again():
    img = blob_head((40, 44, 36))
    prep = prepare(img, spacing=2.0)
    assert prep.head is None and prep.head_in is None
    np.testing.assert_array_equal(prep.foreground_in, np.asarray(img.data) > 0)


@pytest.mark.parametrize("case", ["oblique", "lps_stored"])
def test_outputs_keep_the_input_grid_and_are_background_outside_the_head_box(case):
    img = noisy_head(GEOMETRY_CASES[case], seed=1)
    atlas = Volume(np.full((40, 40, 40), 7.0, np.float32), np.eye(4))
    atlas.affine[:3, 3] = [-20, -20, -20]
    predictor = Predictor(tiny_net(), device="cpu")
    pred = predictor.predict(img, tasks=["t1", "seg", "bias", "reg"], atlas=atlas, reg_method="head")
    whole = predictor.predict(img, tasks=["t1"], crop_foreground=False)
    assert np.prod(pred.metadata["network_shape"]) < np.prod(whole.metadata["network_shape"])
    prep = prepare(img, spacing=predictor.voxel_mm)
    outside = ~prep.foreground_in
    assert outside.sum() > 0.2 * outside.size  # most of the air is outside the box
    for key, vol in pred.outputs.items():
        if key == "subject_in_atlas":
            continue
        assert vol.shape[:3] == img.shape and np.array_equal(vol.affine, img.affine), key
        data = np.asarray(vol.data)
        if key == "bias_field":  # no correction where nothing was seen (but at the box's edge, interpolated)
            assert np.mean(data[outside] == 1.0) > 0.99, key
        elif key == "bias_corrected":  # the input itself there
            np.testing.assert_array_equal(data[outside], np.asarray(img.data)[outside])
        else:
            assert not np.any(data[outside]), key  # background: no atlas value, no label, no synthesis
    assert np.asarray(pred["atlas_warped"].data)[prep.foreground_in].max() == pytest.approx(7.0)


@pytest.mark.parametrize("frame", ["input", "1mm"])
def test_outputs_are_background_in_the_air_around_the_head_inside_its_box(frame):
    # the box of the head holds air too (its corners, the margin): the input's foreground there is noise,
    # and a synthesis, an atlas coordinate or a corrected intensity there would be painted on the air
    img = noisy_head(GEOMETRY_CASES["ras"], seed=2)
    predictor = Predictor(tiny_net(), device="cpu")
    pred = predictor.predict(img, tasks=["t1", "seg", "bias", "reg"], reg_method="head", output_frame=frame)
    prep = prepare(img, spacing=predictor.voxel_mm)
    if frame == "input":
        head, box = prep.head_in, prep.foreground_in
        raw = np.asarray(img.data)
    else:  # a 1 mm model's own grid: the head box itself
        head, box = prep.head, np.ones(prep.head.shape, bool)
        raw = None
    air = box & ~head
    assert air.sum() > 0.05 * box.sum() and head.any()
    for key, vol in pred.outputs.items():
        if key == "subject_in_atlas":
            continue
        data = np.asarray(vol.data)
        if data.ndim == 4:
            data = np.abs(data).max(axis=3)
        if key == "bias_field":  # nothing seen there: no correction to apply
            continue
        if key == "bias_corrected":  # the input's own values in the air
            if raw is not None:
                np.testing.assert_array_equal(data[air], raw[air])
            continue
        assert not np.any(data[air]), key
        assert np.any(data[head]), key
