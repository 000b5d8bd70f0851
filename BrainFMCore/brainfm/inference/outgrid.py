"""Former home of the output-grid mapper, kept so that old imports work: the mapping of
network-grid arrays onto another grid is :mod:`brainfm.geometry.mapping`.

>>> from brainfm.inference.outgrid import GridMapper
>>> import brainfm.geometry
>>> GridMapper is brainfm.geometry.GridMapper
True
"""
from __future__ import annotations

from brainfm.geometry.exact import copy_exact
from brainfm.geometry.mapping import CHANNEL_BLOCK_BYTES, GRID_CACHE_BYTES, GridMapper

__all__ = ["GridMapper", "GRID_CACHE_BYTES", "CHANNEL_BLOCK_BYTES", "copy_exact"]
