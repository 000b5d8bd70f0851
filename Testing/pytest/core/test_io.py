"""brainfm.io: exact-geometry round trips for every format and clear errors for bad files."""
from __future__ import annotations

import errno
import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

import brainfm.io.writers as writers
from brainfm.errors import InputError, StorageError
from brainfm.io import read_volume, write_volume
from brainfm.volume import Volume
from fixtures import GEOMETRY_CASES

FORMATS = [".nii", ".nii.gz", ".mgz", ".mgh", ".nrrd", ".nhdr", ".mha", ".mhd"]
LPS = np.diag([-1.0, -1.0, 1.0])
MARKER = (5, 7, 9)


def marker_volume(affine: np.ndarray, shape=(14, 16, 12)) -> Volume:
    rng = np.random.default_rng(7)
    data = rng.uniform(0, 10, shape).astype(np.float32)
    data[MARKER] = 1000.0
    return Volume(data, affine)


def files_in(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("case", sorted(GEOMETRY_CASES))
@pytest.mark.parametrize("ext", FORMATS)
def test_round_trip_keeps_world_geometry_and_values(tmp_path, case, ext):
    v = marker_volume(GEOMETRY_CASES[case])
    out = write_volume(v, tmp_path / f"img{ext}")
    w = read_volume(out)
    assert w.shape == v.shape and w.data.dtype == np.float32
    np.testing.assert_array_equal(w.data, v.data)
    found = np.unravel_index(np.argmax(w.data), w.shape)
    err_mm = np.linalg.norm(w.world_of(found) - v.world_of(MARKER))
    assert err_mm < 0.5 * min(v.spacing)
    np.testing.assert_allclose(w.affine, v.affine, atol=1e-4)
    assert w.meta["source_path"] == str(out.resolve())
    assert w.meta["original_dtype"] == "float32"
    # nothing but the output (and a detached data file) is left in the folder
    assert all(not n.startswith(".") for n in files_in(tmp_path))


@pytest.mark.parametrize("case", ["lps_stored", "oblique"])
def test_itk_world_coordinates_match_simpleitk(tmp_path, case):
    """Independent check of the LPS<->RAS conversion: SimpleITK's own physical point of the
    marker (LPS) equals our RAS world position with x and y negated, for files both ways."""
    v = marker_volume(GEOMETRY_CASES[case])
    p = write_volume(v, tmp_path / "a.nii.gz")
    img = sitk.ReadImage(str(p))
    itk_point = np.array(img.TransformIndexToPhysicalPoint([int(i) for i in MARKER]))
    np.testing.assert_allclose(itk_point, LPS @ v.world_of(MARKER), atol=1e-3)
    # an .mha made by SimpleITK itself, read by brainfm
    arr = np.zeros((12, 11, 10), np.float32)  # z, y, x
    arr[4, 3, 2] = 5
    s = sitk.GetImageFromArray(arr)
    s.SetSpacing((0.7, 1.2, 2.0))
    s.SetOrigin((12.0, -3.0, 40.0))
    rot = GEOMETRY_CASES["oblique"][:3, :3] / np.linalg.norm(GEOMETRY_CASES["oblique"][:3, :3], axis=0)
    s.SetDirection(rot.ravel().tolist())
    sitk.WriteImage(s, str(tmp_path / "itk.mha"))
    w = read_volume(tmp_path / "itk.mha")
    assert w.shape == (10, 11, 12) and w.data[2, 3, 4] == 5
    np.testing.assert_allclose(w.world_of([2, 3, 4]), LPS @ np.array(s.TransformIndexToPhysicalPoint((2, 3, 4))),
                               atol=1e-4)


@pytest.mark.parametrize("ext", [".nii.gz", ".mgz", ".nrrd", ".mha"])
def test_label_maps_stay_integer(tmp_path, ext):
    lab = np.zeros((10, 10, 10), np.int64)
    lab[2:5, 3:6, 4:8] = 17
    lab[6, 6, 6] = 2035
    out = write_volume(Volume(lab, GEOMETRY_CASES["lps_stored"]), tmp_path / f"lab{ext}")
    w = read_volume(out)
    assert w.data.dtype == np.int16
    np.testing.assert_array_equal(w.data, lab)
    big = lab.copy()
    big[0, 0, 0] = 70000
    w2 = read_volume(write_volume(Volume(big, np.eye(4)), tmp_path / f"big{ext}"))
    assert w2.data.dtype == np.int32 and w2.data[0, 0, 0] == 70000


def test_read_kinds(tmp_path):
    lab = np.zeros((9, 9, 9), np.float32)
    lab[3:6, 3:6, 3:6] = 41
    p = write_volume(Volume(lab, np.eye(4)), tmp_path / "float_labels.nii.gz")
    assert read_volume(p).data.dtype == np.float32
    as_lab = read_volume(p, kind="label")
    assert as_lab.data.dtype == np.int32 and set(np.unique(as_lab.data)) == {0, 41}
    q = write_volume(Volume(lab + 0.5, np.eye(4)), tmp_path / "image.nii.gz")
    with pytest.raises(InputError, match="not a label map"):
        read_volume(q, kind="label")
    r = write_volume(Volume(lab.astype(np.int16), np.eye(4)), tmp_path / "int.nii.gz")
    assert read_volume(r, kind="image").data.dtype == np.float32


def test_vector_volume_nifti_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    disp = rng.normal(0, 2, (10, 11, 12, 3)).astype(np.float32)
    v = Volume(disp, GEOMETRY_CASES["oblique"], {"intent": "displacement"})
    p = write_volume(v, tmp_path / "disp.nii.gz")
    hdr = nib.load(str(p)).header
    assert hdr["dim"][0] == 5 and tuple(hdr["dim"][1:6]) == (10, 11, 12, 1, 3)
    assert int(hdr["intent_code"]) == 1006
    w = read_volume(p)
    assert w.data.shape == (10, 11, 12, 3) and w.meta["intent"] == "displacement"
    np.testing.assert_array_equal(w.data, disp)
    np.testing.assert_allclose(w.affine, v.affine, atol=1e-5)
    p2 = write_volume(Volume(disp, np.eye(4)), tmp_path / "vec.nii")
    assert int(nib.load(str(p2)).header["intent_code"]) == 1007
    assert read_volume(p2).meta["intent"] == "vector"
    assert read_volume(p2, frame=2).data.shape == (10, 11, 12)
    with pytest.raises(InputError, match="only be written as NIfTI"):
        write_volume(v, tmp_path / "disp.mha")
    assert not (tmp_path / "disp.mha").exists()


def test_4d_needs_frame(tmp_path):
    data = np.stack([np.full((9, 9, 9), t, np.float32) for t in range(4)], axis=-1)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "bold.nii.gz"))
    with pytest.raises(InputError, match=r"4D with 4 frames.*frame=N.*--frame N"):
        read_volume(tmp_path / "bold.nii.gz")
    assert read_volume(tmp_path / "bold.nii.gz", frame=2).data.max() == 2
    with pytest.raises(InputError, match="out of range"):
        read_volume(tmp_path / "bold.nii.gz", frame=4)
    nib.save(nib.Nifti1Image(data[..., :1], np.eye(4)), str(tmp_path / "one.nii.gz"))
    assert read_volume(tmp_path / "one.nii.gz").data.shape == (9, 9, 9)  # size-1 4th dim squeezed
    # multi-component ITK image
    comp = sitk.GetImageFromArray(np.zeros((9, 9, 9, 3), np.float32), isVector=True)
    sitk.WriteImage(comp, str(tmp_path / "rgb.mha"))
    with pytest.raises(InputError, match="frame=N"):
        read_volume(tmp_path / "rgb.mha")
    assert read_volume(tmp_path / "rgb.mha", frame=1).shape == (9, 9, 9)


