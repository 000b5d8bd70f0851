"""``brainfm run`` on folders: supported images processed, foreign files skipped and listed, DICOM
series read as volumes (GDCM series reader), multi-frame / broken DICOM refused with advice."""
from __future__ import annotations

import json

import numpy as np
import pytest

from brainfm.cli import main
from brainfm.cli.inputs import collect_inputs
from brainfm.errors import InputError
from brainfm.io import read_volume, write_volume
from brainfm.io.dicom import find_series, read_dicom_file
from file_fixtures import sha256, write_dicom_series, write_multiframe_dicom
from fixtures import affine, blob_head, rotation

ckpt_factory = pytest.importorskip("ckpt_factory")

DICOM_AFFINE = affine((0.9, 0.8, 2.0), rot=rotation(0, 10), origin=(-12.0, -14.0, -20.0))
SHAPE = (24, 28, 12)


from cli_fixtures import _private_cache, model  # noqa: E402,F401 - shared fixtures


def head_int(seed=0):
    return np.round(blob_head(SHAPE, seed=seed).data * 10).astype(np.int16)


def _run(capsys, argv):
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_dicom_series_reads_as_one_volume_with_its_geometry(tmp_path):
    data = head_int()
    files = write_dicom_series(tmp_path / "dcm", data, DICOM_AFFINE)
    [series] = find_series(tmp_path / "dcm")
    assert series.name == "3_T1_MPRAGE" and len(series.files) == SHAPE[2]
    v = read_dicom_file(files[5])  # one file stands for its whole series
    assert v.shape == SHAPE and v.meta["source_format"] == "dicom" and v.meta["n_files"] == SHAPE[2]
    np.testing.assert_array_equal(v.data, data)
    np.testing.assert_allclose(v.affine, DICOM_AFFINE, atol=1e-4)
    assert read_volume(files[0]).same_grid(v)  # read_volume on a .dcm file: the same


def test_folder_with_sidecars_text_hidden_and_two_dicom_series(tmp_path, model, capsys):
    d = tmp_path / "in"
    write_volume(blob_head((28, 32, 24), affine((1, 1, 1)), seed=1), d / "sub-01_T1w.nii.gz")
    (d / "sub-01_T1w.json").write_text('{"RepetitionTime": 2.3}')
    (d / "notes.txt").write_text("scanned on Monday")
    (d / ".DS_Store").write_bytes(b"\0\1")
    write_dicom_series(d, head_int(1), DICOM_AFFINE, description="t1 sag", number=3,
                       uid="1.2.826.0.1.3680043.2.1125.77.3", prefix="A", extension=".dcm")
    write_dicom_series(d, head_int(2), DICOM_AFFINE, description="FLAIR ax", number=7,
                       uid="1.2.826.0.1.3680043.2.1125.77.7", prefix="B")
    digests = {p.name: sha256(p) for p in d.iterdir()}
    cases, skipped, folders = collect_inputs([str(d)])
    assert [c.name for c in cases] == ["sub-01_T1w", "3_t1_sag", "7_FLAIR_ax"]
    reasons = {s["path"].split("/")[-1]: s["reason"] for s in skipped}
    assert reasons == {".DS_Store": "hidden file", "notes.txt": "text file (not an image)",
                       "sub-01_T1w.json": "BIDS sidecar (metadata, not an image)"}
    out = tmp_path / "out"
    code, _, err = _run(capsys, ["run", str(d), "-o", str(out), "--model", str(model), "--device", "cpu",
                                 "--tasks", "t1", "--progress", "none", "--no-png"])
    assert code == 0, err
    assert "brainfm: skipped" in err and "notes.txt: text file (not an image)" in err
    run = json.loads((out / "run_summary.json").read_text())
    assert [(c["case"], c["status"]) for c in run["cases"]] == [
        ("sub-01_T1w", "done"), ("3_t1_sag", "done"), ("7_FLAIR_ax", "done")]
    assert run["cases"][2]["dicom_series"] == "7_FLAIR_ax" and run["cases"][2]["n_files"] == SHAPE[2]
    assert {s["reason"] for s in run["skipped_files"]} == set(reasons.values())
    t1 = read_volume(out / "7_FLAIR_ax" / "synth_t1.nii.gz")
    assert t1.shape == SHAPE and np.allclose(t1.affine, DICOM_AFFINE, atol=1e-4)
    assert {p.name: sha256(p) for p in d.iterdir()} == digests  # inputs untouched


def test_multiframe_unreadable_and_uneven_dicom_get_specific_messages(tmp_path, model, capsys):
    mf = write_multiframe_dicom(tmp_path / "mf" / "enhanced.dcm", head_int())
    with pytest.raises(InputError, match="multi-frame DICOM.*dcm2niix.*DICOM module"):
        read_dicom_file(mf)
    junk = tmp_path / "junk" / "scan.dcm"
    junk.parent.mkdir()
    junk.write_bytes(b"not a dicom file at all" * 40)
    with pytest.raises(InputError, match="scan.dcm.*dcm2niix"):
        read_dicom_file(junk)
    missing = [k if k < 6 else k + 1 for k in range(SHAPE[2])]  # slice 6 is missing
    write_dicom_series(tmp_path / "uneven", head_int(), DICOM_AFFINE, slice_positions=missing)
    with pytest.raises(InputError, match="not evenly spaced.*dcm2niix"):
        read_dicom_file(sorted((tmp_path / "uneven").iterdir())[0])
    # in a batch: the multi-frame case fails with its message, the good case still runs
    good = tmp_path / "good.nii.gz"
    write_volume(blob_head((28, 32, 24), seed=4), good)
    out = tmp_path / "out"
    code, _, err = _run(capsys, ["run", str(mf), str(good), "-o", str(out), "--model", str(model), "--device", "cpu",
                                 "--tasks", "t1", "--progress", "none", "--no-png"])
    assert code == 2 and "multi-frame DICOM" in err
    run = json.loads((out / "run_summary.json").read_text())
    assert [c["status"] for c in run["cases"]] == ["failed", "done"]
    assert run["cases"][0]["error"]["type"] == "InputError" and "enhanced.dcm" in run["cases"][0]["error"]["message"]
