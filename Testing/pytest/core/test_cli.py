"""The ``brainfm`` command end to end on a small generated scan with a tiny random-weight model."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from brainfm.cli import main
from brainfm.cli.progress import parse_progress_line
from brainfm.io import read_volume, write_volume
from brainfm.labels import get_scheme
from fixtures import GEOMETRY_CASES, blob_head

ckpt_factory = pytest.importorskip("ckpt_factory")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINFM_HOME", str(tmp_path / "cache"))
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "BRAINFM_ATLAS"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    _net, weights, _json = ckpt_factory.write_native(d / "tiny", heads={"T1": 1, "segmentation": 33})
    return weights


@pytest.fixture()
def scans(tmp_path):
    d = tmp_path / "in"
    write_volume(blob_head((28, 32, 24), GEOMETRY_CASES["oblique"], seed=1), d / "a.nii.gz")
    write_volume(blob_head((24, 28, 20), GEOMETRY_CASES["lps_stored"], seed=2), d / "b.mgz")
    return d


def _progress(out: str):
    lines = [parse_progress_line(x) for x in out.splitlines()]
    return [p for p in lines if p is not None]


def _run(args, capsys):
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_run_skip_overwrite_and_machine_progress(tmp_path, model, scans, capsys):
    out = tmp_path / "out"
    base = ["run", str(scans / "a.nii.gz"), "-o", str(out), "--model", str(model), "--device", "cpu",
            "--tasks", "t1,seg", "--progress", "machine"]
    code, stdout, err = _run(base, capsys)
    assert code == 0, err
    prog = _progress(stdout)
    fractions = [f for f, _ in prog]
    assert len(prog) > 5 and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert all(0.0 <= f <= 1.0 for f in fractions)
    assert all(len(line.split(" ")[1]) == 6 for line in stdout.splitlines() if line.startswith("BRAINFM_PROGRESS"))
    case = out / "a"
    assert sorted(p.name for p in case.iterdir()) == ["montage.png", "seg.nii.gz", "seg_volumes.csv",
                                                      "summary.json", "synth_t1.nii.gz"]
    src = read_volume(scans / "a.nii.gz")
    seg = read_volume(case / "seg.nii.gz")
    assert np.allclose(seg.affine, src.affine, atol=1e-5) and seg.shape == src.shape
    assert set(np.unique(seg.data).tolist()) <= set(get_scheme("fs33").fs_values)
    summary = json.loads((case / "summary.json").read_text())
    assert summary["model"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert summary["outputs"]["seg"]["kind"] == "labelmap" and summary["case"] == "a"
    run = json.loads((out / "run_summary.json").read_text())
    assert [c["status"] for c in run["cases"]] == ["done"] and run["argv"] == base
    mtime = (case / "summary.json").stat().st_mtime_ns

    code, stdout, err = _run(base, capsys)  # second run: skipped, nothing rewritten
    assert code == 0
    assert (case / "summary.json").stat().st_mtime_ns == mtime
    assert json.loads((out / "run_summary.json").read_text())["cases"][0]["status"] == "skipped"

    code, stdout, err = _run(base + ["--overwrite", "--no-png", "--no-compress"], capsys)
    assert code == 0, err
    assert json.loads((out / "run_summary.json").read_text())["cases"][0]["status"] == "done"
    assert not (case / "montage.png").exists()  # the case folder was replaced as a whole
    # --no-compress: plain .nii files, named in summary.json, same voxels as the compressed run
    assert sorted(p.name for p in case.glob("*.nii*")) == ["seg.nii", "synth_t1.nii"]
    assert json.loads((case / "summary.json").read_text())["outputs"]["seg"]["path"] == "seg.nii"
    assert np.array_equal(read_volume(case / "seg.nii").data, seg.data)
    assert sorted(p.name for p in out.iterdir()) == ["a", "run_summary.json", "seg_volumes_all.csv"]



def test_a_finished_case_folder_is_skipped_only_for_its_own_input_and_tasks(tmp_path, model, scans, capsys):
    """A case folder made from another file of the same name, or without a task this run asks for, is
    not taken for this run's results: the case fails with the reason and the folder is kept as it is."""
    out = tmp_path / "out"
    base = ["-o", str(out), "--model", str(model), "--device", "cpu", "--progress", "none", "--no-png"]
    code, _, err = _run(["run", str(scans / "a.nii.gz"), "--tasks", "t1"] + base, capsys)
    assert code == 0, err
    before = (out / "a" / "summary.json").read_bytes()
    elsewhere = tmp_path / "other" / "a.nii.gz"   # another scan, the same name
    write_volume(blob_head((20, 24, 20), GEOMETRY_CASES["oblique"], seed=7), elsewhere)
    code, _, err = _run(["run", str(elsewhere), "--tasks", "t1"] + base, capsys)
    assert code == 2 and f"{out / 'a'} holds the results of another input, {(scans / 'a.nii.gz').resolve()}" in err
    assert "pass --overwrite" in err
    code, _, err = _run(["run", str(scans / "a.nii.gz"), "--tasks", "t1,seg"] + base, capsys)
    assert code == 2 and "holds the results of tasks t1 of" in err and "without seg, which this run asks for" in err
    assert (out / "a" / "summary.json").read_bytes() == before
    for tasks in ("t1", "all"):   # its own input and tasks: skipped as before
        code, _, err = _run(["run", str(scans / "a.nii.gz"), "--tasks", tasks] + base, capsys)
        assert code == 0 and "0 done, 1 skipped, 0 failed" in err
    code, _, err = _run(["run", str(scans / "a.nii.gz"), "--tasks", "t1,seg", "--overwrite"] + base, capsys)
    assert code == 0 and json.loads((out / "a" / "summary.json").read_text())["metadata"]["tasks"] == ["t1", "seg"]


