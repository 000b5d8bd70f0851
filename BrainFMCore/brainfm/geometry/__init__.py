"""Exact geometry: reorientation, resampling, cropping/padding (affine always updated), the
network frame with its inverse, and the fast grid-to-grid mapper that inverse runs on.

>>> import numpy as np
>>> from brainfm.volume import Volume
>>> from brainfm.geometry import to_network_frame
>>> v = Volume(np.random.default_rng(0).random((12, 12, 12)).astype("float32"), np.eye(4))
>>> net, tf = to_network_frame(v, crop_foreground=False)
>>> net.data is v.data                        # 1 mm RAS input: no interpolation at all
True
"""
from __future__ import annotations

from brainfm.geometry.crop import BBox, crop, crop_to_foreground, foreground_bbox, pad
from brainfm.geometry.frame import FrameTransform, to_network_frame
from brainfm.geometry.grid import resample_to_grid
from brainfm.geometry.mapping import GridMapper
from brainfm.geometry.orient import axcodes, is_axis_aligned, reorient_to_ras
from brainfm.geometry.resample import resample_to_spacing

__all__ = [
    "BBox", "crop", "crop_to_foreground", "foreground_bbox", "pad", "FrameTransform", "to_network_frame",
    "resample_to_grid", "GridMapper", "axcodes", "is_axis_aligned", "reorient_to_ras", "resample_to_spacing",
]
