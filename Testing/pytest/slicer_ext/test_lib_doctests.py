"""Run the ``>>>`` examples in every BrainFMLib module docstring (they must stay runnable)."""
from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["signals", "parameters", "_errors", "volume_nodes", "volume_files", "label_tables", "scene_utils",
           "segmentation_nodes", "transform_nodes", "table_nodes", "results", "process", "registry", "install",
           "diagnostics", "job"]
NEEDS_SLICER = {"volume_nodes", "volume_files", "scene_utils", "segmentation_nodes", "transform_nodes",
                "table_nodes", "results", "job"}


@pytest.mark.parametrize("name", MODULES)
def test_module_examples(name):
    if name in NEEDS_SLICER:
        pytest.importorskip("slicer", reason="slicer-core wheel not installed")
    module = importlib.import_module(f"BrainFMLib.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} failing example(s) in BrainFMLib.{name}"
    if name not in ("_errors",):
        assert result.attempted > 0 or name == "job", f"BrainFMLib.{name} has no runnable example"
