"""Pre-processing shared by every prediction (reference ``prepare_image`` semantics):

read (if a path) -> validate -> CT window (inputs that look like CT in HU, min < -500 and
max > 1000, are clamped to [0, 80] HU like the reference's ``is_CT``) -> min-max normalisation to
[0, 1] on the input grid -> :func:`brainfm.geometry.to_network_frame` (RAS, 1 mm, optional
foreground crop). The input Volume is never modified.

>>> import numpy as np
>>> from brainfm.volume import Volume
>>> from brainfm.inference.preprocess import normalise
>>> v = Volume(np.array([[[-2.0, 0.0], [2.0, 6.0]]] * 2, np.float32), np.eye(4))
>>> n, (lo, hi), ct = normalise(v)
>>> float(n.data.min()), float(n.data.max()), lo, hi, ct
(0.0, 1.0, -2.0, 6.0, False)
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Tuple, Union

import numpy as np

from brainfm.errors import InputError
from brainfm.volume import Volume

CT_DETECT_MIN = -500.0
CT_DETECT_MAX = 1000.0
CT_WINDOW = (0.0, 80.0)
#: on CT, voxels above this many HU are the head (tissue, fluid, bone) and the rest air: the foreground
#: (the window would put fluid at or below 0 HU, e.g. in the ventricles, with the air)
CT_AIR_HU = -200.0

ImageLike = Union[Volume, str, "os.PathLike[str]"]


@dataclass
class Prepared:
    """Everything the forward and the post-processors need from the input."""

    image: Volume  # the input as given (never modified)
    net: Volume  # normalised [0, 1] image on the network frame
    frame: Any  # brainfm.geometry.FrameTransform
    norm_range: Tuple[float, float]
    ct_window: bool
    foreground_in: np.ndarray  # on the input grid: normalised input > 0 (CT: above CT_AIR_HU), inside the head's box
    warnings: List[str] = field(default_factory=list)
    head: Optional[np.ndarray] = None  # the head mask on the network grid, when the net was cropped to it
    masked: Optional[bool] = None  # the input's background is masked (zeros); None: not known
    head_in: Optional[np.ndarray] = None  # ``head`` on the input grid (nearest), when ``head`` is set


def load_image(image: ImageLike) -> Volume:
    """A Volume from a Volume or a file path (:func:`brainfm.io.read_volume`)."""
    if isinstance(image, Volume):
        return image
    if isinstance(image, (str, Path)) or hasattr(image, "__fspath__"):
        from brainfm.io import read_volume

        return read_volume(image)
    raise InputError(f"image must be a brainfm Volume or a file path, got {type(image).__name__}")


def looks_like_ct(data: np.ndarray) -> bool:
    """True when intensities look like CT Hounsfield units (min < -500 and max > 1000)."""
    return bool(float(np.min(data)) < CT_DETECT_MIN and float(np.max(data)) > CT_DETECT_MAX)


def foreground(image: Volume, normalised: Volume, *, ct: bool) -> np.ndarray:
    """The input's foreground (bool, its grid): the normalised image above 0 (a skull-stripped scan's
    brain), or on CT the voxels above :data:`CT_AIR_HU` (not air).

    >>> from brainfm.volume import Volume
    >>> hu = Volume(np.array([-1000.0, -5.0, 40.0, 1500.0]).reshape(4, 1, 1), np.eye(4))
    >>> norm, _, ct = normalise(hu)
    >>> foreground(hu, norm, ct=ct).ravel().tolist()   # fluid below 0 HU is not air
    [False, True, True, True]
    """
    if ct:
        return np.asarray(image.data) > CT_AIR_HU
    return np.asarray(normalised.data) > 0


def normalise(image: Volume) -> Tuple[Volume, Tuple[float, float], bool]:
    """(min-max normalised copy in [0, 1], (lo, hi) removed, CT window applied?)."""
    data = np.asarray(image.data, np.float32)
    ct = looks_like_ct(data)
    if ct:
        data = np.clip(data, *CT_WINDOW)
    lo, hi = float(data.min()), float(data.max())
    if not hi > lo:
        raise InputError(
            "the image is constant after the CT window [0, 80] HU" if ct else "the image is constant"
        )
    norm = ((data - lo) / (hi - lo)).astype(np.float32)
    return image.with_data(norm), (lo, hi), ct


def crop_to_head(net: Volume, frame: Any, *, spacing: float, margin_mm: float = 4.0
                 ) -> Tuple[Volume, Any, Optional[np.ndarray]]:
    """``(net, frame, head)``: the network image of a scan whose background is noise (not the zeros of a
    masked scan, which the foreground crop has taken away already) cropped to the box of its head mask
    (:func:`brainfm.inference.headmask.head_mask`) grown by ``margin_mm``, the frame transform of the
    cropped grid, and the head mask on it; unchanged, with ``head`` None, when the box is the whole
    grid. The network then works on the head, not on the air around it.

    >>> from brainfm.geometry import to_network_frame
    >>> rng = np.random.default_rng(0)
    >>> img = rng.rayleigh(0.01, (60, 60, 60)).astype(np.float32)
    >>> img[20:40, 15:45, 10:50] = 0.5                                  # a head in a noisy field of view
    >>> net, frame = to_network_frame(Volume(img, np.eye(4)), spacing=2.0)
    >>> net.shape
    (30, 30, 30)
    >>> cropped, frame2, head = crop_to_head(net, frame, spacing=2.0)
    >>> cropped.shape == head.shape == frame2.net_shape, cropped.shape      # the head and 4 mm around it
    (True, (18, 22, 28))
    """
    from brainfm.geometry import crop
    from brainfm.geometry.crop import foreground_bbox, margin_voxels
    from brainfm.inference.headmask import head_mask

    x = np.asarray(net.data, np.float32)
    if x.ndim != 3:
        return net, frame, None
    mask = head_mask(x, voxel_mm=spacing, masked=False)
    box = foreground_bbox(Volume(mask, net.affine), threshold=None, margin_vox=margin_voxels(margin_mm, spacing))
    if box is None or all(a == 0 and b == n for (a, b), n in zip(box, x.shape)):
        return net, frame, None
    return crop(net, box), frame.cropped(box), np.ascontiguousarray(mask[tuple(slice(a, b) for a, b in box)])


def prepare(image: ImageLike, *, crop_foreground: bool = True, allow_anisotropic: bool = False,
            spacing: float = 1.0, antialias: bool = True) -> Prepared:
    """Read, validate, normalise and move ``image`` to the network frame (RAS, ``spacing`` mm).

    ``allow_anisotropic`` accepts slices thicker than :data:`brainfm.io.validate.MAX_SLICE_MM`
    (10 mm; refused by default: results on such thick slices are unreliable). ``spacing`` is the
    model's working voxel size (:attr:`brainfm.models.ModelInfo.voxel_mm`); ``antialias`` whether the
    image is low-pass filtered before it is resampled to a coarser grid
    (:attr:`brainfm.models.ModelInfo.input_antialias`)."""
    from brainfm.geometry import to_network_frame
    from brainfm.inference.headmask import is_masked
    from brainfm.io import validate_image
    from brainfm.io.validate import check_scalar, slice_limit

    vol = load_image(image)
    check_scalar(vol.data.shape)  # these checks, made on a file's header: brainfm.io.validate.check_image_header
    warnings = list(validate_image(vol, role="image", max_slice_mm=slice_limit(allow_anisotropic)))
    norm, rng, ct = normalise(vol)
    if ct:
        warnings.append(
            f"the input looks like CT in Hounsfield units (min {float(np.min(vol.data)):.0f}, "
            f"max {float(np.max(vol.data)):.0f}); clamped to [0, 80] HU before normalising, like the reference"
        )
    net, frame = to_network_frame(norm, spacing=spacing, crop_foreground=crop_foreground, antialias=antialias)
    fg = foreground(vol, norm, ct=ct)
    head, head_in, masked = None, None, is_masked(norm.data)
    if crop_foreground and not ct and not masked:
        net, frame, head = crop_to_head(net, frame, spacing=spacing)
        if head is not None:
            # one nearest mapping gives both: 0 outside the head's box, 1 in the box, 2 in the head
            level = np.asarray(frame.mapper()(head.astype(np.uint8) + np.uint8(1), "nearest", 0))
            fg &= level > 0  # outside the box the outputs are background, as for a masked scan
            head_in = level == 2
    return Prepared(
        image=vol,
        net=net,
        frame=frame,
        norm_range=rng,
        ct_window=ct,
        foreground_in=fg,
        warnings=warnings,
        head=head,
        masked=masked,
        head_in=head_in,
    )
