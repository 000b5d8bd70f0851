"""brainfm.report: case folders re-read with exact geometry, atomicity, montage layout/orientation."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from brainfm.errors import CancelledError, InputError
from brainfm.inference.prediction import Prediction
from brainfm.io import read_volume, write_volume
from brainfm.labels import structure_volumes
from brainfm.progress import CancelToken
from brainfm.report import montage_size, save_prediction, write_montage
from brainfm.report.montage import CAPTION_H
from brainfm.volume import Volume
from fixtures import GEOMETRY_CASES, blob_head, label_head

SHAPE = (20, 24, 16)


def _prediction(affine: np.ndarray) -> tuple:
    img = blob_head(SHAPE, affine)
    lab = img.with_data(label_head(SHAPE))
    rng = np.random.default_rng(3)
    disp = img.with_data(rng.normal(0, 2, SHAPE + (3,)).astype(np.float32), intent="displacement")
    dist = img.with_data(np.clip(rng.normal(0, 1, SHAPE), -3, 3).astype(np.float32), units="mm")
    pred = Prediction(
        outputs={"synth_t1": img.with_data(img.data / img.data.max()), "seg": lab, "dist_lp": dist,
                 "reg_displacement": disp},
        tables={"seg_volumes": structure_volumes(lab, scheme="fs33")},
        metadata={"model": {"name": "tiny", "version": "0", "sha256": "ab" * 32}, "device": "cpu",
                  "precision": "fp32", "tiled": False, "timings": {"total": 0.5}, "warnings": ["w1"],
                  "network_affine": np.eye(4)},
    )
    return img, pred


@pytest.mark.parametrize("case", ["oblique", "lps_stored"])
def test_save_prediction_files_reread_with_input_geometry(tmp_path, case):
    img, pred = _prediction(GEOMETRY_CASES[case])
    src = write_volume(img, tmp_path / "in.nii.gz")
    out = tmp_path / "out" / "case1"
    summary = save_prediction(pred, out, input_volume=img, input_path=src)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["dist_lp.nii.gz", "montage.png", "reg_displacement.nii.gz", "seg.nii.gz",
                     "seg_volumes.csv", "summary.json", "synth_t1.nii.gz"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["case1"]  # no temp folders left
    for key, vol in pred.outputs.items():
        back = read_volume(out / f"{key}.nii.gz")
        assert np.allclose(back.affine, img.affine, atol=1e-5), key
        assert back.data.shape == vol.data.shape
        assert np.allclose(back.data, vol.data, atol=1e-6), key
    seg = read_volume(out / "seg.nii.gz")
    assert np.issubdtype(seg.data.dtype, np.integer) and np.array_equal(seg.data, pred["seg"].data)
    # world position of one voxel is preserved
    assert np.allclose(seg.world_of([3, 4, 5]), img.world_of([3, 4, 5]))
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["outputs"]["seg"] == {"path": "seg.nii.gz", "kind": "labelmap", "units": "FreeSurfer label",
                                         "shape": list(SHAPE)}
    assert on_disk["outputs"]["reg_displacement"]["kind"] == "vector"
    assert on_disk["outputs"]["dist_lp"]["units"] == "mm"
    assert on_disk["outputs"]["seg_volumes"]["kind"] == "table"
    assert on_disk["model"]["sha256"] == "ab" * 32 and on_disk["device"] == "cpu"
    assert on_disk["warnings"] == ["w1"] and on_disk["timings"] == {"total": 0.5}
    assert on_disk["input"]["path"] == str(src) and on_disk["input"]["shape"] == list(SHAPE)
    assert on_disk["metadata"]["network_affine"][0] == [1.0, 0.0, 0.0, 0.0]
    assert summary["folder"] == str(out) and on_disk["montage"] == "montage.png"
    assert all(Path(info["path"]).suffix in (".gz", ".csv") for info in on_disk["outputs"].values())
    with open(out / "seg_volumes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["value"]) for r in rows] == [r["value"] for r in pred.tables["seg_volumes"]]
    wm = next(r for r in rows if r["name"] == "Left-Cerebral-White-Matter")
    voxel = float(abs(np.linalg.det(img.affine[:3, :3])))
    assert float(wm["volume_mm3"]) == pytest.approx((label_head(SHAPE) == 2).sum() * voxel)
    assert on_disk["structure_volumes"][0]["name"] == "Left-Cerebral-White-Matter"


def test_existing_case_needs_overwrite_and_is_replaced_whole(tmp_path):
    img, pred = _prediction(np.eye(4))
    out = tmp_path / "case"
    save_prediction(pred, out, input_volume=img, png=False)
    (out / "stale.txt").write_text("old")
    with pytest.raises(InputError, match="already exists"):
        save_prediction(pred, out, input_volume=img, png=False)
    assert (out / "stale.txt").exists()
    save_prediction(pred, out, input_volume=img, png=False, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "summary.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case"]


def test_output_folder_may_not_be_or_contain_the_input(tmp_path):
    img, pred = _prediction(np.eye(4))
    src = write_volume(img, tmp_path / "scan.nii.gz")
    with pytest.raises(InputError, match="is the input path"):
        save_prediction(pred, src, input_volume=img, input_path=src)
    with pytest.raises(InputError, match="contains the input"):
        save_prediction(pred, tmp_path, input_volume=img, input_path=src, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.nii.gz"]


def test_cancel_midway_leaves_no_case_folder(tmp_path):
    img, pred = _prediction(np.eye(4))
    token = CancelToken()
    seen = []

    def progress(f, msg):
        seen.append(msg)
        if msg == "writing seg":
            token.cancel()

    with pytest.raises(CancelledError):
        save_prediction(pred, tmp_path / "case", input_volume=img, progress=progress, cancel=token)
    assert seen[:2] == ["writing synth_t1", "writing seg"]
    assert list(tmp_path.iterdir()) == []  # neither the case nor its temporary folder


@pytest.mark.parametrize("umask, folder, file", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640), (0o002, 0o775, 0o664)])
def test_case_folder_and_files_follow_the_umask(tmp_path, umask, folder, file):
    import os
    import stat

    img, pred = _prediction(np.eye(4))
    old = os.umask(umask)
    try:
        save_prediction(pred, tmp_path / "new" / "case", input_volume=img, png=True)
    finally:
        os.umask(old)
    case = tmp_path / "new" / "case"
    assert stat.S_IMODE(case.stat().st_mode) == folder  # not mkdtemp's private 0700
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == folder
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in case.iterdir()}
    assert set(modes) >= {"summary.json", "seg.nii.gz", "seg_volumes.csv", "montage.png"}
    assert set(modes.values()) == {file}, modes


def test_storage_failures_are_io_errors_and_leave_nothing(tmp_path, monkeypatch):
    import errno

    import brainfm.io.writers as writers
    from brainfm.errors import StorageError

    img, pred = _prediction(np.eye(4))

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writers, "_write_nifti", full)
    with pytest.raises(StorageError, match=r"cannot write .*/deep/case/synth_t1.nii.gz: the disk is full") as e:
        save_prediction(pred, tmp_path / "deep" / "case", input_volume=img)
    assert e.value.exit_code == 5 and ".partial" not in str(e.value)
    assert list(tmp_path.iterdir()) == []  # no case folder, no temporary folder, no parent left empty
    monkeypatch.undo()

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("tempfile.mkdtemp", read_only)
    with pytest.raises(StorageError, match="read-only file system"):
        save_prediction(pred, tmp_path / "case", input_volume=img)
    assert list(tmp_path.iterdir()) == []


def test_montage_rows_size_and_content(tmp_path):
    img, pred = _prediction(GEOMETRY_CASES["anisotropic"])
    outputs = dict(pred.outputs)
    outputs["features"] = img.with_data(np.zeros(SHAPE + (8,), np.float32))  # multichannel: skipped
    path = write_montage(img, outputs, tmp_path / "m.png", title="t", cell=64)
    im = np.asarray(Image.open(path).convert("RGB")).astype(float)
    n_rows = 1 + 4
    assert (im.shape[1], im.shape[0]) == montage_size(n_rows, cell=64, title=True)
    top = 18
    for r in range(n_rows):
        y0 = top + r * (CAPTION_H + 64) + CAPTION_H
        for view in range(3):
            cell = im[y0:y0 + 64, view * 64:(view + 1) * 64]
            assert cell.std() > 5, f"row {r} view {view} is blank"
    seg_row = im[top + 2 * (CAPTION_H + 64) + CAPTION_H:top + 3 * (CAPTION_H + 64), :64]  # input, synth_t1, seg
    colourful = np.abs(seg_row[..., 0] - seg_row[..., 1]) > 40  # cortex colour (205, 62, 78) over grey
    assert colourful.sum() > 20


@pytest.mark.parametrize("case", ["ras", "lps_stored", "left_handed", "anisotropic"])
def test_montage_is_anatomically_oriented_whatever_the_storage(tmp_path, case):
    """Cubes at the subject's left-anterior (axial), left-superior (coronal) and
    anterior-superior (sagittal) of the centre must appear left/up, left/up and right/up."""
    aff = GEOMETRY_CASES[case]
    vol = Volume(np.zeros((40, 48, 36), np.float32), aff)
    data = np.full(vol.shape, 50.0, np.float32)
    centre = vol.world_of((np.array(vol.shape) - 1) / 2.0)
    for offset in ([-10.0, 12.0, 0.0], [-10.0, 0.0, 9.0], [0.0, 12.0, 9.0]):
        c = np.rint(vol.voxel_of(centre + np.array(offset))).astype(int)
        data[tuple(slice(x - 2, x + 3) for x in c)] = 100.0
    cell = 96
    path = write_montage(vol.with_data(data), {}, tmp_path / "o.png", cell=cell)
    im = np.asarray(Image.open(path).convert("L")).astype(float)[CAPTION_H:CAPTION_H + cell]

    def offset_from_centre(view):
        a = im[:, view * cell:(view + 1) * cell].copy()
        a[:, :12] = 0
        a[:, -12:] = 0  # ignore the orientation letters
        ys, xs = np.nonzero(a > 200)
        assert xs.size > 0, f"view {view}: cube not visible"
        return xs.mean() - cell / 2, ys.mean() - cell / 2

    ax, co, sa = (offset_from_centre(v) for v in range(3))
    assert ax[0] < -3 and ax[1] < -3, f"axial: left should be left, anterior up; got {ax}"
    assert co[0] < -3 and co[1] < -3, f"coronal: left should be left, superior up; got {co}"
    assert sa[0] > 3 and sa[1] < -3, f"sagittal: anterior should be right, superior up; got {sa}"


def test_montage_grey_scale_is_the_heads_and_a_ct_gets_the_brain_window(tmp_path):
    """Three tissues side by side in a masked background (60 % of the volume): the middle one is mid-grey,
    as the window spans the tissues, not the background; a CT in HU is drawn in the brain window 0..80 HU
    (its air at -1000 HU would otherwise push 40 HU to near white)."""
    cell = 96
    tissue = np.zeros((40, 40, 40), np.float32)
    for n, value in enumerate((0.2, 0.3, 0.4)):
        tissue[8 + 8 * n:16 + 8 * n, 8:32, 8:32] = value
    vol = Volume(tissue, np.eye(4))
    ct = Volume(np.where(tissue > 0, (tissue - 0.2) * 400.0, -1000.0).astype(np.float32), np.eye(4),
                {"units": "HU"})  # 0, 40 and 80 HU
    path = write_montage(vol, {"synth_ct": ct}, tmp_path / "w.png", cell=cell)
    im = np.asarray(Image.open(path).convert("L")).astype(float)
    for row in range(2):
        y0 = row * (CAPTION_H + cell) + CAPTION_H
        centre = im[y0 + cell // 2 - 2:y0 + cell // 2 + 3, cell // 2 - 2:cell // 2 + 3]  # the axial view's middle
        assert abs(centre.mean() - 127.5) < 20, (row, centre.mean())


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL and the liveness check are POSIX")
def test_a_case_writer_killed_outright_leaves_a_partial_folder_the_next_one_removes(tmp_path):
    """SIGKILL gives no chance to clean up: the next writer of the same case removes what was left; the
    partial folder of a live writer of another case stays."""
    import signal
    import subprocess
    import sys

    from brainfm.report import CaseWriter

    code = ("import os, signal, sys, numpy as np\n"
            "from brainfm.report import CaseWriter\nfrom brainfm.volume import Volume\n"
            "w = CaseWriter(sys.argv[1], input_volume=Volume(np.zeros((4, 4, 4), np.float32), np.eye(4)), png=False)\n"
            "w.add('synth_t1', Volume(np.ones((4, 4, 4), np.float32), np.eye(4)))\n"
            "print(w.tmp, flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "case")], capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL
    left = Path(done.stdout.strip())
    assert left.is_dir() and left.parent == tmp_path and (left / "synth_t1.nii.gz").is_file()
    img = Volume(np.zeros((4, 4, 4), np.float32), np.eye(4))
    with CaseWriter(tmp_path / "other", input_volume=img, png=False) as live:   # another case: untouched
        with CaseWriter(tmp_path / "case", input_volume=img, png=False) as w:
            assert not left.exists() and live.tmp.is_dir()
            w.finish(None)
        live.finish(None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case", "other"]
