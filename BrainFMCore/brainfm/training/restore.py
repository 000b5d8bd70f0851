"""The network of a training checkpoint, rebuilt from the configuration stored with it.

A checkpoint folder (``<run>/checkpoints/step_N``, with ``meta.json``) records the training
configuration; :func:`model_from_checkpoint` builds that architecture and loads the weights
(strict, SHA-256 checked). :func:`find_checkpoint` accepts the checkpoint folder itself or a run
folder (its latest complete checkpoint).

>>> import tempfile
>>> find_checkpoint(tempfile.mkdtemp()) is None   # a folder without checkpoints
True
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch

from brainfm.training.checkpoint import latest_checkpoint, load_checkpoint, read_meta
from brainfm.training.config import TrainConfig
from brainfm.training.trainer import build_model

PathLike = Union[str, Path]


def find_checkpoint(path: PathLike) -> Optional[Path]:
    """``path`` when it is a checkpoint folder, else the latest complete checkpoint of the run
    folder ``path``; None when there is none."""
    p = Path(path)
    return p if (p / "meta.json").is_file() else latest_checkpoint(p)


def model_from_checkpoint(checkpoint: PathLike, *, use_average: bool = True
                          ) -> Tuple[torch.nn.Module, TrainConfig, Dict[str, Any]]:
    """``(network, its training configuration, the checkpoint's meta)`` of a checkpoint folder;
    :class:`~brainfm.errors.CheckpointError` when it is not a complete training checkpoint.

    The network holds the moving average of the weights when the run kept one (the model the run
    exports), else its last weights; ``use_average=False`` always gives the last weights."""
    meta = read_meta(checkpoint)
    cfg = TrainConfig.from_dict(meta.get("config") or {})
    net = build_model(cfg)
    load_checkpoint(checkpoint, model=net, restore_rng=False, use_average=use_average)
    return net, cfg, meta
