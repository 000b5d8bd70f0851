"""The network frame: RAS voxel order, isotropic spacing (1 mm), optional foreground crop,
and the exact way back to the input grid.

>>> import numpy as np
>>> from brainfm.volume import Volume
>>> d = np.zeros((30, 30, 20), np.float32); d[5:25, 6:24, 4:16] = 1.0
>>> lps = np.diag([-1.0, -1.0, 1.5, 1.0])                      # LPS-stored, 1.5 mm slices
>>> net, tf = to_network_frame(Volume(d, lps))
>>> np.diag(net.affine).tolist(), net.shape
([1.0, 1.0, 1.0, 1.0], (28, 26, 28))
>>> back = tf.to_input(net)
>>> back.shape == (30, 30, 20) and bool(np.allclose(back.affine, lps))
True
>>> FrameTransform.from_dict(tf.to_dict()).net_shape == tf.net_shape
True
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np

from brainfm.errors import InputError
from brainfm.geometry.crop import BBox, _translate, crop, foreground_bbox, margin_voxels
from brainfm.geometry.grid import resample_to_grid
from brainfm.geometry.mapping import GridMapper
from brainfm.geometry.orient import is_axis_aligned, reorient_to_ras
from brainfm.geometry.resample import check_order, resample_to_spacing
from brainfm.volume import Volume


@dataclass(frozen=True)
class FrameTransform:
    """How an input grid maps to the network frame (and back).

    ``method``: ``"exact"`` (axis permutation/flip only, no interpolation), ``"separable"``
    (axis-aligned input resampled along its axes, reference recipe) or ``"grid"`` (oblique input
    resampled onto a RAS grid). ``crop_bbox`` is the crop inside the uncropped net grid.
    """

    input_affine: np.ndarray
    input_shape: Tuple[int, int, int]
    net_affine: np.ndarray
    net_shape: Tuple[int, int, int]
    spacing: float = 1.0
    method: str = "exact"
    crop_bbox: Optional[BBox] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_affine", np.asarray(self.input_affine, dtype=np.float64))
        object.__setattr__(self, "net_affine", np.asarray(self.net_affine, dtype=np.float64))
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        object.__setattr__(self, "net_shape", tuple(int(s) for s in self.net_shape))
        if self.crop_bbox is not None:
            object.__setattr__(self, "crop_bbox", tuple((int(a), int(b)) for a, b in self.crop_bbox))

    def cropped(self, box: BBox) -> "FrameTransform":
        """This frame with its network grid cut to ``box`` (half-open voxel ranges of the current net
        grid, as :func:`~brainfm.geometry.crop.crop` takes them): the same voxels at the same world
        positions, ``crop_bbox`` composed with the crop already made.

        >>> import numpy as np
        >>> tf = FrameTransform(np.eye(4), (10, 10, 10), np.eye(4), (10, 10, 10), crop_bbox=((2, 10),) * 3)
        >>> c = tf.cropped(((1, 5), (0, 8), (3, 4)))
        >>> c.net_shape, c.crop_bbox, c.net_affine[:3, 3].tolist()
        ((4, 8, 1), ((3, 7), (2, 10), (5, 6)), [1.0, 0.0, 3.0])
        """
        from dataclasses import replace

        outer = self.crop_bbox or tuple((0, n) for n in self.net_shape)
        composed = tuple((o + int(a), o + int(b)) for (a, b), (o, _end) in zip(box, outer))
        return replace(self, net_affine=_translate(self.net_affine, [a for a, _ in box]),
                       net_shape=tuple(int(b) - int(a) for a, b in box), crop_bbox=composed)

    # -- mapping ------------------------------------------------------------------------------
    def mapper(self, *, antialias: bool = True) -> GridMapper:
        """The :class:`~brainfm.geometry.mapping.GridMapper` from the network frame to the input grid:
        build it once to map many outputs (it keeps its sampling grid); :meth:`to_input` uses it.

        >>> import numpy as np
        >>> tf = FrameTransform(np.diag([-1.0, -1.0, 1.0, 1.0]), (4, 4, 4), np.eye(4), (4, 4, 4))
        >>> tf.mapper().kind                    # LPS-stored 1 mm input: the way back is a voxel copy
        'exact'
        """
        return GridMapper(self.net_affine, self.net_shape, self.input_affine, self.input_shape, antialias=antialias)

    def to_input(self, net_volume: Volume, *, order: str = "linear", fill: float = 0.0,
                 antialias: bool = True) -> Volume:
        """Bring a volume on the net grid back onto the exact input grid (same shape and affine
        as the input). ``order="nearest"`` for label maps (dtype kept), ``"linear"`` otherwise;
        input voxels outside the (cropped) net grid get ``fill``. Same values as
        :func:`~brainfm.geometry.resample_to_grid` onto the input grid, computed by
        :meth:`mapper` (exact copies when the grids share voxels)."""
        check_order(order)
        if not _same_grid(net_volume, self.net_affine, self.net_shape):
            raise InputError(f"volume grid {net_volume.shape} does not match the network frame {self.net_shape}")
        return self.mapper(antialias=antialias).volume(net_volume, order=order, fill=fill)

    def to_frame(self, volume: Volume, *, order: str = "linear") -> Volume:
        """Push another volume on the input grid (a mask, a second contrast, a label map) into the
        same network frame, with the same steps as :func:`to_network_frame`."""
        check_order(order)
        if not _same_grid(volume, self.input_affine, self.input_shape):
            raise InputError(f"volume grid {volume.shape} does not match the input grid {self.input_shape}")
        if self.method == "grid":  # pull-back per voxel: resample straight onto the (cropped) net grid
            ras = reorient_to_ras(volume)
            net = resample_to_grid(ras, self.net_affine, self.net_shape, order=order, fill=_background(ras, order))
        else:
            net = _uncropped(volume, self.spacing, order, self.method)
            if self.crop_bbox is not None:
                net = crop(net, self.crop_bbox)
        if not _same_grid(net, self.net_affine, self.net_shape):  # pragma: no cover - internal consistency
            raise InputError("internal error: network frame could not be reproduced")
        return net

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        """JSON-serialisable dictionary (lists and numbers only)."""
        return {
            "input_affine": self.input_affine.tolist(),
            "input_shape": list(self.input_shape),
            "net_affine": self.net_affine.tolist(),
            "net_shape": list(self.net_shape),
            "spacing": float(self.spacing),
            "method": self.method,
            "crop_bbox": None if self.crop_bbox is None else [list(b) for b in self.crop_bbox],
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "FrameTransform":
        """Inverse of :meth:`to_dict`."""
        bbox = d.get("crop_bbox")
        return cls(np.asarray(d["input_affine"]), tuple(d["input_shape"]), np.asarray(d["net_affine"]),
                   tuple(d["net_shape"]), float(d.get("spacing", 1.0)), str(d.get("method", "grid")),
                   None if bbox is None else tuple(tuple(b) for b in bbox))


def _same_grid(v: Volume, affine: np.ndarray, shape: Tuple[int, int, int]) -> bool:
    return v.shape == tuple(shape) and bool(np.allclose(v.affine, affine, atol=1e-4))


def _method(ras: Volume, spacing: float) -> str:
    """How a volume already in RAS voxel order reaches the net frame."""
    if not is_axis_aligned(ras.affine):
        return "grid"
    if np.allclose(ras.spacing, spacing, rtol=0, atol=1e-6):
        return "exact"
    return "separable"


def _ras_grid(volume: Volume, spacing: float) -> Tuple[np.ndarray, Tuple[int, int, int]]:
    """Axis-aligned RAS grid of ``spacing`` covering the volume's world box, centred on it."""
    n = np.asarray(volume.shape, dtype=np.float64)
    corners = np.array([[a, b, c] for a in (-0.5, n[0] - 0.5) for b in (-0.5, n[1] - 0.5)
                        for c in (-0.5, n[2] - 0.5)])
    world = volume.world_of(corners)
    lo, hi = world.min(axis=0), world.max(axis=0)
    shape = tuple(max(1, int(math.ceil((h - l) / spacing - 1e-6))) for l, h in zip(lo, hi))
    centre = volume.world_of((n - 1) / 2.0)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = centre - (np.asarray(shape) - 1) / 2.0 * spacing
    return affine, shape  # type: ignore[return-value]


