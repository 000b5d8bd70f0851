"""Fixtures shared by the ``brainfm run`` test modules: a tiny native model (T1 + 33-class
segmentation, random weights) and an environment with a private model cache and no torchrun or
atlas variables. Import both names into a test module to use them."""
from __future__ import annotations

import pytest

import ckpt_factory


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    _net, weights, _json = ckpt_factory.write_native(d / "tiny", heads={"T1": 1, "segmentation": 33})
    return weights


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINFM_HOME", str(tmp_path / "cache"))
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "BRAINFM_ATLAS"):
        monkeypatch.delenv(var, raising=False)
