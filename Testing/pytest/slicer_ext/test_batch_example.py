"""``BrainFMSlicer/batch_example.py`` on slicer-core: arguments, exit codes and a real folder run.

``slicer.util.loadVolume`` needs the Slicer application; the end-to-end test replaces it with the
storage-node reader of BrainFMSceneLib. Everything else is real: the module logic, the ``brainfm run``
child process (tiny random-weight model, CPU) and the atomic writes of the result files.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core wheel not installed")

import slicer_app_stubs  # noqa: E402

slicer_app_stubs.install()

from fixtures import GEOMETRY_CASES, blob_head  # noqa: E402


def _load_batch_example():
    import importlib.util

    path = slicer_app_stubs.REPO / "BrainFMSlicer" / "batch_example.py"
    spec = importlib.util.spec_from_file_location("batch_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


batch_example = _load_batch_example()


def test_scan_stems_and_extensions():
    assert batch_example.scanStem(Path("sub-01_T1w.nii.gz")) == "sub-01_T1w"
    assert batch_example.scanStem(Path("a.b.mgz")) == "a.b"
    assert batch_example.scanStem(Path("notes.txt")) is None
    assert batch_example.scanStem(Path("scan.NRRD")) == "scan"


def test_bad_arguments_and_missing_application(tmp_path, capsys):
    assert batch_example.main(["--task", "segmentation"]) == 2  # missing folders
    assert batch_example.main(["--input-dir", str(tmp_path), "--output-dir", str(tmp_path / "o"),
                               "--task", "nonsense"]) == 2
    # slicer-core has no slicer.app: the script says how to run it instead of failing later
    assert batch_example.main(["--input-dir", str(tmp_path), "--output-dir", str(tmp_path / "o"),
                               "--task", "segmentation"]) == 2
    assert "Slicer" in capsys.readouterr().out


@pytest.mark.slow
def test_folder_run_saves_outputs_and_reports_failures(tmp_path, monkeypatch, scene, capsys):
    torch = pytest.importorskip("torch")
    from brainfm.models import BrainFMNet, ModelConfig, save_native
    from BrainFMSceneLib.volume_files import import_volume_file

    torch.manual_seed(0)
    net = BrainFMNet(ModelConfig(f_maps=4, num_levels=3, num_groups=2, heads={"segmentation": 33}))
    weights, _ = save_native(net, tmp_path / "model" / "tiny.safetensors", info={"name": "tiny", "version": "0"})
    scans, out = tmp_path / "scans", tmp_path / "out"
    scans.mkdir()
    vol = blob_head((22, 26, 20), GEOMETRY_CASES["lps_stored"])
    nib.save(nib.Nifti1Image(vol.data, vol.affine), str(scans / "good.nii.gz"))
    (scans / "broken.nii.gz").write_bytes(b"not a nifti file")
    (scans / "readme.txt").write_text("ignored")
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in scans.iterdir()}

    def load_volume(path):
        return import_volume_file(slicer.mrmlScene, path, name=batch_example.scanStem(Path(path)))

    monkeypatch.setattr(slicer.util, "loadVolume", load_volume)
    monkeypatch.setattr(slicer, "app", object(), raising=False)
    code = batch_example.main(["--input-dir", str(scans), "--output-dir", str(out), "--task", "segmentation",
                               "--device", "cpu", "--model", str(weights)])
    text = capsys.readouterr().out
    assert code == 1, text  # one scan failed
    assert "broken.nii.gz: FAILED" in text and "1 of 2 scans processed" in text
    files = sorted(p.name for p in out.iterdir())
    assert files == ["good_outputSegmentation.seg.nrrd"], files  # no temporary or partial files
    header = (out / "good_outputSegmentation.seg.nrrd").read_bytes()[:4000]
    assert b"Segment0_Name" in header
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in scans.iterdir()} == digests
    # second run: existing results are skipped, nothing rewritten
    mtime = (out / "good_outputSegmentation.seg.nrrd").stat().st_mtime_ns
    batch_example.main(["--input-dir", str(scans), "--output-dir", str(out), "--task", "segmentation",
                        "--device", "cpu", "--model", str(weights)])
    assert "results exist, skipped" in capsys.readouterr().out
    assert (out / "good_outputSegmentation.seg.nrrd").stat().st_mtime_ns == mtime
