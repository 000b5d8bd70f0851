"""Progress reporting and signal handling for the ``brainfm`` command.

Modes: ``bar`` (tqdm on stderr), ``machine`` (lines ``BRAINFM_PROGRESS <fraction> <message>`` on
stdout, flushed, for the Slicer child process) and ``none``. Reported fractions never go
backwards. Failures in machine mode are one ``BRAINFM_ERROR {"type": ..., "message": ...}`` line.
The lines themselves are formatted and parsed by :mod:`brainfm.progress_protocol` (whose names this
module re-exports).

>>> import io
>>> buf = io.StringIO()
>>> r = ProgressReporter("machine", stream=buf)
>>> r(0.5, "half"); r(0.25, "late message"); r.close()
>>> buf.getvalue().splitlines()
['BRAINFM_PROGRESS 0.5000 half', 'BRAINFM_PROGRESS 0.5000 late message']
>>> parse_progress_line("BRAINFM_PROGRESS 0.5000 half")
(0.5, 'half')
"""
from __future__ import annotations

import signal
import sys
from typing import Any, Callable, Dict, Optional, TextIO

from brainfm.progress import CancelToken
from brainfm.progress_protocol import (  # noqa: F401 - re-exported: the protocol as seen from the command line
    ERROR_PREFIX,
    PROGRESS_PREFIX,
    format_error_line,
    format_progress_line,
    one_line,
    parse_progress_line,
)

MODES = ("bar", "machine", "none")
#: the machine-mode error line of an exception (:func:`brainfm.progress_protocol.format_error_line`)
error_line = format_error_line


class ProgressReporter:
    """Callable ``(fraction, message)`` that prints in the chosen ``mode``; monotone."""

    def __init__(self, mode: str = "bar", *, stream: Optional[TextIO] = None) -> None:
        if mode not in MODES:
            raise ValueError(f"progress mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.stream = stream
        self.last = 0.0
        self._bar: Any = None

    def __call__(self, fraction: float, message: str) -> None:
        f = min(max(float(fraction), self.last), 1.0)
        self.last = f
        if self.mode == "machine":
            out = self.stream or sys.stdout
            out.write(format_progress_line(f, message) + "\n")
            out.flush()
        elif self.mode == "bar":
            if self._bar is None:
                from tqdm import tqdm

                self._bar = tqdm(total=1000, file=self.stream or sys.stderr, unit="", leave=True,
                                 bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")
            self._bar.update(int(round(f * 1000)) - self._bar.n)
            self._bar.set_postfix_str(one_line(message)[:60], refresh=True)

    def note(self, text: str) -> None:
        """Print a line for the user on stderr (above the bar when one is shown), in every mode."""
        if self._bar is not None:
            self._bar.write(text, file=self.stream or sys.stderr)
        else:
            stream = sys.stderr if self.mode == "machine" or self.stream is None else self.stream
            stream.write(one_line(text) + "\n")
            stream.flush()

    def close(self) -> None:
        """Finish the bar (no-op in other modes)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def report_error(exc: BaseException, *, machine: bool, debug: bool = False) -> None:
    """Print ``exc`` as one line (stderr), plus the machine line on stdout in machine mode."""
    if debug:
        import traceback

        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    sys.stderr.write(f"brainfm: error: {one_line(str(exc)) or type(exc).__name__}\n")
    sys.stderr.flush()
    if machine:
        sys.stdout.write(format_error_line(exc) + "\n")
        sys.stdout.flush()


class CancelOnSignal:
    """Context manager: SIGTERM/SIGINT cancel ``token`` (the work stops at its next check);
    a second signal raises KeyboardInterrupt at once. Handlers are restored on exit."""

    SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGINT", None)) if s is not None)

    def __init__(self, token: CancelToken, *, on_cancel: Optional[Callable[[str], None]] = None) -> None:
        self.token = token
        self.on_cancel = on_cancel
        self._old: Dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.token.cancelled:
            raise KeyboardInterrupt
        self.token.cancel()
        if self.on_cancel is not None:
            self.on_cancel(signal.Signals(signum).name)

    def __enter__(self) -> "CancelOnSignal":
        for s in self.SIGNALS:
            try:
                self._old[s] = signal.signal(s, self._handler)
            except (ValueError, OSError):  # not the main thread
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
