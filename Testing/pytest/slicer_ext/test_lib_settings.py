"""BrainFMSceneLib parameters, model registry, install logic (fake pip) and diagnostics."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from BrainFMSceneLib import __version__ as LIB_VERSION
from BrainFMSceneLib._errors import CheckpointError, ModelNotAvailableError
from BrainFMSceneLib.diagnostics import collect_diagnostics, format_diagnostics
from BrainFMSceneLib.install import InstallError, InstallLogic, satisfies, split_requirement
from BrainFMSceneLib.parameters import RunParameters
from BrainFMSceneLib.registry import ModelRegistry, verify_checksum
from BrainFMSceneLib.signals import Signal

REPO = Path(__file__).resolve().parents[3]
ENGINE_REQUIRES = ['torch>=2.5', 'numpy>=1.22', 'nibabel>=5.0', 'SimpleITK>=2.2', 'scikit-image>=0.21',
                   'safetensors>=0.4', 'requests>=2', 'nilearn>=0.10; extra == "demo"']


# -- parameters ----------------------------------------------------------------------------------
def test_run_parameters_validation_and_arguments(tmp_path):
    p = RunParameters(tasks=("seg", "reg"), device="cuda:2", precision="bf16", tile_size=96, memory_gb=6,
                      crop_foreground=False, allow_thick_slices=True)
    assert p.is_valid() == (True, "")
    args = p.as_arg_list()
    assert args[:4] == ["--tasks", "seg,reg", "--model", "default"]
    assert args[args.index("--device") + 1] == "cuda:0"  # GPU 2 is the only visible one in the child
    assert p.environment_updates() == {"CUDA_VISIBLE_DEVICES": "2"}
    assert RunParameters(device="cpu").environment_updates() == {"CUDA_VISIBLE_DEVICES": "-1"}
    assert RunParameters(device="auto").environment_updates() == {}
    assert {"--no-crop", "--no-png", "--no-compress", "--allow-anisotropic"} <= set(args) and args[args.index("--tile-size") + 1] == "96"
    assert args[args.index("--progress") + 1] == "machine"
    assert "--no-compress" not in RunParameters(compress_outputs=True).as_arg_list()
    bad = {
        "tasks": ((), "at least one task"),
        "device": ("gpu", "Unknown device"),
        "precision": ("fp8", "precision"),
        "model": (str(tmp_path / "missing.pth"), "not found"),
        "model_sha256": ("abc", "64 hexadecimal"),
        "tile_size": (4, "Tile size"),
    }
    for field_name, (value, reason) in bad.items():
        ok, why = RunParameters(**{field_name: value}).is_valid()
        assert not ok and reason in why, field_name
    back = RunParameters.from_settings(p.to_settings())
    assert back == p and back.allow_thick_slices is True
    assert "--allow-anisotropic" not in RunParameters().as_arg_list()


def test_signal_survives_a_broken_slot():
    s = Signal("int")
    got = []
    s.connect(lambda v: 1 / 0)
    s.connect(got.append)
    s.connect(got.append)  # connecting twice is a no-op
    s.emit(7)
    assert got == [7]
    s.disconnect(got.append)
    s.emit(8)
    assert got == [7] and len(s) == 1


# -- registry ------------------------------------------------------------------------------------
def test_registry_checksum_custom_entries_and_cache(tmp_path, monkeypatch):
    weights = tmp_path / "finetuned.pth"
    weights.write_bytes(b"weights v1")
    good = hashlib.sha256(b"weights v1").hexdigest()
    monkeypatch.delenv("BRAINFM_HOME", raising=False)
    reg = ModelRegistry(custom_file=tmp_path / "custom.json", cache_setting=str(tmp_path / "cache"))
    assert reg.cache_dir() == tmp_path / "cache"
    monkeypatch.setenv("BRAINFM_HOME", str(tmp_path / "env"))
    assert reg.cache_dir() == tmp_path / "env" and reg.environment_updates() == {"BRAINFM_HOME": str(tmp_path / "env")}
    choice = reg.add_custom(weights, title="Fine-tuned", sha256=good)
    assert choice.sha256 == good and choice.spec == str(weights.resolve()) and choice.available
    saved = json.loads((tmp_path / "custom.json").read_text())
    assert saved["models"][choice.id]["sha256"] == good
    reloaded = ModelRegistry(custom_file=tmp_path / "custom.json")
    assert reloaded.choice(choice.id).path == str(weights.resolve())
    assert [c.kind for c in reloaded.choices()][:2] == ["bundled", "official"]
    assert reloaded.verify(reloaded.choice(choice.id)) == good
    weights.write_bytes(b"weights v1 but tampered")  # file changed after registration
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        reloaded.verify(reloaded.choice(choice.id))
    with pytest.raises(CheckpointError, match="expected SHA-256"):
        reg.add_custom(weights, sha256=good)
    with pytest.raises(ModelNotAvailableError, match="not found"):
        verify_checksum(tmp_path / "nothing.pth", good)
    reloaded.remove_custom(choice.id)
    assert choice.id not in [c.id for c in ModelRegistry(custom_file=tmp_path / "custom.json").choices()]


def test_registry_bundled_choice_comes_from_the_engine(tmp_path):
    engine = pytest.importorskip("brainfm.models.registry")
    choice = ModelRegistry(custom_file=tmp_path / "c.json").bundled_choice()
    try:
        path = engine.resolve_model("bundled")
    except ModelNotAvailableError as exc:  # the bundled model is not shipped yet: same message
        assert not choice.available and choice.message == str(exc)
    else:
        assert choice.available and choice.path == str(path)


def test_registry_official_file_from_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINFM_HOME", str(tmp_path / "home"))
    missing = ModelRegistry(custom_file=tmp_path / "c.json").official_choice()
    assert not missing.available and "official BrainFM weights" in missing.message
    official = tmp_path / "brainfm_pretrained.pth"
    official.write_bytes(b"official")
    found = ModelRegistry(custom_file=tmp_path / "c.json", official_path=str(official)).official_choice()
    assert found.available and found.spec == str(official)


# -- install ---------------------------------------------------------------------------------------
class FakeEnv:
    """Installed versions + a fake pip that 'installs' what it is asked for."""

    def __init__(self, versions):
        self.versions = dict(versions)
        self.pip_calls = []

    def pip(self, args):
        self.pip_calls.append(list(args))
        spec = args[-1]
        if spec.startswith("brainfm==") or spec.endswith("BrainFMCore"):
            self.versions["brainfm"] = LIB_VERSION
        else:
            name, _ = split_requirement(spec)
            self.versions[name] = "99.0"


def _pyproject_version():
    """The engine's version as its ``pyproject.toml`` declares it: a literal ``version = "..."``, or
    the ``[tool.setuptools.dynamic]`` attribute it names (read from that module's source, as the
    build reads it without importing the engine)."""
    core = REPO / "BrainFMCore"
    text = (core / "pyproject.toml").read_text()
    literal = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
    if literal:
        return literal.group(1)
    assert re.search(r'^dynamic\s*=\s*\[[^]]*"version"', text, re.M), "pyproject.toml declares no version"
    attr = re.search(r'^version\s*=\s*\{\s*attr\s*=\s*"([\w.]+)\.(\w+)"\s*\}', text, re.M)
    module, name = attr.group(1), attr.group(2)
    source = (core / Path(*module.split("."))).with_suffix(".py").read_text()
    return re.search(rf'^{name}\s*=\s*"([^"]+)"', source, re.M).group(1)


def test_install_logic_pins_brainfm_and_never_touches_skipped_packages(tmp_path):
    assert LIB_VERSION == _pyproject_version()  # the exact pin follows the engine's version
    env = FakeEnv({"torch": "2.5.1", "numpy": "1.21.0", "nibabel": "5.2.0", "SimpleITK": None,
                   "scikit-image": None, "safetensors": "0.4.5", "requests": None})
    confirmations = []
    logic = InstallLogic(pip_runner=env.pip, metadata_reader=env.versions.get,
                         requires_reader=lambda name: ENGINE_REQUIRES, imported_modules=lambda: {"numpy"},
                         torch_installer=lambda req: pytest.fail("torch is already fine"))
    plan = logic.plan()
    assert plan == [f"brainfm=={LIB_VERSION}"]
    report = logic.setup(confirm=lambda text: confirmations.append(text) or True)
    assert len(confirmations) == 1 and f"brainfm=={LIB_VERSION}" in confirmations[0]
    assert env.pip_calls[0] == ["install", "--no-deps", f"brainfm=={LIB_VERSION}"]
    installed = [c[-1] for c in env.pip_calls[1:]]
    assert installed == ["numpy>=1.22", "scikit-image>=0.21"]  # missing/old ones, one by one
    flat = " ".join(" ".join(c) for c in env.pip_calls)
    for never in ("torch", "SimpleITK", "requests", "nilearn"):
        assert never not in flat
    assert set(report.skipped) == {"torch", "SimpleITK", "requests"}
    assert report.needs_restart  # numpy was imported and replaced
    assert logic.is_ready() and logic.setup(confirm=lambda t: pytest.fail("nothing to ask")).installed == []


def test_install_logic_source_torch_and_declined(tmp_path):
    env = FakeEnv({"torch": None, "numpy": "2.0"})
    torch_calls = []

    def install_torch(requirement):
        torch_calls.append(requirement)
        env.versions["torch"] = "2.5.1"

    source = tmp_path / "BrainFMCore"
    source.mkdir()
    logic = InstallLogic(source=source, pip_runner=env.pip, metadata_reader=env.versions.get,
                         requires_reader=lambda name: ["torch>=2.5", "numpy>=1.22"], torch_installer=install_torch,
                         imported_modules=set)
    with pytest.raises(InstallError, match="declined"):
        logic.setup(confirm=lambda text: False)
    assert env.pip_calls == [] and torch_calls == []
    report = logic.setup(confirm=lambda text: "PyTorch" in text)
    assert torch_calls == [">=2.5"] and env.pip_calls == [["install", "--no-deps", str(source)]]
    assert report.installed[0] == "torch" and not report.needs_restart
    no_torch = InstallLogic(pip_runner=env.pip, metadata_reader={"torch": None}.get, requires_reader=lambda n: [])
    with pytest.raises(InstallError, match="PyTorch extension"):
        no_torch.setup()


def test_requirement_helpers():
    assert satisfies("2.5.1", ">=2.1") and not satisfies("2.0.1", ">=2.1") and not satisfies(None, "")
    assert satisfies("0.1.0", "==0.1.0") and satisfies("1.0", "")
    assert split_requirement('nilearn>=0.10; extra == "demo"') is None
    assert split_requirement("scikit-image>=0.21") == ("scikit-image", ">=0.21")


# -- diagnostics ---------------------------------------------------------------------------------
def test_diagnostics_text(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINFM_HOME", str(tmp_path))
    weights = tmp_path / "m.pth"
    weights.write_bytes(b"abc")
    reg = ModelRegistry(custom_file=tmp_path / "c.json")
    choice = reg.add_custom(weights)
    probe = {"torch": "2.5.1+cu124", "cuda_build": "12.4", "cuda_available": True,
             "gpus": [{"index": 0, "name": "NVIDIA H200", "memory_gb": 139.8}]}
    info = collect_diagnostics(registry=reg, model_choice=choice, torch_probe=lambda: probe)
    assert info["model"]["status"] == "checksum OK" and info["cache_dir"] == str(tmp_path)
    text = format_diagnostics(info)
    for expected in ("PyTorch: 2.5.1+cu124 (CUDA build: 12.4)", "CUDA available: yes",
                     "GPU 0: NVIDIA H200, 139.8 GB", f"Cache folder: {tmp_path}", "checksum OK",
                     hashlib.sha256(b"abc").hexdigest()):
        assert expected in text
    weights.write_bytes(b"changed")
    assert collect_diagnostics(model_choice=choice, torch_probe=lambda: probe)["model"]["status"] == "CHECKSUM MISMATCH"
    cpu = format_diagnostics(collect_diagnostics(torch_probe=lambda: {"torch": None, "torch_error": "No module"}))
    assert "PyTorch: not installed (No module)" in cpu


def test_diagnostics_real_torch_probe():
    pytest.importorskip("torch")
    from BrainFMSceneLib.diagnostics import probe_torch
    import sys

    import torch

    info = probe_torch(sys.executable)
    assert info["torch"] == torch.__version__ and isinstance(info["cuda_available"], bool)
