"""Exception types of the engine. Every user-facing failure is one of these, with a message
that says what is wrong and what to do about it.

>>> from brainfm.errors import InputError
>>> try:
...     raise InputError("volume is 2D; BrainFM needs a 3D volume")
... except InputError as e:
...     print(e.exit_code)
2
"""
from __future__ import annotations


class BrainFMError(Exception):
    """Base class. ``exit_code`` is what the ``brainfm`` command exits with."""

    exit_code: int = 1


class InputError(BrainFMError, ValueError):
    """The input file, volume or option cannot be processed (2D, 4D, NaN, constant, ...)."""

    exit_code = 2


class CheckpointError(BrainFMError):
    """A weights file is unreadable, tampered with (SHA-256 mismatch) or of the wrong architecture."""

    exit_code = 3


class ModelNotAvailableError(BrainFMError):
    """The requested model (e.g. the bundled default) is not present on this machine."""

    exit_code = 3


class ResourceError(BrainFMError, RuntimeError):
    """Out of memory or device unavailable; the message says which setting to change."""

    exit_code = 4


class StorageError(BrainFMError, OSError):
    """I/O error: an output cannot be written (read-only location, disk full, no permission) or
    the operating system reported another I/O failure.

    The message names the file or folder and says what to do; nothing partial is left behind.
    """

    exit_code = 5


class CancelledError(BrainFMError):
    """The caller cancelled the operation (``CancelToken.cancel()``)."""

    exit_code = 130
