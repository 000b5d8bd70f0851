"""What the engine ships (code, docstrings, package data, its README) speaks to users about the
product: no machine paths of the computer it was built on, no notes about how the work was organised."""
from __future__ import annotations

import json
import re
from pathlib import Path

import brainfm

CORE = Path(brainfm.__file__).resolve().parents[1]
TEXT_SUFFIXES = {".py", ".json", ".md", ".txt", ".yaml", ".yml", ".csv", ".toml"}
NOT_FOR_USERS = re.compile(r"/work/|\bbriefs?\b|\bengineers?\b|\bthe issue\b|reference_impl|reference §", re.IGNORECASE)


def shipped_text_files():
    files = [p for p in (CORE / "brainfm").rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES]
    return sorted(files + [CORE / "README.md", CORE / "pyproject.toml"])


def test_shipped_files_hold_no_machine_paths_or_work_notes():
    files = shipped_text_files()
    assert CORE / "brainfm" / "evaluation" / "anchors.json" in files and len(files) > 100
    found = [f"{p.relative_to(CORE)}:{n}: {line.strip()[:100]}"
             for p in files for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if NOT_FOR_USERS.search(line)]
    assert found == []


def test_the_anchors_say_what_they_are_and_how_they_were_measured():
    anchors = json.loads((CORE / "brainfm" / "evaluation" / "anchors.json").read_text())
    assert set(anchors) == {"n4_seg3d", "n4_applied_t1", "synthesis_baseline", "registration"}
    for name, anchor in anchors.items():
        assert anchor["what"].startswith("Anchor of the "), name
        assert anchor["command"].startswith("python -m brainfm.evaluation.anchors --data ../shared/data --only "), name
        assert not re.search(r"(^|\s)/", anchor["command"]), f"{name}: absolute path in {anchor['command']!r}"
