"""brainfm.io.validate_image: specific errors for unusable inputs, warnings for suspicious ones."""
from __future__ import annotations

import numpy as np
import pytest

from brainfm.errors import InputError
from brainfm.io import validate_image
from brainfm.volume import Volume
from fixtures import affine, blob_head, label_head


def test_good_image_has_no_warnings():
    v = blob_head((24, 26, 22))
    before = v.data.copy()
    assert validate_image(v) == []
    np.testing.assert_array_equal(v.data, before)  # input untouched


def test_nan_and_inf_counted():
    v = blob_head((20, 20, 20))
    d = v.data.copy()
    d[0, 0, :3] = np.nan
    d[5, 5, 5] = np.inf
    with pytest.raises(InputError, match=r"contains 4 NaN/Inf voxels"):
        validate_image(v.with_data(d))


def test_empty_and_constant():
    z = Volume(np.zeros((12, 12, 12), np.float32), np.eye(4))
    with pytest.raises(InputError, match="empty"):
        validate_image(z)
    with pytest.raises(InputError, match="empty"):
        validate_image(z.with_data(z.data.astype(np.int16)), role="label")
    with pytest.raises(InputError, match=r"constant \(every voxel = 7"):
        validate_image(z.with_data(z.data + 7))


def test_too_thick_slices_and_override():
    v = blob_head((40, 40, 12), affine((1.0, 1.0, 12.0)))
    with pytest.raises(InputError) as e:
        validate_image(v)
    msg = str(e.value)
    assert "1 x 1 x 12 mm" in msg and "thicker than 10 mm" in msg and "reliable" in msg
    assert "allow_anisotropic=True" in msg and "--allow-anisotropic" in msg
    warnings = validate_image(v, max_slice_mm=None)
    assert any("anisotropic (ratio 12.0)" in w for w in warnings)
    assert validate_image(v, max_slice_mm=15) != []
    # voxels large along every axis are no thick slices: the refusal points at the header's units
    with pytest.raises(InputError) as e:
        validate_image(blob_head((12, 12, 12), affine((50.0, 50.0, 50.0))))
    msg = str(e.value)
    assert "50 x 50 x 50 mm" in msg and "other units than millimetres" in msg and "--allow-anisotropic" in msg
    assert "too thick for reliable results" not in msg
    # fine in-plane voxels with thick slices: the thickness counts, not the ratio (here 12, accepted)
    fine = validate_image(blob_head((40, 40, 12), affine((0.5, 0.5, 6.0))))
    assert len(fine) == 1 and "ratio 12.0" in fine[0]
    # a ratio limit, when a caller asks for one
    with pytest.raises(InputError, match=r"extremely anisotropic \(ratio 12.0 > 8\).*allow_anisotropic=True"):
        validate_image(blob_head((40, 40, 12), affine((0.5, 0.5, 6.0))), max_anisotropy=8)
    # moderate anisotropy: allowed, with a warning
    mild = blob_head((40, 40, 12), affine((1.0, 1.0, 4.0)))
    assert any("ratio 4.0" in w for w in validate_image(mild))


def test_thick_slices_are_not_taken_for_wrong_units():
    # clinical 5 mm slices: the anisotropy warning (pointing to the 1 mm output grid), no header warning
    thick = validate_image(blob_head((40, 40, 12), affine((1.0, 1.0, 5.0))))
    assert len(thick) == 1 and "ratio 5.0" in thick[0] and "--output-frame 1mm" in thick[0]
    # voxel sizes no brain scan has: metres or centimetres read as mm, 5 mm in-plane, 12 mm slices
    for spacing in [(0.001, 0.001, 0.001), (0.1, 0.1, 0.1), (5.0, 5.0, 5.0), (1.0, 1.0, 12.0)]:
        w = validate_image(blob_head((40, 40, 12), affine(spacing)), max_slice_mm=None)
        assert any(x.startswith("unusual voxel size") and "units must be mm" in x for x in w), spacing


def test_too_small():
    with pytest.raises(InputError, match=r"too small \(20x7x20 voxels\).*at least 8"):
        validate_image(blob_head((20, 7, 20)))


def test_label_map_passed_as_image_warns():
    lab = Volume(label_head((20, 24, 18)), np.eye(4))
    w = validate_image(lab)
    assert len(w) == 1 and "looks like a label map" in w[0]
    # the same labels stored as float still look like labels
    assert "label map" in validate_image(lab.with_data(lab.data.astype(np.float32)))[0]
    # a genuine 8-bit image (many contiguous grey values) does not
    img8 = blob_head((24, 24, 24))
    d = np.clip(img8.data * 2, 0, 255).astype(np.uint8)
    assert 50 < len(np.unique(d)) <= 256
    assert validate_image(img8.with_data(d)) == []
    # and as a label role the label map is fine
    assert validate_image(lab, role="label") == []


def test_label_role_rejects_non_integer_values():
    with pytest.raises(InputError, match="non-integer"):
        validate_image(blob_head((16, 16, 16)), role="label")
    with pytest.raises(InputError, match="role"):
        validate_image(blob_head((16, 16, 16)), role="mask")


def test_dense_small_label_sets_warn_through_piecewise_constancy():
    mask = np.zeros((24, 24, 24), np.uint8)
    mask[4:20, 5:18, 6:16] = 1  # binary mask: values 0/1 fill their range, but are blocky
    classes = np.zeros((24, 24, 24), np.int16)
    for c in range(1, 5):
        classes[4 * c:4 * c + 4, 4:20, 4:20] = c  # 5-class map 0..4
    for d in (mask, classes):
        w = validate_image(Volume(d, np.eye(4)))
        assert len(w) == 1 and "label map" in w[0]


def test_real_ct_passes_with_a_thick_slice_warning(shared_data):
    from brainfm.io import read_volume

    p = shared_data / "dcm_qa_ct" / "In" / "GE_as_nifti" / "GE_head_CT_2_Tilt_Eq_1.nii.gz"
    if not p.exists():
        pytest.skip(f"{p} not found")
    ct = read_volume(p)
    assert ct.shape == (512, 611, 56) and ct.data.min() < -1000  # Hounsfield units kept
    w = validate_image(ct)
    assert len(w) == 1 and "ratio 5.4" in w[0]
    with pytest.raises(InputError, match="ratio 5.4 > 4"):
        validate_image(ct, max_anisotropy=4)
