"""``brainfm run`` checks every input's header before the model is loaded: a file its header already
shows to be unusable fails at once, with the very message its full read gives (the same functions
make it), the good files of the batch still run, and a batch of bad files never loads the model.
Nothing here may refuse a file the full read accepts."""
from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from brainfm.cli import main
from brainfm.cli.inputs import InputCase
from brainfm.errors import InputError
from brainfm.io import read_volume, write_volume
from brainfm.io.readers import read_header
from brainfm.io.validate import check_image_header
from brainfm.volume import Volume
from cli_fixtures import _private_cache, model  # noqa: F401 - shared fixtures
from file_fixtures import write_raw_nifti
from fixtures import GEOMETRY_CASES, affine, blob_head, rotation

SHAPE = (20, 22, 18)
Q = affine((1.1, 0.9, 1.2), rot=rotation(2, 12), origin=(-15.0, -14.0, -12.0))


def _image(shape=SHAPE) -> np.ndarray:
    return blob_head(shape, seed=4).data


def _save(path: Path, data: np.ndarray, aff: np.ndarray) -> Path:
    klass = nib.MGHImage if path.name.endswith((".mgz", ".mgh")) else nib.Nifti1Image
    nib.save(klass(data, aff), str(path))
    return path


def _write(path: Path, blob: bytes) -> Path:
    path.write_bytes(blob)
    return path


def _sitk_write(path: Path, array: np.ndarray, *, spacing=None, is_vector: bool = False) -> Path:
    """``array`` in ITK's numpy order ([t,] z, y, x [, c]) written with SimpleITK."""
    img = sitk.GetImageFromArray(array, isVector=is_vector)
    if spacing is not None:
        img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))
    return path


def _nrrd_with_directions(path: Path, directions: str) -> Path:
    """A NRRD whose ``space directions`` are written as given (ITK reads the header; it refuses the voxels)."""
    head = ("NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\nsizes: 10 10 10\n"
            f"space directions: {directions}\nkinds: domain domain domain\nendian: little\nencoding: raw\n"
            "space origin: (0,0,0)\n\n")
    path.write_bytes(head.encode() + np.ones(1000, np.float32).tobytes())
    return path


def _rgb(path: Path) -> Path:
    grey = (_image() * 2).astype(np.uint8)
    rgb = np.zeros(grey.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    for c in "RGB":
        rgb[c] = grey
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(path))
    return path


def _units(path: Path, units: str) -> Path:
    img = nib.Nifti1Image(_image(), np.diag([0.001, 0.001, 0.001, 1.0]))
    img.header.set_xyzt_units(units)
    nib.save(img, str(path))
    return path


def _missing_raw(path: Path) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(_image().transpose(2, 1, 0).copy()), str(path))
    next(path.parent.glob(path.stem + ".*raw")).unlink()
    return path


