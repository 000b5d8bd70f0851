"""The engine's version lives in one leaf module, read by the package, the metadata and the model files."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import brainfm
from brainfm import _version

CORE = Path(brainfm.__file__).resolve().parents[1]


def test_the_package_version_is_the_leaf_modules():
    assert brainfm.__version__ == _version.__version__
    assert [int(p) for p in _version.__version__.split(".")] >= [0, 1, 0]
    tree = ast.parse(Path(_version.__file__).read_text())
    imported = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert [ast.unparse(n) for n in imported] == ["from __future__ import annotations"]  # a leaf: imports nothing


def test_the_build_reads_the_version_from_the_leaf_module():
    config = pytest.importorskip("setuptools.config.pyprojecttoml")
    project = config.read_configuration(CORE / "pyproject.toml", expand=True)["project"]
    assert project["version"] == _version.__version__
    text = (CORE / "pyproject.toml").read_text()
    assert re.search(r"^dynamic = \[\"version\"\]$", text, re.M)
    assert 'version = {attr = "brainfm._version.__version__"}' in text


def test_native_models_record_the_version(tmp_path):
    torch = pytest.importorskip("torch")
    import json

    from brainfm.models import BrainFMNet, ModelConfig, save_native

    torch.manual_seed(0)
    net = BrainFMNet(ModelConfig(f_maps=4, num_levels=2, num_groups=2, heads={"T1": 1}))
    _weights, sidecar = save_native(net, tmp_path / "tiny", info={"name": "tiny", "version": "0"})
    assert json.loads(Path(sidecar).read_text())["brainfm_version"] == _version.__version__