def _background(volume: Volume, order: str) -> float:
    """Value outside the field of view: 0 for label maps, the image minimum otherwise (so that
    "foreground = above the minimum" also holds for CT in Hounsfield units)."""
    if order == "nearest" or volume.data.size == 0:
        return 0.0
    return float(np.min(volume.data))


def _uncropped(volume: Volume, spacing: float, order: str, method: str, *, ras: Optional[Volume] = None,
               antialias: bool = True) -> Volume:
    ras = reorient_to_ras(volume) if ras is None else ras
    if method == "exact":
        return ras
    if method == "separable":
        return resample_to_spacing(ras, spacing, order=order, exact=True, antialias=antialias)
    affine, shape = _ras_grid(ras, spacing)
    return resample_to_grid(ras, affine, shape, order=order, fill=_background(ras, order), antialias=antialias)


def _foreground_subgrid(ras: Volume, affine: np.ndarray, shape: Tuple[int, int, int], threshold: Optional[float],
                        grow_mm: float) -> Optional[BBox]:
    """Box of the RAS grid ``(affine, shape)`` that holds the source foreground grown by ``grow_mm``
    (so that an oblique volume is resampled only where the crop will keep voxels)."""
    src = foreground_bbox(ras, threshold=threshold, margin_vox=0)
    if src is None:
        return None
    corners = np.array([[a, b, c] for a in (src[0][0] - 0.5, src[0][1] - 0.5) for b in (src[1][0] - 0.5, src[1][1] - 0.5)
                        for c in (src[2][0] - 0.5, src[2][1] - 0.5)])
    world = ras.world_of(corners)
    inv = np.linalg.inv(affine)
    lo = (world.min(axis=0) - grow_mm) @ inv[:3, :3].T + inv[:3, 3]
    hi = (world.max(axis=0) + grow_mm) @ inv[:3, :3].T + inv[:3, 3]
    box = tuple((max(0, int(math.floor(a))), min(n, int(math.ceil(b)) + 1)) for a, b, n in zip(lo, hi, shape))
    return box if all(a < b for a, b in box) else None  # type: ignore[return-value]