#: name -> (make the file in a folder, options of the read: frame, allow_anisotropic)
BAD: Dict[str, Tuple[Callable[[Path], Path], Dict[str, Any]]] = {
    "2d_nifti": (lambda d: _save(d / "flat.nii.gz", np.ones((20, 20), np.float32), np.eye(4)), {}),
    "one_slice_nifti": (lambda d: _save(d / "slice.nii", np.ones((20, 20, 1), np.float32), np.eye(4)), {}),
    "4d_without_frame": (lambda d: _save(d / "bold.nii.gz", np.ones(SHAPE + (5,), np.float32), np.eye(4)), {}),
    "frame_out_of_range": (lambda d: _save(d / "bold.nii.gz", np.ones(SHAPE + (5,), np.float32), np.eye(4)),
                           {"frame": 7}),
    "frame_of_a_3d_file": (lambda d: _save(d / "t1.nii.gz", _image(), np.eye(4)), {"frame": 2}),
    "mgz_frames": (lambda d: _save(d / "frames.mgz", np.ones(SHAPE + (3,), np.float32), np.eye(4)), {}),
    "mgz_one_slice": (lambda d: _save(d / "slice.mgz", np.ones((20, 20, 1), np.float32), np.eye(4)), {}),
    "pixdim_zero": (lambda d: write_raw_nifti(d / "zero.nii.gz", _image(), qform=Q, qcode=1, pixdim=(1.1, 0.0, 1.2)),
                    {}),
    "singular_sform": (lambda d: write_raw_nifti(d / "sing.nii", _image(), qform=Q, qcode=1,
                                                 sform=Q @ np.diag([1.0, 1.0, 0.0, 1.0]), scode=1), {}),
    "nan_sform": (lambda d: write_raw_nifti(d / "nan.nii.gz", _image(), sform=np.full((4, 4), np.nan), scode=1), {}),
    "units_metres": (lambda d: _units(d / "metres.nii.gz", "meter"), {}),
    "units_microns": (lambda d: _units(d / "microns.nii", "micron"), {}),
    "rgb_nifti": (_rgb, {}),
    "complex_nifti": (lambda d: _save(d / "iq.nii.gz", (_image() + 1j).astype(np.complex64), np.eye(4)), {}),
    "vector_nifti": (lambda d: write_volume(Volume(np.ones(SHAPE + (3,), np.float32), np.eye(4)), d / "disp.nii.gz"),
                     {}),
    "not_an_image_nii": (lambda d: _write(d / "notes.nii.gz", gzip.compress(b"not an image at all" * 10)), {}),
    "thick_slices": (lambda d: _save(d / "thick.nii.gz", _image((40, 40, 12)), np.diag([0.5, 0.5, 12.0, 1.0])), {}),
    "voxels_in_other_units": (lambda d: _save(d / "cm.nii.gz", _image(), np.diag([20.0, 20.0, 20.0, 1.0])), {}),
    "too_small": (lambda d: _save(d / "tiny.nii.gz", _image((6, 22, 18)), np.eye(4)), {}),
    "mhd_without_raw": (lambda d: _missing_raw(d / "scan.mhd"), {}),
    "nhdr_without_raw": (lambda d: _missing_raw(d / "scan.nhdr"), {}),
    "2d_nrrd": (lambda d: _sitk_write(d / "flat.nrrd", np.ones((20, 20), np.float32)), {}),
    "complex_nrrd": (lambda d: _sitk_write(d / "iq.nrrd", (np.ones((8, 9, 10)) + 1j).astype(np.complex64)), {}),
    "vector_mha": (lambda d: _sitk_write(d / "rgb.mha", np.ones((9, 9, 9, 3), np.uint8), is_vector=True), {}),
    "4d_vector_nrrd": (lambda d: _sitk_write(d / "v4.nrrd", np.ones((2, 9, 9, 9, 3), np.float32), is_vector=True), {}),
    "thick_mha": (lambda d: _sitk_write(d / "thick.mha", _image((12, 40, 40)), spacing=(0.5, 0.5, 12.0)), {}),
    "zero_spacing_nrrd": (lambda d: _nrrd_with_directions(d / "zero.nrrd", "(1,0,0) (0,0,0) (0,0,1)"), {}),
    "degenerate_axes_nrrd": (lambda d: _nrrd_with_directions(d / "degen.nrrd", "(1,0,0) (1,0,0) (0,0,1)"), {}),
}


def _full_read_error(path: Path, *, frame=None, allow_anisotropic: bool = False) -> str:
    """The message of the full read: the case read as ``brainfm run`` reads it, then prepared for the network."""
    from brainfm.inference.preprocess import prepare

    with pytest.raises(InputError) as full:
        prepare(InputCase(path).read(frame=frame), allow_anisotropic=allow_anisotropic)
    return str(full.value)


@pytest.mark.parametrize("kind", list(BAD))
def test_the_header_check_refuses_with_the_message_of_the_full_read(tmp_path, kind):
    make, options = BAD[kind]
    path = make(tmp_path)
    expected = _full_read_error(path, **options)
    with pytest.raises(InputError) as early:
        check_image_header(path, **options)
    assert str(early.value) == expected
    assert path.name in expected or "channels per voxel" in expected  # brainfm run names the file in front of those


