"""Fixtures for the BrainFMSceneLib tests on the slicer-core wheel.

Tests that need ``slicer`` request the ``scene`` fixture (or call ``pytest.importorskip``) and are
skipped with a message when slicer-core is not installed; static tests in this folder (module
files, .ui files) do not need it and keep running.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

# If a test folder named "slicer" were on sys.path, the slicer-core package's
# ``extend_path`` would adopt it as part of the ``slicer`` namespace and import every test module
# here as ``slicer.<module>`` (a circular import that breaks ``import slicer``). Import slicer once
# with this folder's parent hidden from sys.path; later ``import slicer`` statements get that module.
_HERE = Path(__file__).resolve().parent
if "slicer" not in sys.modules:
    _saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if (Path(p or ".").resolve() / "slicer") != _HERE]
    try:
        import slicer  # noqa: F401
    except ImportError:
        pass
    finally:
        sys.path[:] = _saved

SLICER_SKIP_REASON = "slicer-core wheel not installed (pip install slicer-core) - BrainFMSceneLib scene tests skipped"


@pytest.fixture()
def slicer_mod():
    """The ``slicer`` module (skips the test without slicer-core)."""
    return pytest.importorskip("slicer", reason=SLICER_SKIP_REASON)


@pytest.fixture()
def scene(slicer_mod):
    """A fresh MRML scene, also assigned to ``slicer.mrmlScene`` (some slicer.util helpers need it)."""
    s = slicer_mod.vtkMRMLScene()
    previous = getattr(slicer_mod, "mrmlScene", None)
    slicer_mod.mrmlScene = s
    yield s
    s.Clear(1)
    slicer_mod.mrmlScene = previous
