"""``brainfm models list|add|verify|remove|path``, ``--model NAME`` in ``run``/``info``, and the
default model of ``run``/``demo``, with official-format files generated here."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from brainfm.cli import main
from brainfm.cli.progress import parse_progress_line
from brainfm.io import write_volume
from brainfm.models import registry
from fixtures import GEOMETRY_CASES, blob_head

ckpt_factory = pytest.importorskip("ckpt_factory")


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    monkeypatch.setenv("BRAINFM_HOME", str(h))
    monkeypatch.setattr(registry, "BUNDLED_DIR", tmp_path / "no_bundled_model")
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "BRAINFM_ATLAS"):
        monkeypatch.delenv(var, raising=False)
    return h


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    p = tmp_path_factory.mktemp("weights") / "brainfm_pretrained.pth"
    ckpt_factory.write_official(p)
    return p


def _run(args, capsys):
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_models_add_list_path_verify_remove(official, home, capsys):
    code, out, err = _run(["models", "list"], capsys)
    assert code == 0 and "No BrainFM model is available yet" in out and "jhuldr/BrainFM#downloads" in out
    code, out, _ = _run(["models", "add", str(official), "--progress", "none"], capsys)
    assert code == 0 and "stored as 'official'" in out and "brainfm-official" in out
    code, out, _ = _run(["models", "list"], capsys)
    first = out.splitlines()[1]
    assert first.startswith("* official") and "brainfm56" in first and "voxel 1 mm" in first
    assert "tasks t1,t2,flair,ct,sr,seg,dist,bias,reg" in out and "default (*): official" in out
    code, out, _ = _run(["models", "list", "--json"], capsys)
    listed = json.loads(out)["models"]
    assert [(d["name"], d["is_default"], d["format"]) for d in listed] == [("official", True, "brainfm-official")]
    stored = listed[0]["path"]
    for spec in ("official", "default", "brainfm-official"):
        code, out, _ = _run(["models", "path", spec], capsys)
        assert code == 0 and out.strip() == stored
    code, out, _ = _run(["models", "verify", "official", "--progress", "none"], capsys)
    assert code == 0 and "OK" in out
    code, out, _ = _run(["info", "--json", "--model", "official"], capsys)
    info = json.loads(out)["model"]
    assert info["name"] == "official" and info["verification"] == "verified" and info["label_scheme"] == "brainfm56"
    assert info["quality_text"] == "unmeasured" and info["voxel_mm"] == 1.0 and len(info["heads"]) == 9
    with open(stored, "ab") as fh:
        fh.write(b"tampered")
    code, _, err = _run(["models", "verify", "official", "--progress", "none"], capsys)
    assert code == 3 and "checksum mismatch for model 'official'" in err
    code, _, err = _run(["models", "path", "official"], capsys)
    assert code == 3 and "checksum mismatch" in err
    code, out, _ = _run(["models", "remove", "official"], capsys)
    assert code == 0 and "removed 'official'" in out and official.is_file()
    code, _, err = _run(["models", "remove", "official"], capsys)
    assert code == 3 and "no model 'official'" in err


def test_add_in_machine_mode_reports_progress_and_the_record(official, capsys):
    code, out, _ = _run(["models", "add", str(official), "--name", "mine", "--progress", "machine"], capsys)
    assert code == 0
    fractions = [p[0] for p in map(parse_progress_line, out.splitlines()) if p is not None]
    assert fractions and fractions[-1] == 1.0 and fractions == sorted(fractions)
    record = [line for line in out.splitlines() if line.startswith("BRAINFM_MODEL ")]
    assert len(record) == 1
    d = json.loads(record[0][len("BRAINFM_MODEL "):])
    assert d["name"] == "mine" and d["is_default"] is True and d["size_bytes"] == official.stat().st_size


def test_add_refuses_bad_files_with_exit_codes(tmp_path, capsys):
    evil = tmp_path / "evil.pth"
    ckpt_factory.write_forbidden_pickle(evil)
    code, out, err = _run(["models", "add", str(evil), "--progress", "machine"], capsys)
    assert code == 3 and "refused: evil.pth holds executable objects" in err
    assert json.loads(out.splitlines()[-1][len("BRAINFM_ERROR "):])["type"] == "CheckpointError"
    code, _, err = _run(["models", "add", str(tmp_path / "none.pth"), "--progress", "none"], capsys)
    assert code == 2 and "model file not found" in err
    code, _, err = _run(["models", "add", str(evil), "--name", "default", "--progress", "none"], capsys)
    assert code == 2 and "reserved" in err


@pytest.mark.slow
def test_run_uses_a_stored_name_and_the_default(official, tmp_path, capsys):
    scan = tmp_path / "a.nii.gz"
    write_volume(blob_head((28, 32, 24), GEOMETRY_CASES["oblique"], seed=1), scan)
    assert _run(["models", "add", str(official), "--progress", "none"], capsys)[0] == 0
    for spec, out in (("official", tmp_path / "o1"), ("default", tmp_path / "o2")):
        code, _, err = _run(["run", str(scan), "-o", str(out), "--model", spec, "--device", "cpu", "--tasks", "t1",
                             "--progress", "none", "--no-png"], capsys)
        assert code == 0, err
        summary = json.loads((out / "a" / "summary.json").read_text())
        assert summary["model"]["format"] == "brainfm-official"
        assert summary["model"]["sha256"] == registry.sha256_file(official)


@pytest.mark.slow
def test_demo_uses_the_best_available_model(official, tmp_path, capsys, monkeypatch):
    pytest.importorskip("nilearn", reason="the demo needs the optional nilearn extra")
    bundled = tmp_path / "bundled"
    monkeypatch.setattr(registry, "BUNDLED_DIR", bundled)
    ckpt_factory.write_native(bundled / "brainfm-compact", heads={"T1": 1}, info={
        "name": "brainfm-compact", "quality": {"level": "preview", "real_t1_dice17": 0.72}})
    assert _run(["models", "add", str(official), "--progress", "none"], capsys)[0] == 0  # official beats bundled
    out = tmp_path / "demo"
    code, _, err = _run(["demo", "-o", str(out), "--tasks", "t1", "--device", "cpu", "--progress", "none",
                         "--no-png"], capsys)
    assert code == 0, err
    assert "using the official BrainFM model added to the store as 'official' (--model official)" in err
    summary = json.loads((out / "sample_scan" / "summary.json").read_text())
    assert summary["model"]["format"] == "brainfm-official"
    assert summary["model"]["sha256"] == registry.sha256_file(official)


def test_the_command_is_registered():
    out = subprocess.run([sys.executable, "-m", "brainfm", "models", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and all(a in out.stdout for a in ("list", "add", "verify", "remove", "path"))


def test_verify_takes_bundled_and_default_as_path_does(official, tmp_path, monkeypatch, capsys):
    real = Path(registry.__file__).parent / "bundled"
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    for name in ("brainfm-compact.safetensors", "brainfm-compact.json"):
        shutil.copyfile(real / name, bundled / name)
    monkeypatch.setattr(registry, "BUNDLED_DIR", bundled)
    recorded = registry.get_entry(registry.DEFAULT_MODEL_ID)["sha256"]
    for spec in ("bundled", "default", "brainfm-compact"):   # the bundled model is the default of an empty store
        code, out, _ = _run(["models", "verify", spec, "--progress", "none"], capsys)
        assert code == 0 and out.strip() == f"{spec}: OK, {bundled / 'brainfm-compact.safetensors'} has the " \
                                            f"recorded SHA-256 {recorded}"
    code, _, _ = _run(["models", "add", str(official), "--progress", "none"], capsys)
    code, out, _ = _run(["models", "verify", "default", "--progress", "none"], capsys)
    assert code == 0 and out.startswith("default: OK, ") and "brainfm-compact" not in out   # now the official one
    with open(bundled / "brainfm-compact.safetensors", "ab") as fh:
        fh.write(b"tampered")
    code, _, err = _run(["models", "verify", "bundled", "--progress", "none"], capsys)
    assert code == 3 and "checksum mismatch for the bundled model" in err and "the model registry" in err