def to_network_frame(volume: Volume, *, spacing: float = 1.0, crop_foreground: bool = True,
                     margin_mm: float = 4.0, is_label: bool = False,
                     threshold: Optional[float] = None, antialias: bool = True) -> Tuple[Volume, FrameTransform]:
    """Bring ``volume`` into the network frame: RAS voxel order, ``spacing`` mm isotropic, the
    net affine diagonal and positive. Steps: exact reorientation; resampling (Gaussian anti-alias
    on downsampled axes then trilinear, or nearest for ``is_label``); for oblique inputs a
    world-coordinate resampling onto a RAS grid; optional crop to the foreground box
    (voxels > ``threshold``, default: above the image minimum; labels: non-zero) grown by
    ``margin_mm``. Input already RAS at ``spacing`` without crop: the same array is returned.
    ``antialias=False`` skips the Gaussian filter (the grid and the interpolation stay the same).
    Returns ``(net_volume, transform)``; ``transform.to_input`` maps results back exactly.
    """
    if spacing <= 0:
        raise InputError(f"spacing must be positive, got {spacing}")
    spacing = float(spacing)
    order = "nearest" if is_label else "linear"
    ras = reorient_to_ras(volume)
    method = _method(ras, spacing)
    if is_label:
        thr: Optional[float] = None
    elif threshold is not None:
        thr = float(threshold)
    else:  # above the background; interpolated background is only equal to it up to rounding
        thr = _background(ras, order)
        if method != "exact" and ras.data.size:
            thr += 1e-5 * float(np.max(ras.data) - thr)
    margin = margin_voxels(margin_mm, spacing)
    offset = np.zeros(3, dtype=int)
    if method == "grid" and crop_foreground:  # resample only around the foreground
        full_aff, full_shape = _ras_grid(ras, spacing)
        support = 3.0 * max(ras.spacing) + 2.0 * spacing  # interpolation + anti-alias reach
        sub = _foreground_subgrid(ras, full_aff, full_shape, thr, margin * spacing + support)
        sub = sub or tuple((0, n) for n in full_shape)  # type: ignore[assignment]
        offset = np.array([a for a, _ in sub])
        sub_aff = full_aff.copy()
        sub_aff[:3, 3] = full_aff[:3, :3] @ offset + full_aff[:3, 3]
        net = resample_to_grid(ras, sub_aff, tuple(b - a for a, b in sub), order=order,
                               fill=_background(ras, order), antialias=antialias)
    else:
        net = _uncropped(volume, spacing, order, method, ras=ras, antialias=antialias)
    bbox: Optional[BBox] = None
    if crop_foreground:
        local = foreground_bbox(net, threshold=thr, margin_vox=margin)
        if local is not None:
            net = crop(net, local)
            bbox = tuple((a + o, b + o) for (a, b), o in zip(local, offset))  # type: ignore[assignment]
        elif method == "grid":
            bbox = tuple((o, o + n) for o, n in zip(offset, net.shape))  # type: ignore[assignment]
    tf = FrameTransform(volume.affine.copy(), volume.shape, net.affine.copy(), net.shape, spacing, method, bbox)
    return net, tf
