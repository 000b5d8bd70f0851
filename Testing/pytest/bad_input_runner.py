"""Run one bad-input scenario of :mod:`bad_inputs` through ``brainfm run`` in-process and record
what a user sees: exit code, first message line, what was written, whether the inputs changed."""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

from file_fixtures import sha256


@dataclass
class Scenario:
    """One run: ``argv`` for ``brainfm``, the ``inputs`` that must stay unchanged, the expected
    exit code and message (a regular expression searched in the first line), and ``written``:
    None when nothing at all may be written, else the entries expected in ``out``."""

    argv: List[str]
    inputs: List[Path]
    out: Path
    code: int
    message: str
    written: Optional[List[str]] = None
    patches: List[Tuple[Any, str, Any]] = field(default_factory=list)
    check: Optional[Callable[["Outcome"], None]] = None
    cleanup: Optional[Callable[[], None]] = None
    note: str = ""
    skip: Optional[str] = None


@dataclass
class Outcome:
    code: int
    first_line: str
    stderr: str
    written: List[str]
    inputs_unchanged: bool
    scenario: Scenario


def mount_tmpfs(path: Path, size: str, *, read_only: bool = False) -> Optional[Callable[[], None]]:
    """Mount a small tmpfs at ``path`` (needs root); returns the unmount function, None if impossible."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        return None
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, check=False)
    if res.returncode != 0:
        return None
    return lambda: subprocess.run(["umount", str(path)], capture_output=True, check=False) and None


def _tree(root: Path) -> List[str]:
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def run_scenario(scenario: Scenario, base: Path) -> Outcome:
    """Run ``brainfm`` for ``scenario`` in-process (its patches applied, then undone); ``written``
    lists every path that appeared under ``base``."""
    from brainfm.cli import main

    digests = {p: sha256(p) for p in scenario.inputs}
    before = set(_tree(base))
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in scenario.patches]
    err, std = io.StringIO(), io.StringIO()
    try:
        for obj, name, value in scenario.patches:
            setattr(obj, name, value)
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
            code = main(list(scenario.argv))
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)
    text = err.getvalue()
    lines = [x for x in text.splitlines() if x.startswith("brainfm: ")]
    first = next((x for x in lines if x.startswith("brainfm: error: ")), None)
    if first is None:
        # warnings about the input, not the checks of the random-weight model's labels
        first = next((x for x in lines if x.startswith(("brainfm: warning: ", "brainfm: skipped "))
                      and "segmentation check: " not in x), None)
    if first is None:
        first = lines[-1] if lines else ""
    written = sorted(set(_tree(base)) - before)
    unchanged = all(p.exists() and sha256(p) == d for p, d in digests.items())
    return Outcome(int(code), first, text, written, unchanged, scenario)


def out_entries(outcome: Outcome, base: Path) -> List[str]:
    """What the run wrote directly in its output folder (names), from ``outcome.written``."""
    rel = os.path.relpath(outcome.scenario.out, base)
    return sorted({w[len(rel) + 1:].split(os.sep)[0] for w in outcome.written if w.startswith(rel + os.sep)})
