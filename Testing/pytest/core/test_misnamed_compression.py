"""A file whose name says compressed where its bytes are not (``scan.nii.gz`` holding plain NIfTI, which ITK
and 3D Slicer read), or the reverse, is read by what it holds: same voxels, same world geometry, the
header checks of the full read, and the file left as it was."""
from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from brainfm.errors import InputError
from brainfm.io import read_volume, write_volume
from brainfm.io.content import name_misleads
from brainfm.io.readers import read_header
from brainfm.volume import Volume
from fixtures import GEOMETRY_CASES

LPS = np.diag([-1.0, -1.0, 1.0])
MARKER = (5, 7, 9)


def _volume(case: str) -> Volume:
    data = np.random.default_rng(3).uniform(0, 10, (14, 16, 12)).astype(np.float32)
    data[MARKER] = 1000.0
    return Volume(data, GEOMETRY_CASES[case])


def _misnamed(tmp_path: Path, v: Volume, right: str, wrong: str) -> Path:
    """``v`` written as ``right`` (its true format), then its bytes stored under the name ``wrong``."""
    good = write_volume(v, tmp_path / f"good{right}")
    bad = tmp_path / f"scan{wrong}"
    bad.write_bytes(Path(good).read_bytes())
    return bad


@pytest.mark.parametrize("case", ["oblique", "lps_stored", "left_handed"])
@pytest.mark.parametrize("right,wrong", [(".nii", ".nii.gz"), (".nii.gz", ".nii"), (".mgh", ".mgz"), (".mgz", ".mgh")])
def test_a_misnamed_file_reads_as_what_it_holds_where_itk_puts_it(tmp_path, case, right, wrong):
    v = _volume(case)
    bad = _misnamed(tmp_path, v, right, wrong)
    digest = hashlib.sha256(bad.read_bytes()).hexdigest()
    assert name_misleads(bad)
    got = read_volume(bad)
    np.testing.assert_array_equal(got.data, v.data)
    np.testing.assert_allclose(got.affine, v.affine, atol=1e-4)
    head = read_header(bad)
    assert head.shape == v.shape and np.allclose(head.spacing, v.spacing, atol=1e-5)
    if right == ".nii":  # ITK (and so Slicer) reads plain NIfTI named .nii.gz: the marker at the same world point
        img = sitk.ReadImage(str(bad))
        itk_point = np.array(img.TransformIndexToPhysicalPoint([int(i) for i in MARKER]))
        np.testing.assert_allclose(itk_point, LPS @ got.world_of(MARKER), atol=1e-3)
    assert hashlib.sha256(bad.read_bytes()).hexdigest() == digest  # the input is never changed


def test_nifti2_named_compressed_is_read_as_nifti2(tmp_path):
    v = _volume("oblique")
    plain = tmp_path / "n2.nii"
    nib.save(nib.Nifti2Image(v.data, v.affine), str(plain))
    bad = tmp_path / "n2_scan.nii.gz"
    bad.write_bytes(plain.read_bytes())
    got = read_volume(bad)
    np.testing.assert_array_equal(got.data, v.data)
    np.testing.assert_allclose(got.affine, v.affine, atol=1e-4)


def test_files_named_as_they_are_take_nibabel_s_own_path(tmp_path):
    v = _volume("oblique")
    for ext in (".nii", ".nii.gz", ".mgh", ".mgz"):
        assert not name_misleads(write_volume(v, tmp_path / f"a{ext}"))
    assert not name_misleads(tmp_path / "missing.nii.gz")  # the reader says it is missing


@pytest.mark.parametrize("content", [b"", b"x" * 500, gzip.compress(b"not an image at all" * 10)])
@pytest.mark.parametrize("name", ["junk.nii", "junk.nii.gz"])
def test_what_is_no_image_under_either_name_is_refused_by_name(tmp_path, content, name):
    bad = tmp_path / name
    bad.write_bytes(content)
    for read in (read_volume, read_header):
        with pytest.raises(InputError, match=name.replace(".", r"\.")):
            read(bad)