GOOD = {
    **{f"{case}{ext}": (case, ext) for case in GEOMETRY_CASES for ext in (".nii.gz", ".mgz", ".nrrd", ".mha")},
    "plain.nii": ("ras", ".nii"), "detached.mhd": ("oblique", ".mhd"), "detached.nhdr": ("lps_stored", ".nhdr"),
    "ras.mgh": ("ras", ".mgh"),
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_the_header_check_accepts_what_the_full_read_accepts_and_tells_its_grid(tmp_path, name):
    case, ext = GOOD[name]
    path = write_volume(blob_head(SHAPE, GEOMETRY_CASES[case], seed=1), tmp_path / f"scan{ext}")
    check_image_header(path)
    header, volume = read_header(path), read_volume(path)
    assert header.shape == volume.data.shape
    np.testing.assert_allclose(header.affine, volume.affine, atol=1e-6)
    assert header.spacing == pytest.approx(volume.spacing)
    assert header.meta["source_path"] == volume.meta["source_path"]


@pytest.mark.parametrize("kind", ["frame", "vector_frame", "thick_allowed", "negative_pixdim", "qform_sform_disagree",
                                  "no_transform", "scaled_int16", "size_one_4th_axis"])
def test_unusual_files_the_full_read_accepts_pass_the_header_check(tmp_path, kind):
    """Headers that look odd but are read: never refused early."""
    data, options = _image(), {}
    if kind == "frame":
        path, options = _save(tmp_path / "bold.nii.gz", np.stack([data] * 4, axis=-1), np.eye(4)), {"frame": 3}
    elif kind == "vector_frame":
        path, options = write_volume(Volume(np.stack([data] * 3, axis=-1), np.eye(4)), tmp_path / "d.nii.gz"), {"frame": 1}
    elif kind == "thick_allowed":
        path = _save(tmp_path / "thick.nii.gz", _image((40, 40, 12)), np.diag([0.5, 0.5, 12.0, 1.0]))
        options = {"allow_anisotropic": True}
    elif kind == "negative_pixdim":
        path = write_raw_nifti(tmp_path / "neg.nii.gz", data, qform=Q, qcode=1, pixdim=(1.1, -0.9, 1.2))
    elif kind == "qform_sform_disagree":
        s = Q.copy()
        s[:3, 3] += [50.0, 0.0, 0.0]
        path = write_raw_nifti(tmp_path / "two.nii.gz", data, qform=Q, qcode=1, sform=s, scode=1)
    elif kind == "no_transform":
        path = write_raw_nifti(tmp_path / "none.nii", data)
    elif kind == "scaled_int16":
        path = write_raw_nifti(tmp_path / "ct.nii.gz", np.round(data * 10) - 1024.0, qform=Q, qcode=1, slope=1.0,
                               inter=-1024.0, dtype=np.int16)
    else:
        path = _save(tmp_path / "one.nii.gz", data[..., None], np.eye(4))
    check_image_header(path, **options)
    volume = read_volume(path, frame=options.get("frame"))
    assert read_header(path, frame=options.get("frame")).shape == volume.data.shape


@pytest.mark.parametrize("ext", [".nii", ".nii.gz", ".mgz", ".mgh", ".nrrd", ".mha"])
def test_the_header_check_reads_no_voxels(tmp_path, ext):
    """A file damaged in its voxels (cut short; a ``.mgz`` scrambled in the middle, which nibabel's
    load decompresses to reach the footer that follows the voxels) passes the header check (only
    reading the voxels can tell; the full read refuses it by name) and gives its grid: the check
    never reads the voxels."""
    whole = write_volume(blob_head(SHAPE, GEOMETRY_CASES["oblique"], seed=1), tmp_path / f"whole{ext}")
    blob = whole.read_bytes()
    half = len(blob) // 2
    if ext == ".mgz":
        blob = blob[:half] + bytes(b ^ 0xFF for b in blob[half:half + 64]) + blob[half + 64:]
    else:
        blob = blob[: len(blob) - 4000]
    cut = _write(tmp_path / f"cut{ext}", blob)
    check_image_header(cut)
    assert read_header(cut).shape == SHAPE
    with pytest.raises(InputError, match="cut.* the file is unreadable, corrupt or truncated"):
        read_volume(cut)


def test_dicom_passes_the_header_check_but_for_a_frame(tmp_path):
    from file_fixtures import write_dicom_series

    from brainfm.cli.inputs import collect_inputs

    write_dicom_series(tmp_path / "dicom", np.round(_image((16, 18, 10)) * 10).astype(np.int16), Q)
    (case,), _skipped, _folders = collect_inputs([tmp_path / "dicom"])
    case.check_header()
    with pytest.raises(InputError) as early:
        case.check_header(frame=1)
    with pytest.raises(InputError) as full:
        case.read(frame=1)
    assert str(early.value) == str(full.value) == f"--frame 1: DICOM series {case.name} is a single 3D volume"


# -- brainfm run ---------------------------------------------------------------------------------------
def _run(argv, capsys):
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _bad_folder(folder: Path) -> Dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return {"flat": BAD["2d_nifti"][0](folder), "metres": BAD["units_metres"][0](folder),
            "scan": BAD["mhd_without_raw"][0](folder)}


def test_a_bad_file_fails_before_the_model_loads_and_the_good_one_still_runs(tmp_path, model, capsys, monkeypatch):
    folder = tmp_path / "in"
    good = write_volume(blob_head((28, 32, 24), GEOMETRY_CASES["oblique"], seed=1), folder / "a.nii.gz")
    bad = BAD["4d_without_frame"][0](folder)
    expected = f"bold.nii.gz is 4D with 5 frames/channels (shape {SHAPE + (5,)}); BrainFM needs one 3D volume"
    read = []
    real_read = InputCase.read
    monkeypatch.setattr(InputCase, "read", lambda self, **kw: read.append(self.name) or real_read(self, **kw))
    out = tmp_path / "out"
    code, stdout, err = _run(["run", folder, "-o", out, "--model", model, "--device", "cpu", "--tasks", "t1",
                              "--progress", "machine", "--no-png"], capsys)
    assert code == 2, err
    lines = stdout.splitlines()
    error = next(i for i, line in enumerate(lines) if line.startswith("BRAINFM_ERROR "))
    loading = next(i for i, line in enumerate(lines) if "loading the model" in line)
    assert error < loading  # refused before the model was loaded...
    assert read == ["a"]    # ...and never read
    payload = json.loads(lines[error][len("BRAINFM_ERROR "):])
    assert payload["type"] == "InputError" and payload["exit_code"] == 2 and payload["message"].startswith(expected)
    run = json.loads((out / "run_summary.json").read_text())
    cases = {c["case"]: c for c in run["cases"]}
    assert cases["a"]["status"] == "done" and cases["a"]["input"] == str(good)
    assert cases["bold"] == {"case": "bold", "input": str(bad), "status": "failed",
                             "error": {"type": "InputError", "message": payload["message"], "exit_code": 2}}
    assert run["counts"] == {"done": 1, "skipped": 0, "failed": 1, "cancelled": 0}
    assert sorted(p.name for p in out.iterdir()) == ["a", "run_summary.json"]
    assert f"brainfm: error: {expected}" in err


def test_a_batch_of_bad_files_never_loads_the_model(tmp_path, capsys, monkeypatch):
    import brainfm.cli.run as run_mod

    loads = []
    monkeypatch.setattr(run_mod, "make_predictor", lambda *a, **k: loads.append(a) or pytest.fail("model loaded"))
    bad = _bad_folder(tmp_path / "in")
    out = tmp_path / "out"
    code, _stdout, err = _run(["run", tmp_path / "in", "-o", out, "--device", "cpu", "--progress", "none"], capsys)
    assert code == InputError.exit_code == 2 and loads == []
    for path in bad.values():
        expected = _full_read_error(path)
        assert f"brainfm: error: {expected}" in err and path.name in expected
    assert err.rstrip().endswith("0 done, 0 skipped, 3 failed -> nothing written (the errors are above)")
    assert not out.exists()  # nothing written, no empty output folder
    assert "Traceback" not in err and "internal error" not in err


def test_too_thick_slices_fail_early_unless_allowed(tmp_path, capsys, monkeypatch):
    """``--allow-anisotropic`` reaches the header check: without it the file is refused before the model
    loads; with it the case goes on to the model."""
    import brainfm.cli.run as run_mod
    from brainfm.errors import CheckpointError

    loads = []

    def make_predictor(*a, **k):
        loads.append(a)
        raise CheckpointError("this test loads no model")

    monkeypatch.setattr(run_mod, "make_predictor", make_predictor)
    path = BAD["thick_slices"][0](tmp_path)
    argv = ["run", path, "-o", tmp_path / "out", "--device", "cpu", "--progress", "none"]
    code, _stdout, err = _run(argv, capsys)
    assert code == 2 and f"brainfm: error: {_full_read_error(path)}" in err and loads == []
    code, _stdout, err = _run(argv + ["--allow-anisotropic"], capsys)
    assert code == 3 and "this test loads no model" in err and len(loads) == 1


def test_the_room_check_counts_voxels_from_headers(tmp_path):
    """``preflight`` sizes each case's outputs from its header (a damaged ``.mgz`` too: nothing is
    decompressed), frame ``--frame`` of a 4D file, and leaves out what its header refuses."""
    from brainfm.cli.inputs import input_voxels

    whole = write_volume(blob_head(SHAPE, GEOMETRY_CASES["oblique"], seed=1), tmp_path / "whole.mgz")
    blob = whole.read_bytes()
    half = len(blob) // 2
    cut = _write(tmp_path / "cut.mgz", blob[:half] + bytes(b ^ 0xFF for b in blob[half:half + 64]) + blob[half + 64:])
    assert input_voxels(InputCase(cut)) == int(np.prod(SHAPE))
    bold = tmp_path / "bold.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 11, 12, 3), np.float32), np.eye(4)), str(bold))
    assert input_voxels(InputCase(bold), frame=1) == 10 * 11 * 12
    assert input_voxels(InputCase(bold)) is None   # refused without --frame: its case fails, unsized
