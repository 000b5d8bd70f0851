"""A tiny pure-Python signal (connect / disconnect / emit).

PyQt-style custom signals are not available (or crash) under PythonQt, so the library reports
events through this class; the Slicer widgets connect plain callables to it.

>>> from BrainFMSceneLib.signals import Signal
>>> s = Signal("float, str")
>>> seen = []
>>> s.connect(lambda f, m: seen.append((f, m)))
>>> s.emit(0.5, "half way")
>>> seen
[(0.5, 'half way')]
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, List

_log = logging.getLogger(__name__)


class Signal:
    """A list of callbacks called in connection order by :meth:`emit`.

    A callback that raises is logged and does not stop the others (a broken GUI slot must not
    abort a running job). ``signature`` is documentation only.
    """

    def __init__(self, signature: str = "") -> None:
        self.signature = signature
        self._slots: List[Callable[..., Any]] = []
        self._lock = threading.Lock()

    def connect(self, slot: Callable[..., Any]) -> None:
        """Call ``slot(*args)`` on every :meth:`emit` (connecting the same slot twice is a no-op)."""
        if not callable(slot):
            raise TypeError(f"slot must be callable, got {type(slot).__name__}")
        with self._lock:
            if slot not in self._slots:
                self._slots.append(slot)

    def disconnect(self, slot: Callable[..., Any]) -> None:
        """Remove ``slot``; disconnecting a slot that is not connected is a no-op."""
        with self._lock:
            if slot in self._slots:
                self._slots.remove(slot)

    def disconnect_all(self) -> None:
        """Remove every slot."""
        with self._lock:
            self._slots.clear()

    def emit(self, *args: Any) -> None:
        """Call every connected slot with ``args``."""
        with self._lock:
            slots = list(self._slots)
        for slot in slots:
            try:
                slot(*args)
            except Exception:  # noqa: BLE001 - a broken slot must not stop the others
                _log.exception("BrainFM signal slot %r raised", slot)

    def __len__(self) -> int:
        return len(self._slots)
