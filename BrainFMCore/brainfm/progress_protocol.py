"""The machine progress protocol: the lines a ``brainfm`` command prints for a parent process.

``--progress machine`` makes a command print ``BRAINFM_PROGRESS <fraction> <message>`` lines on
stdout (fraction with 4 decimals, message on one line) and, when it fails, one
``BRAINFM_ERROR {"type": ..., "message": ..., "exit_code": ...}`` line. The Slicer modules start
``python -m brainfm`` as a child process and read these lines. This module formats and parses them;
it imports nothing of the engine, so every layer can use it.

>>> line = format_progress_line(0.5, "reading  scan.nii")
>>> line
'BRAINFM_PROGRESS 0.5000 reading scan.nii'
>>> parse_progress_line(line)
(0.5, 'reading scan.nii')
>>> parse_progress_line("some other output") is None
True
>>> err = format_error_line(ValueError("bad\\nvalue"))
>>> err
'BRAINFM_ERROR {"type": "ValueError", "message": "bad value", "exit_code": 1}'
>>> parse_error_line(err)["message"]
'bad value'
"""
from __future__ import annotations

import json
from typing import Any, Dict, Optional, Tuple

PROGRESS_PREFIX = "BRAINFM_PROGRESS"
ERROR_PREFIX = "BRAINFM_ERROR"


def one_line(text: Any) -> str:
    """``text`` with every run of white space (newlines included) made one space.

    >>> one_line(" a\\n b  c ")
    'a b c'
    """
    return " ".join(str(text).split())


def format_progress_line(fraction: float, message: str) -> str:
    """The progress line for ``fraction`` (printed as given, 4 decimals) and ``message``."""
    return f"{PROGRESS_PREFIX} {float(fraction):.4f} {one_line(message)}"


def parse_progress_line(line: str) -> Optional[Tuple[float, str]]:
    """``(fraction, message)`` of a progress line, None for other lines."""
    parts = line.rstrip("\n").split(" ", 2)
    if len(parts) < 2 or parts[0] != PROGRESS_PREFIX:
        return None
    try:
        return float(parts[1]), (parts[2] if len(parts) > 2 else "")
    except ValueError:
        return None


def format_error_line(exc: BaseException) -> str:
    """The error line for ``exc``: its class name, one-line message and exit code (1 when it has none)."""
    return f"{ERROR_PREFIX} " + json.dumps({"type": type(exc).__name__, "message": one_line(str(exc)),
                                            "exit_code": int(getattr(exc, "exit_code", 1))})


def parse_error_line(line: str) -> Optional[Dict[str, Any]]:
    """The ``{"type", "message", "exit_code"}`` record of an error line, None for other lines
    (or an error line whose record is not a JSON object)."""
    text = line.rstrip("\n")
    if not text.startswith(ERROR_PREFIX + " "):
        return None
    try:
        record = json.loads(text[len(ERROR_PREFIX) + 1:])
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
