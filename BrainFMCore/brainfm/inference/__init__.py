"""Inference: :class:`Predictor` (load once, predict many), whole-volume or tiled execution under a
memory budget, device/precision selection, and the :class:`Prediction` result.

>>> from brainfm.inference import Predictor, Prediction, select_device
>>> select_device("cpu").type
'cpu'
"""
from __future__ import annotations

from brainfm.inference.device import autocast_dtype, default_budget_bytes, forward_bytes_per_voxel, select_device
from brainfm.inference.prediction import TILING_NOTE, Prediction
from brainfm.inference.predictor import Predictor
from brainfm.inference.tiling import TileAccumulator, blend_window, choose_tile_size, plan_tiles

__all__ = [
    "Predictor",
    "Prediction",
    "TILING_NOTE",
    "select_device",
    "autocast_dtype",
    "default_budget_bytes",
    "forward_bytes_per_voxel",
    "plan_tiles",
    "blend_window",
    "choose_tile_size",
    "TileAccumulator",
]
