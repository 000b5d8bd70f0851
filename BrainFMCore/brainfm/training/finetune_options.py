"""Options of a fine-tuning run (``brainfm finetune``): given values > a YAML config file > defaults.

>>> o = finetune_options({"steps": 50, "lr": None})
>>> o["steps"], o["lr"], o["mode"]
(50, 0.001, 'head')
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

from brainfm.errors import InputError

#: option -> default (the keyword arguments of :func:`brainfm.training.finetune.finetune`, plus
#: ``model``, the base model)
FINETUNE_DEFAULTS: Dict[str, Any] = {
    "model": "default", "task": "seg", "mode": "head", "head": None, "label_scheme": "fs33",
    "steps": 500, "minutes": 0.0, "lr": 1e-3, "size": 96, "n_samples": 2, "name": "brainfm-finetuned",
    "device": "auto", "resume": "auto", "feature_cache": True, "head_hidden": 32}


def read_finetune_config(path: Union[str, Path]) -> Dict[str, Any]:
    """The options of a fine-tuning YAML file; :class:`InputError` when it cannot be read or names
    unknown options."""
    import yaml

    try:
        with open(path) as fh:
            conf = yaml.safe_load(fh) or {}
    except (OSError, yaml.YAMLError) as e:
        raise InputError(f"cannot read fine-tuning config {path}: {e}") from None
    unknown = sorted(set(conf) - set(FINETUNE_DEFAULTS))
    if unknown:
        raise InputError(f"unknown fine-tuning config keys {unknown}; known: {sorted(FINETUNE_DEFAULTS)}")
    return conf


def finetune_options(given: Mapping[str, Any], *, config: Optional[Union[str, Path]] = None) -> Dict[str, Any]:
    """Every option of :data:`FINETUNE_DEFAULTS`: from ``given`` where it is not None, else from the
    YAML file ``config``, else the default."""
    conf = read_finetune_config(config) if config else {}
    out: Dict[str, Any] = {}
    for key, default in FINETUNE_DEFAULTS.items():
        value = given.get(key)
        out[key] = value if value is not None else conf.get(key, default)
    return out