def test_2d_images_rejected(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((20, 20), np.float32), np.eye(4)), str(tmp_path / "flat.nii"))
    with pytest.raises(InputError, match="2D"):
        read_volume(tmp_path / "flat.nii")
    nib.save(nib.Nifti1Image(np.ones((20, 20, 1), np.float32), np.eye(4)), str(tmp_path / "slice.nii.gz"))
    with pytest.raises(InputError, match="2D"):
        read_volume(tmp_path / "slice.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((20, 20), np.float32)), str(tmp_path / "flat.nrrd"))
    with pytest.raises(InputError, match="2D"):
        read_volume(tmp_path / "flat.nrrd")



def test_colour_and_complex_voxels_are_refused_by_name(tmp_path, recwarn):
    """An RGB NIfTI and a complex one get a clear refusal naming the file, not an internal error or a
    silently dropped imaginary part."""
    grey = (np.random.default_rng(0).random((6, 7, 8)) * 255).astype(np.uint8)
    rgb = np.zeros(grey.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    for c in "RGB":
        rgb[c] = grey
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), tmp_path / "rgb.nii.gz")
    nib.save(nib.Nifti1Image((grey + 1j * grey).astype(np.complex64), np.eye(4)), tmp_path / "iq.nii.gz")
    with pytest.raises(InputError, match=r"rgb.nii.gz is a colour \(RGB\) image .* needs a grey-scale scan"):
        read_volume(tmp_path / "rgb.nii.gz")
    with pytest.raises(InputError, match=r"iq.nii.gz holds complex-valued voxels; .* magnitude"):
        read_volume(tmp_path / "iq.nii.gz")
    assert not [w for w in recwarn if issubclass(w.category, np.exceptions.ComplexWarning)]