def test_overwrite_never_replaces_a_folder_brainfm_did_not_make(tmp_path, model, scans, capsys):
    """The output folder may hold the scan itself; a folder there named like the case is the user's."""
    study = tmp_path / "study"
    study.mkdir()
    scan = study / "T1.nii.gz"
    scan.write_bytes((scans / "a.nii.gz").read_bytes())
    (study / "T1").mkdir()
    (study / "T1" / "IM0001.dcm").write_bytes(b"precious")
    for extra in ([], ["--overwrite"]):
        code, _, err = _run(["run", str(scan), "-o", str(study), "--model", str(model), "--device", "cpu",
                             "--tasks", "t1", "--progress", "none", "--no-png"] + extra, capsys)
        assert code == 2 and "is not a BrainFM case folder (it has no summary.json)" in err and "--overwrite" not in err
        assert (study / "T1" / "IM0001.dcm").read_bytes() == b"precious"
        assert sorted(p.name for p in study.iterdir()) == ["T1", "T1.nii.gz"]

def test_folder_input_with_torchrun_sharding(tmp_path, model, scans, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    out = tmp_path / "out"
    code, _, err = _run(["run", str(scans), "-o", str(out), "--model", str(model), "--device", "auto",
                         "--tasks", "t1", "--progress", "none", "--no-png"], capsys)
    assert code == 0, err
    # files sorted: a.nii.gz (rank 0), b.mgz (rank 1)
    assert sorted(p.name for p in out.iterdir()) == ["b", "run_summary.rank1.json"]
    t1 = read_volume(out / "b" / "synth_t1.nii.gz")
    assert np.allclose(t1.affine, read_volume(scans / "b.mgz").affine, atol=1e-5)


def test_bad_input_exits_2_without_case_folder(tmp_path, model, capsys):
    bad = tmp_path / "flat.nii.gz"
    write_volume(blob_head((16, 16, 12)).with_data(np.full((16, 16, 12), 7.0, np.float32)), bad)
    out = tmp_path / "out"
    code, stdout, err = _run(["run", str(bad), "-o", str(out), "--model", str(model), "--device", "cpu",
                              "--progress", "machine"], capsys)
    assert code == 2
    err_lines = [x for x in stdout.splitlines() if x.startswith("BRAINFM_ERROR ")]
    assert len(err_lines) == 1
    payload = json.loads(err_lines[0][len("BRAINFM_ERROR "):])
    assert payload["type"] == "InputError" and payload["exit_code"] == 2 and payload["message"]
    assert "brainfm: error:" in err and "Traceback" not in err
    assert not out.exists()  # the only case failed: nothing written, no empty folder

    code, _, err = _run(["run", str(tmp_path / "missing.nii.gz"), "-o", str(out), "--progress", "none"], capsys)
    assert code == 2 and "input not found" in err and "Traceback" not in err
    code, _, err = _run(["--debug", "run", str(tmp_path / "missing.nii.gz"), "-o", str(out)], capsys)
    assert code == 2 and "Traceback" in err  # --debug shows where it failed


def test_output_equal_to_input_is_refused(tmp_path, model, scans, capsys):
    src = scans / "a.nii.gz"
    before = src.read_bytes()
    code, _, err = _run(["run", str(src), "-o", str(src), "--model", str(model), "--progress", "none"], capsys)
    assert code == 2 and "input file" in err
    assert src.read_bytes() == before


def test_missing_default_model_exits_3(tmp_path, scans, capsys, monkeypatch):
    from brainfm.models import registry
    from brainfm.models.selection import NO_MODEL_MESSAGE

    monkeypatch.setattr(registry, "BUNDLED_DIR", tmp_path / "no_bundled_model")  # empty store, no bundled model
    out = tmp_path / "out"
    code, stdout, err = _run(["run", str(scans / "a.nii.gz"), "-o", str(out), "--progress", "machine"], capsys)
    assert code == 3 and NO_MODEL_MESSAGE in " ".join(err.split())
    assert json.loads(stdout.splitlines()[-1][len("BRAINFM_ERROR "):])["type"] == "ModelNotAvailableError"
    assert not (out / "a").exists()


def test_demo_without_a_model_writes_only_the_sample_scan(tmp_path, capsys, monkeypatch):
    pytest.importorskip("nilearn", reason="the demo needs the optional nilearn extra")
    from brainfm.models import registry

    monkeypatch.setattr(registry, "BUNDLED_DIR", tmp_path / "no_bundled_model")  # empty store, no bundled model
    out = tmp_path / "demo"
    code, _, err = _run(["demo", "-o", str(out), "--progress", "none"], capsys)
    assert code == 3 and "No BrainFM model is available yet" in err and "brainfm models add" in err
    assert sorted(p.name for p in out.iterdir()) == ["sample_scan.nii.gz"]
    scan = read_volume(out / "sample_scan.nii.gz")
    assert [round(s, 3) for s in scan.spacing] == [1.0, 1.0, 5.0]
    assert scan.shape == (197, 233, 38) and float(scan.data.min()) >= 0.0
    # degraded: Rician noise in the background, intensities still template-like
    assert 0.5 < float(scan.data[:10, :10, :].mean()) < 20 and 200 < float(scan.data.max()) < 320


def test_sigterm_cancels_and_leaves_no_case_folder(tmp_path, model, scans, capsys, monkeypatch):
    import brainfm.cli.run as run_mod

    real = run_mod.make_predictor

    def make_predictor(args, device):
        predictor = real(args, device)
        predict = predictor.predict

        def predict_then_signal(*a, **kw):
            os.kill(os.getpid(), signal.SIGTERM)  # as the Slicer Cancel button does
            return predict(*a, **kw)

        predictor.predict = predict_then_signal
        return predictor

    monkeypatch.setattr(run_mod, "make_predictor", make_predictor)
    handler_before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "out"
    code, stdout, err = _run(["run", str(scans / "a.nii.gz"), "-o", str(out), "--model", str(model),
                              "--device", "cpu", "--progress", "machine"], capsys)
    assert code == 130
    assert json.loads(stdout.splitlines()[-1][len("BRAINFM_ERROR "):])["type"] == "CancelledError"
    assert "cancelled" in err
    assert not out.exists()  # nothing written: no case folder, no temporary folder, no run summary, no empty folder
    assert signal.getsignal(signal.SIGTERM) is handler_before  # handlers restored


def test_info_json(tmp_path, model, capsys):
    code, stdout, _ = _run(["info", "--json", "--model", str(model),
                            "--sha256", hashlib.sha256(model.read_bytes()).hexdigest()], capsys)
    assert code == 0
    info = json.loads(stdout)
    assert info["brainfm"] and info["torch"]["version"] and isinstance(info["torch"]["cuda_available"], bool)
    assert info["model"]["available"] is True and info["model"]["verification"] == "verified"
    assert info["model"]["size_bytes"] > model.stat().st_size  # weights + json sidecar
    assert info["cache_dir"] == str(tmp_path / "cache")
    code, stdout, _ = _run(["info", "--json", "--model", str(model), "--sha256", "0" * 64], capsys)
    assert json.loads(stdout)["model"]["verification"] == "MISMATCH"
    code, stdout, _ = _run(["info", "--json", "--model", str(tmp_path / "nope.pth")], capsys)
    assert code == 0 and json.loads(stdout)["model"]["available"] is False


def test_info_says_what_a_registration_uses_while_the_atlas_is_missing(tmp_path, model, capsys):
    from brainfm.models import registry
    from brainfm.models.templates import icbm_template_path

    code, stdout, _ = _run(["info", "--json", "--model", str(model)], capsys)
    atlas = json.loads(stdout)["atlas"]
    assert code == 0 and atlas["available"] is False and "last download failed" not in atlas["message"]
    assert ("MNI ICBM152 2009a" in atlas["message"]) == (icbm_template_path() is not None)
    cached = tmp_path / "cache" / "atlases" / "gca.mgz"
    registry._note_failure(cached.with_name(cached.name + registry.UNREACHABLE_SUFFIX), "cannot download: timed out")
    code, stdout, _ = _run(["info", "--json", "--model", str(model)], capsys)
    assert "the last download failed: cannot download: timed out (0 min ago)" in json.loads(stdout)["atlas"]["message"]


def test_info_does_not_check_a_namesake_of_a_registered_file_against_it(tmp_path, model, capsys):
    """A model the user trained keeps the default name of the bundled file; it is not that file."""
    import shutil

    from brainfm.models import registry

    bundled = next(e for e in registry.list_entries(kind="model") if e.get("bundled"))
    mine = tmp_path / "mine" / bundled["filename"]
    mine.parent.mkdir()
    shutil.copy(model, mine)
    code, stdout, _ = _run(["info", "--json", "--model", str(mine)], capsys)
    assert code == 0 and json.loads(stdout)["model"]["verification"] != "MISMATCH"
    assert registry.entry_for_file(mine) is None
    assert registry.entry_for_file(registry.BUNDLED_DIR / bundled["filename"])["id"] == bundled["id"]


def test_labels_export(tmp_path, capsys):
    from brainfm.labels import get_scheme, read_freesurfer_lut

    code, _, _ = _run(["labels", "--format", "fs-lut", "-o", str(tmp_path / "l.txt"), "--scheme", "fs33"], capsys)
    assert code == 0
    assert sorted(read_freesurfer_lut(tmp_path / "l.txt")) == sorted(get_scheme("fs33").fs_values)
    code, _, _ = _run(["labels", "-o", str(tmp_path / "c.csv")], capsys)
    assert code == 0 and (tmp_path / "c.csv").read_text().startswith("LabelValue,Name,")


@pytest.mark.parametrize("command, part", [("evaluate", "brainfm.training"), ("train", "brainfm.training"),
                                           ("eval-table", "brainfm.evaluation")])
def test_commands_of_a_missing_part_are_not_available(command, part, tmp_path, capsys, monkeypatch):
    """An installation without the training (or evaluation) part lists its commands as not available
    (exit 1, one line) while the other commands keep working."""
    import sys

    from brainfm.cli.main import COMMANDS, build_parser

    monkeypatch.setitem(sys.modules, part, None)  # what `import` sees when the part is not installed
    module = COMMANDS[command][0]
    monkeypatch.delitem(sys.modules, module, raising=False)  # loaded again, as in a fresh process
    code, _, err = _run([command], capsys)
    assert code == 1 and err == f"brainfm {command}: not available in this installation ({part} is not installed)\n"
    assert command in build_parser().format_help()  # still listed by `brainfm --help`
    code, _, err = _run(["labels", "-o", str(tmp_path / "c.csv")], capsys)
    assert code == 0, err


def test_python_m_brainfm_help():
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[3] / "BrainFMCore"))
    res = subprocess.run([sys.executable, "-m", "brainfm", "--help"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    for cmd in ("run", "demo", "info", "labels", "train"):
        assert cmd in res.stdout
    res = subprocess.run([sys.executable, "-m", "brainfm", "run", "--help"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 0 and "--output-frame" in res.stdout and "--tile-size" in res.stdout


def test_too_thick_slices_refused_unless_allowed(tmp_path, model, capsys):
    from fixtures import affine

    src = tmp_path / "thick.nii.gz"  # 0.5 x 0.5 x 12 mm: slices thicker than 10 mm
    write_volume(blob_head((64, 64, 12), affine((0.5, 0.5, 12.0)), seed=3), src)
    out = tmp_path / "out"
    base = ["run", str(src), "-o", str(out), "--model", str(model), "--device", "cpu", "--tasks", "seg",
            "--progress", "none", "--no-png"]
    code, _, err = _run(base, capsys)
    assert code == 2 and "thicker than 10 mm" in err and "--allow-anisotropic" in err
    assert not (out / "thick").exists()
    code, _, err = _run(base + ["--allow-anisotropic"], capsys)
    assert code == 0, err
    seg = read_volume(out / "thick" / "seg.nii.gz")
    assert seg.shape == (64, 64, 12) and np.allclose(seg.affine, read_volume(src).affine, atol=1e-5)


def test_unexpected_os_errors_are_io_errors_not_internal_errors(tmp_path, model, scans, capsys, monkeypatch):
    import errno

    import brainfm.cli.run as run_mod
    from brainfm.errors import StorageError

    def broken(*a, **k):
        raise OSError(errno.EIO, "Input/output error", str(tmp_path / "disk"))

    monkeypatch.setattr(run_mod, "collect_inputs", broken)
    code, _, err = _run(["run", str(scans), "-o", str(tmp_path / "out"), "--progress", "none"], capsys)
    assert code == StorageError.exit_code == 5
    assert "brainfm: error: I/O error: Input/output error" in err and "internal error" not in err
    monkeypatch.undo()
    code, stdout, err = _run(["run", str(scans / "a.nii.gz"), "-o", str(tmp_path / "o2"), "--model", str(model),
                              "--device", "cpu", "--tasks", "t1", "--progress", "machine", "--no-png"], capsys)
    assert code == 0, err  # the same run without the failure works


def test_cases_failing_in_a_batch_do_not_stop_it(tmp_path, model, scans, capsys):
    bad = scans / "c.nii.gz"
    write_volume(blob_head((24, 28, 20)).with_data(np.zeros((24, 28, 20), np.float32)), bad)
    out = tmp_path / "out"
    code, _, err = _run(["run", str(scans), "-o", str(out), "--model", str(model), "--device", "cpu",
                         "--tasks", "t1", "--progress", "none", "--no-png"], capsys)
    assert code == 2 and "c.nii.gz: the volume is empty" in err
    run = json.loads((out / "run_summary.json").read_text())
    assert [(c["case"], c["status"]) for c in run["cases"]] == [("a", "done"), ("b", "done"), ("c", "failed")]
    assert run["counts"] == {"done": 2, "skipped": 0, "failed": 1, "cancelled": 0}
    assert run["cases"][2]["error"] == {"type": "InputError", "exit_code": 2,
                                        "message": run["cases"][2]["error"]["message"]}
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", "run_summary.json"]
    assert err.rstrip().endswith(f"2 done, 0 skipped, 1 failed -> {out}")
    alone = tmp_path / "alone"
    code, _, err = _run(["run", str(bad), "-o", str(alone), "--model", str(model), "--device", "cpu",
                         "--tasks", "t1", "--progress", "none", "--no-png"], capsys)
    assert code == 2 and not alone.exists()   # every case failed: nothing written, and the last line says so
    assert err.rstrip().endswith("0 done, 0 skipped, 1 failed -> nothing written (the errors are above)")



def test_bias_method_option_reaches_the_predictor_and_is_reported(tmp_path, scans, capsys):
    """``--bias-method head`` runs the head; the log and summary.json say which method made the field;
    ``fit`` on a model without a segmentation head fails with the reason and leaves no case folder."""
    d = tmp_path / "model"
    _net, weights, _json = ckpt_factory.write_native(d / "tiny", heads={"bias_field_log": 1})
    base = ["run", str(scans / "a.nii.gz"), "--model", str(weights), "--device", "cpu", "--tasks", "bias",
            "--progress", "none", "--no-png"]
    code, _out, err = _run(base + ["-o", str(tmp_path / "head"), "--bias-method", "head"], capsys)
    assert code == 0, err
    assert "a: bias field: model head" in err
    summary = json.loads((tmp_path / "head" / "a" / "summary.json").read_text())
    assert summary["metadata"]["bias_method"] == "model head"
    code, _out, err = _run(base + ["-o", str(tmp_path / "fit"), "--bias-method", "fit"], capsys)
    assert code == 2 and "no segmentation head" in err
    assert not (tmp_path / "fit" / "a").exists()


def test_reg_method_option_reaches_the_predictor_and_is_reported(tmp_path, scans, capsys):
    """``--reg-method head`` runs the head; the log and summary.json say which method made the map;
    ``fit`` on a model without a segmentation head fails with the reason and leaves no case folder."""
    d = tmp_path / "model"
    _net, weights, _json = ckpt_factory.write_native(d / "tiny", heads={"registration": 3})
    base = ["run", str(scans / "a.nii.gz"), "--model", str(weights), "--device", "cpu", "--tasks", "reg",
            "--atlas", str(scans / "a.nii.gz"), "--progress", "none", "--no-png"]
    code, _out, err = _run(base + ["-o", str(tmp_path / "head"), "--reg-method", "head"], capsys)
    assert code == 0, err
    assert "a: registration: model head" in err
    summary = json.loads((tmp_path / "head" / "a" / "summary.json").read_text())
    assert summary["metadata"]["reg_method"] == "model head"
    code, _out, err = _run(base + ["-o", str(tmp_path / "fit"), "--reg-method", "fit"], capsys)
    assert code == 2 and "no segmentation head" in err
    assert not (tmp_path / "fit" / "a").exists()


def test_a_batch_gathers_every_case_s_structure_volumes_into_one_table(tmp_path, model, scans, capsys):
    """out/seg_volumes_all.csv: one row per case folder (cases skipped by a later run kept), one column per
    structure with each case's own seg_volumes.csv values, and what made each row; `brainfm volumes` rebuilds it."""
    import csv

    out = tmp_path / "out"
    base = ["run", "-o", str(out), "--model", str(model), "--device", "cpu", "--tasks", "seg", "--progress", "none",
            "--no-png"]
    code, _, err = _run(base[:1] + [str(scans / "a.nii.gz")] + base[1:], capsys)
    assert code == 0, err
    assert "structure volumes of every case" in err and "seg_volumes_all.csv" in err
    code, _, err = _run(base[:1] + [str(scans)] + base[1:], capsys)  # a: skipped, b: done
    assert code == 0, err
    with open(out / "seg_volumes_all.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["a", "b"]
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    assert all(r["model_sha256"] == sha and r["output_frame"] == "input" for r in rows)
    for r in rows:
        with open(out / r["case"] / "seg_volumes.csv", newline="", encoding="utf-8") as f:
            own = {v["name"]: float(v["volume_mm3"]) for v in csv.DictReader(f)}
        info = ("case", "model", "model_sha256", "seg_method", "output_frame", "checks", "Labelled-Total")
        structures = {k: float(v) for k, v in r.items() if k not in info}
        assert {k: structures[k] for k in own} == pytest.approx(own, rel=1e-5) and any(own.values())
        assert all(v == 0 for k, v in structures.items() if k not in own)  # found in another case only
        assert float(r["Labelled-Total"]) == pytest.approx(sum(own.values()), rel=1e-5)
        # the random-weight model's labels are no brain: the checks say so, as the case's summary does
        summary = json.loads((out / r["case"] / "summary.json").read_text())
        assert "labelled volume" in r["checks"]
        assert [w for w in summary["warnings"] if "segmentation check: " in w]
    # the same table from the command, to any file; a folder without segmented cases is refused
    code, stdout, err = _run(["volumes", str(out), "-o", str(tmp_path / "all.csv")], capsys)
    assert code == 0 and "(2 cases)" in stdout, err
    assert (tmp_path / "all.csv").read_bytes() == (out / "seg_volumes_all.csv").read_bytes()
    (tmp_path / "empty").mkdir()
    code, _, err = _run(["volumes", str(tmp_path / "empty")], capsys)
    assert code == 2 and "no case folder with structure volumes" in err
    # a damaged case folder is named, and a batch goes on without the table
    (out / "a" / "seg_volumes.csv").write_text("not,a\nvolume,table\n")
    code, _, err = _run(["volumes", str(out)], capsys)
    assert code == 2 and str(out / "a" / "seg_volumes.csv") in err


def test_fine_tune_for_labels_of_your_own_then_add_and_run_the_model(tmp_path, scans, capsys):
    """The user's path on the command line: ``brainfm finetune`` with a label table, ``brainfm models
    add`` as the command suggests, ``brainfm run --model NAME``: the case has the user's values, names
    and colour table."""
    pytest.importorskip("brainfm.training")
    base_dir = tmp_path / "base"
    _net, base, _json = ckpt_factory.write_native(base_dir / "toy", heads={"T1": 1, "segmentation": 33},
                                                  info={"voxel_mm": 2.0})
    data = tmp_path / "mine"
    for i, name in enumerate(("a", "b")):
        img = blob_head((28, 32, 24), GEOMETRY_CASES["ras"], seed=i)
        write_volume(img, data / "images" / f"{name}.nii.gz")
        x = np.asarray(img.data)
        write_volume(img.with_data(np.where(x > np.percentile(x, 80), 5, 0).astype(np.int16)),
                     data / "labels" / f"{name}.nii.gz")
    table = tmp_path / "mine.txt"
    table.write_text("0 Unknown 0 0 0 0\n5 Core 250 20 20 0\n")
    code, out, err = _run(["finetune", "--model", str(base), "--data", str(data), "--out", str(tmp_path / "ft"),
                           "--label-scheme", str(table), "--steps", "2", "--size", "16", "--name", "cores",
                           "--device", "cpu", "--progress", "none"], capsys)
    assert code == 0, err
    weights = json.loads(out.strip().splitlines()[-1])["model"]
    assert f"brainfm models add {weights}, then --model cores" in err
    code, _out, err = _run(["models", "add", weights], capsys)
    assert code == 0, err
    code, _out, err = _run(["run", str(scans / "a.nii.gz"), "-o", str(tmp_path / "out"), "--model", "cores",
                            "--device", "cpu", "--tasks", "seg", "--progress", "none"], capsys)
    assert code == 0, err
    case = tmp_path / "out" / "a"
    assert set(np.unique(np.asarray(read_volume(case / "seg.nii.gz").data)).tolist()) <= {0, 5}
    assert "5,Core,250,20,20,255" in (case / "seg_labels.csv").read_text()
    summary = json.loads((case / "summary.json").read_text())
    assert summary["model"]["label_scheme"]["names"] == ["Unknown", "Core"]
    assert summary["metadata"]["seg_method"] == "model head"


def test_task_and_number_options_are_checked_once_for_the_run(tmp_path, model, scans, capsys):
    """A misspelt task, a task the model cannot do or a zero size fail the run once, by the option's
    name, not every case of a folder by its file name; nothing is written."""
    out = tmp_path / "out"
    base = ["run", str(scans), "-o", str(out), "--model", str(model), "--device", "cpu", "--progress", "none"]
    code, _, err = _run(base + ["--tasks", "seg,bogus"], capsys)
    assert code == 2 and "error: --tasks: unknown task 'bogus'; known tasks: t1, t2" in err
    code, _, err = _run(base + ["--tasks", "seg,dist"], capsys)   # the tiny model has no distance head
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1 and errors[0].startswith("brainfm: error: --tasks seg,dist: task 'dist'")
    assert "a.nii.gz" not in err and "b.mgz" not in err and not out.exists()
    for option in (["--tile-size", "0"], ["--memory-gb", "-2"]):
        with pytest.raises(SystemExit) as stop:
            main(base + option)
        assert stop.value.code == 2 and f"argument {option[0]}: must be greater than 0" in capsys.readouterr().err
