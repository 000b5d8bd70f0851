"""Each module's in-Slicer self-test (``<Module>Test().runTest()``, what Slicer's Reload-and-Test
button runs) on the real MRML scene of slicer-core: tiny random-weight models, real ``brainfm`` child
processes, the module classes imported through ``slicer_app_stubs``."""
from __future__ import annotations

import importlib

import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core wheel not installed")

import slicer_app_stubs  # noqa: E402

slicer_app_stubs.install()

from slicer_static_helpers import TASK_MODULES  # noqa: E402


@pytest.mark.parametrize("module", [*TASK_MODULES, "BrainFMCommon"])
def test_module_self_test_passes(module, scene, tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINFM_HOME", str(tmp_path / "home"))  # a self-test must not need the user's store
    test = getattr(importlib.import_module(module), f"{module}Test")()
    shown = []
    test.delayDisplay = lambda message, *args, **kwargs: shown.append(message)
    test.runTest()
    assert not any(m.startswith("Skipped") for m in shown), shown  # every step ran (a failure raises)
