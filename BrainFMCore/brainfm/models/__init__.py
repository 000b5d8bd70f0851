"""BrainFM networks, checkpoints and the model/atlas registry.

Heavy (torch) names are imported lazily so that ``brainfm.models.registry`` stays torch-free for the
Slicer side.

>>> from brainfm.models import ModelConfig
>>> ModelConfig(f_maps=8, num_levels=3).level_channels
[8, 16, 32]
"""
from __future__ import annotations

from typing import Any

_LAZY = {
    "UNet3D": "brainfm.models.unet",
    "TaskHeads": "brainfm.models.heads",
    "BrainFMNet": "brainfm.models.net",
    "ModelConfig": "brainfm.models.config",
    "OFFICIAL_HEADS": "brainfm.models.config",
    "ModelInfo": "brainfm.models.common",
    "LoadedModel": "brainfm.models.common",
    "infer_config": "brainfm.models.common",
    "BRAINFM_OUTPUT_UNITS": "brainfm.models.common",
    "load_model": "brainfm.models.loading",
    "save_native": "brainfm.models.checkpoint_native",
    "resolve_model": "brainfm.models.registry",
    "resolve_atlas": "brainfm.models.registry",
    "sha256_file": "brainfm.models.registry",
    "cache_dir": "brainfm.models.registry",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'brainfm.models' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():  # pragma: no cover - interactive help
    return __all__
