"""Progress reporting and cooperative cancellation shared by every long operation.

A progress callback receives ``(fraction, message)`` with fraction in [0, 1].
Long loops call ``token.raise_if_cancelled()`` between steps.

>>> from brainfm.progress import CancelToken, scaled
>>> seen = []
>>> cb = scaled(lambda f, m: seen.append(round(f, 2)), 0.5, 1.0)
>>> cb(0.5, "half of the second half")
>>> seen
[0.75]
>>> t = CancelToken(); t.cancel(); t.cancelled
True
"""
from __future__ import annotations

import threading
from typing import Callable, Optional

from brainfm.errors import CancelledError

ProgressCallback = Callable[[float, str], None]


def _noop(fraction: float, message: str) -> None:  # pragma: no cover - trivial
    return None


class CancelToken:
    """Thread-safe flag checked between steps of long work."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Ask the running operation to stop at its next check."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        """Raise :class:`CancelledError` if :meth:`cancel` was called."""
        if self._event.is_set():
            raise CancelledError("cancelled by the user")


def ensure_callback(cb: Optional[ProgressCallback]) -> ProgressCallback:
    """Return ``cb`` or a no-op callback."""
    return cb if cb is not None else _noop


def scaled(cb: Optional[ProgressCallback], start: float, stop: float) -> ProgressCallback:
    """Map a sub-step's [0, 1] progress onto [start, stop] of the parent's progress."""
    cb = ensure_callback(cb)

    def inner(fraction: float, message: str) -> None:
        f = min(max(float(fraction), 0.0), 1.0)
        cb(start + (stop - start) * f, message)

    return inner
