"""BrainFM engine: one brain foundation model, many tasks, any contrast.

Public entry points (each documented in its module):

>>> from brainfm import Volume
>>> import numpy as np
>>> v = Volume(np.zeros((4, 5, 6), np.float32), np.eye(4))
>>> v.shape, v.spacing
((4, 5, 6), (1.0, 1.0, 1.0))
"""
from __future__ import annotations

from brainfm._version import __version__
from brainfm.volume import Volume
from brainfm.errors import (
    BrainFMError,
    InputError,
    CheckpointError,
    ModelNotAvailableError,
    CancelledError,
    ResourceError,
    StorageError,
)
from brainfm.progress import CancelToken, ProgressCallback

__all__ = [
    "__version__",
    "Volume",
    "BrainFMError",
    "InputError",
    "CheckpointError",
    "ModelNotAvailableError",
    "CancelledError",
    "ResourceError",
    "StorageError",
    "CancelToken",
    "ProgressCallback",
]


def __getattr__(name: str):  # lazy access to the heavier layers
    if name == "Predictor":
        from brainfm.inference import Predictor

        return Predictor
    raise AttributeError(f"module 'brainfm' has no attribute {name!r}")
