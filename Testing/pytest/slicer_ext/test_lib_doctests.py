"""Run the ``>>>`` examples in every BrainFMSceneLib module docstring (they must stay runnable)."""
from __future__ import annotations

import doctest
import importlib

import pytest

from slicer_static_helpers import SCENE_LIB

#: the package and every module of it, found by walking its folder (a new module is checked too)
MODULES = ["__init__"] + sorted(p.stem for p in SCENE_LIB.glob("*.py") if p.stem != "__init__")
NEEDS_SLICER = {"volume_nodes", "volume_files", "scene_utils", "segmentation_nodes", "transform_nodes",
                "table_nodes", "results", "job"}


@pytest.mark.parametrize("name", MODULES)
def test_module_examples(name):
    if name in NEEDS_SLICER:
        pytest.importorskip("slicer", reason="slicer-core wheel not installed")
    module = importlib.import_module("BrainFMSceneLib" if name == "__init__" else f"BrainFMSceneLib.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} failing example(s) in BrainFMSceneLib.{name}"
    if name not in ("_errors",):
        assert result.attempted > 0 or name == "job", f"BrainFMSceneLib.{name} has no runnable example"


def test_every_module_is_walked():
    assert {"__init__", "_errors", "former_names", "model_add", "process", "registry", "volume_nodes"} <= set(MODULES)
