"""Error types: the engine's (``brainfm.errors``) when it is installed, else look-alikes.

The library must import before ``brainfm`` is installed (the install step runs first), so it
cannot import ``brainfm`` unconditionally. When ``brainfm`` is importable the engine's classes are
used, so ``except brainfm.errors.InputError`` works on errors raised here too.

>>> from BrainFMSceneLib._errors import InputError, BrainFMError
>>> issubclass(InputError, BrainFMError) and InputError.exit_code == 2
True
"""
from __future__ import annotations

try:
    from brainfm.errors import (  # noqa: F401
        BrainFMError,
        CancelledError,
        CheckpointError,
        InputError,
        ModelNotAvailableError,
        ResourceError,
        StorageError,
    )
except ImportError:  # pragma: no cover - exercised only without the brainfm package

    class BrainFMError(Exception):  # type: ignore[no-redef]
        """Base class; ``exit_code`` mirrors the ``brainfm`` command."""

        exit_code = 1

    class InputError(BrainFMError, ValueError):  # type: ignore[no-redef]
        exit_code = 2

    class CheckpointError(BrainFMError):  # type: ignore[no-redef]
        exit_code = 3

    class ModelNotAvailableError(BrainFMError):  # type: ignore[no-redef]
        exit_code = 3

    class ResourceError(BrainFMError, RuntimeError):  # type: ignore[no-redef]
        exit_code = 4

    class StorageError(BrainFMError, OSError):  # type: ignore[no-redef]
        exit_code = 5

    class CancelledError(BrainFMError):  # type: ignore[no-redef]
        exit_code = 130


#: error type name (as printed in ``BRAINFM_ERROR {"type": ...}``) -> class
ERROR_TYPES = {
    cls.__name__: cls
    for cls in (BrainFMError, InputError, CheckpointError, ModelNotAvailableError, ResourceError, StorageError,
                CancelledError)
}
#: exit code -> class (used when the child died without a BRAINFM_ERROR line)
EXIT_CODE_TYPES = {2: InputError, 3: CheckpointError, 4: ResourceError, 5: StorageError, 130: CancelledError}