def test_missing_unknown_and_truncated_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_volume(tmp_path / "nothing.nii.gz")
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(InputError, match="unsupported file type"):
        read_volume(tmp_path / "a.png")
    v = marker_volume(np.eye(4), shape=(30, 30, 30))
    for ext in (".nii.gz", ".nii", ".mgz", ".nrrd", ".mha"):
        p = write_volume(v, tmp_path / f"full{ext}")
        blob = p.read_bytes()
        cut = tmp_path / f"cut{ext}"
        cut.write_bytes(blob[: len(blob) // 2])
        with pytest.raises(InputError, match="unreadable, corrupt or truncated"):
            read_volume(cut)
    (tmp_path / "garbage.nii.gz").write_bytes(gzip.compress(b"not an image at all" * 10))
    with pytest.raises(InputError, match="unreadable"):
        read_volume(tmp_path / "garbage.nii.gz")


def test_refuses_input_path_and_existing_files(tmp_path):
    v = marker_volume(np.eye(4))
    src = write_volume(v, tmp_path / "in.nii.gz")
    before = src.read_bytes()
    with pytest.raises(InputError, match="output path equals the input path"):
        write_volume(v.with_data(v.data * 0), tmp_path / "sub" / ".." / "in.nii.gz", forbid=[src])
    with pytest.raises(InputError, match="output path equals the input path"):
        write_volume(v, str(src), refuse=[str(src)])
    with pytest.raises(InputError, match="already exists"):
        write_volume(v, src, overwrite=False)
    assert src.read_bytes() == before
    (tmp_path / "dir.nii.gz").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        write_volume(v, tmp_path / "dir.nii.gz")


def test_failed_writes_leave_nothing_and_keep_old_file(tmp_path, monkeypatch):
    v = marker_volume(np.eye(4))
    target = write_volume(v, tmp_path / "out.nii.gz")
    before = target.read_bytes()

    def broken_stream(fh, pieces, **kw):  # NIfTI streaming writer: part of the file, then a failure
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writers, "write_gzip_stream", broken_stream)
    with pytest.raises(StorageError, match="out.nii.gz: the disk is full.*free some space"):
        write_volume(v.with_data(v.data + 1), target)
    assert target.read_bytes() == before and files_in(tmp_path) == ["out.nii.gz"]
    monkeypatch.undo()

    def broken_save(img, filename):  # nibabel (MGH): writes half a file, then fails (disk full, crash...)
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(StorageError, match="cannot write .*out.mgz: disk full"):
        write_volume(v, tmp_path / "out.mgz")
    assert files_in(tmp_path) == ["out.nii.gz"]
    monkeypatch.undo()

    def broken_sitk(*a, **k):
        raise RuntimeError("ITK writer failed")

    monkeypatch.setattr(sitk, "WriteImage", broken_sitk)
    with pytest.raises(StorageError, match="ITK writer failed"):
        write_volume(v, tmp_path / "out.nhdr")
    monkeypatch.undo()
    assert files_in(tmp_path) == ["out.nii.gz"]
    with pytest.raises(InputError, match="cannot write voxels"):
        write_volume(v.with_data(v.data.astype(np.complex64)), tmp_path / "c.nii.gz")
    with pytest.raises(InputError, match="do not fit in uint8"):
        write_volume(v, tmp_path / "u8.nii.gz", dtype=np.uint8)
    assert files_in(tmp_path) == ["out.nii.gz"]


def test_detached_headers_write_two_files(tmp_path):
    v = marker_volume(GEOMETRY_CASES["anisotropic"])
    write_volume(v, tmp_path / "a.nhdr")
    write_volume(v, tmp_path / "b.mhd")
    names = files_in(tmp_path)
    assert "a.nhdr" in names and "b.mhd" in names and len(names) == 4, names
    for n in ("a.nhdr", "b.mhd"):
        np.testing.assert_array_equal(read_volume(tmp_path / n).data, v.data)


def test_written_files_are_readable_by_others(tmp_path):
    v = marker_volume(GEOMETRY_CASES["left_handed"])
    p = write_volume(v, tmp_path / "x.nii.gz")
    assert os.stat(p).st_mode & 0o044 == 0o044  # not left private (0600) by the temp file
    img = nib.load(str(p))
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    np.testing.assert_allclose(img.get_qform(), v.affine, atol=1e-5)


def test_atomic_output_commits_only_on_success(tmp_path):
    from brainfm.io import atomic_output

    target = tmp_path / "new" / "deeper" / "table.csv"
    with atomic_output(target) as tmp:
        assert tmp.parent.parent == target.parent and tmp.name == "table.csv"
        tmp.write_text("a,b\n")
    assert target.read_text() == "a,b\n" and files_in(target.parent) == ["table.csv"]
    with pytest.raises(ZeroDivisionError):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            1 / 0
    assert target.read_text() == "a,b\n" and files_in(target.parent) == ["table.csv"]


def test_atomic_helpers_keep_modes_and_leave_nothing_on_failure(tmp_path):
    """fsync/mode for private files, keep_mode for a hard link (its mode belongs to the linked
    file), and atomic_folder: a failed folder write leaves the old folder as it was."""
    from brainfm.io.atomic import atomic_folder, atomic_output

    with atomic_output(tmp_path / "private.json", mode=0o600, fsync=True) as tmp:
        tmp.write_text("{}")
    assert os.stat(tmp_path / "private.json").st_mode & 0o777 == 0o600
    src = tmp_path / "weights.bin"
    src.write_bytes(b"w")
    os.chmod(src, 0o640)
    with atomic_output(tmp_path / "store" / "w.bin", keep_mode=True) as tmp:
        os.link(src, tmp)
    linked = tmp_path / "store" / "w.bin"
    assert linked.stat().st_ino == src.stat().st_ino and src.stat().st_mode & 0o777 == 0o640
    with atomic_folder(tmp_path / "ckpt") as tmp:
        (tmp / "a.txt").write_text("1")
    assert files_in(tmp_path / "ckpt") == ["a.txt"] and os.stat(tmp_path / "ckpt").st_mode & 0o700 == 0o700
    with pytest.raises(ZeroDivisionError):
        with atomic_folder(tmp_path / "ckpt") as tmp:
            (tmp / "b.txt").write_text("2")
            1 / 0
    assert files_in(tmp_path / "ckpt") == ["a.txt"]
    with atomic_folder(tmp_path / "ckpt") as tmp:
        (tmp / "b.txt").write_text("2")
    assert files_in(tmp_path / "ckpt") == ["b.txt"]
    assert files_in(tmp_path) == ["ckpt", "private.json", "store", "weights.bin"]


@pytest.mark.parametrize("case", sorted(GEOMETRY_CASES))
def test_sitk_bridge_round_trip_keeps_geometry(case):
    """Volume -> SimpleITK -> Volume keeps voxels, dtype and the affine (oblique and left-handed
    grids included), and ITK places every voxel where the RAS affine does (in LPS)."""
    from brainfm.io.sitk_bridge import from_sitk, sitk_array, to_sitk

    vol = marker_volume(GEOMETRY_CASES[case])
    lab = Volume(np.random.default_rng(3).integers(0, 60, vol.shape).astype(np.int16), vol.affine)
    for v in (vol, lab):
        img = to_sitk(v)
        back = from_sitk(img)
        assert back.data.dtype == v.data.dtype and back.data.flags.c_contiguous
        np.testing.assert_array_equal(back.data, v.data)
        np.testing.assert_allclose(back.affine, v.affine, rtol=0, atol=1e-9)
        assert back.is_left_handed == v.is_left_handed
        np.testing.assert_array_equal(sitk_array(img), v.data)
        for ijk in [(0, 0, 0), MARKER, tuple(n - 1 for n in v.shape)]:
            ras = v.affine[:3, :3] @ np.asarray(ijk, float) + v.affine[:3, 3]
            np.testing.assert_allclose(img.TransformIndexToPhysicalPoint([int(x) for x in ijk]), LPS @ ras,
                                       rtol=0, atol=1e-9)
    assert to_sitk(lab, dtype=np.float32).GetPixelID() == sitk.sitkFloat32
    shear = np.eye(4)
    shear[0, 1] = 0.3
    with pytest.raises(InputError, match="shear"):
        to_sitk(Volume(vol.data, shear))
    with pytest.raises(InputError, match="3D volume"):
        to_sitk(Volume(np.zeros((2, 2, 2, 3), np.float32), np.eye(4)))


@pytest.mark.parametrize("units", ["meter", "micron"])
def test_nifti_positions_in_metres_or_microns_are_refused(tmp_path, units):
    """ITK converts such units and nibabel does not: a run would place its results 1000 times off in
    one of them, so the file is refused by name, before its voxels are read."""
    img = nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.diag([0.002, 0.002, 0.002, 1.0]))
    img.header.set_xyzt_units(units)
    nib.save(img, tmp_path / "odd.nii.gz")
    with pytest.raises(InputError, match=rf"odd.nii.gz: its header gives positions in {units}s \(xyzt_units\)"):
        read_volume(tmp_path / "odd.nii.gz")
    img.header.set_xyzt_units("mm")
    nib.save(img, tmp_path / "mm.nii.gz")
    assert read_volume(tmp_path / "mm.nii.gz").spacing == pytest.approx((0.002,) * 3)


def test_a_detached_header_without_its_voxel_file_is_named(tmp_path):
    """A MetaImage .mhd (or NRRD .nhdr) whose .raw was not copied along: the missing file is named."""
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((8, 9, 10), np.float32)), str(tmp_path / "scan.mhd"))
    assert read_volume(tmp_path / "scan.mhd").shape == (10, 9, 8)
    raw = next(tmp_path.glob("scan.*raw"))
    raw.unlink()
    with pytest.raises(InputError, match=rf"scan.mhd: its voxels are in a separate file, {raw.name}, which is missing"):
        read_volume(tmp_path / "scan.mhd")
