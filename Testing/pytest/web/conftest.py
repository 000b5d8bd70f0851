"""Fixtures of the BrainFM Web tests: the web package on sys.path, a generated scan, a tiny model.

The session tests run on the extension-test environment (slicer-core of ``.venv``); the browser
test starts ``brainfm-web`` from the web environment (``.venv-web``, see README) and drives it with
Debian's chromium through Selenium.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "BrainFMSlicer" / "BrainFMWeb"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from web_helpers import write_model, write_scan  # noqa: E402


@pytest.fixture(scope="session")
def web_data(tmp_path_factory):
    """``(folder, scan, model)``: generated scan and tiny model in one folder."""
    folder = tmp_path_factory.mktemp("webdata")
    scan = write_scan(folder / "generated_head.nii.gz")
    model = write_model(folder / "tiny_fs33")
    return folder, scan, model
