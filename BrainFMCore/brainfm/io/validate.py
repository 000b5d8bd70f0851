"""Checks run on every input volume before inference: clear errors for unusable data,
warnings for suspicious data.

>>> import numpy as np
>>> from brainfm.volume import Volume
>>> img = Volume(np.random.default_rng(0).random((16, 16, 16)).astype("float32"), np.eye(4))
>>> validate_image(img)
[]
>>> lab = img.with_data((img.data > 0.5).astype("int16") * 17)
>>> validate_image(lab)[0].startswith("the image looks like a label map")
True
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from brainfm.errors import InputError
from brainfm.volume import Volume

MIN_SIZE = 8
#: voxels longer than this (mm) along any axis are refused unless allowed: slices that thick leave too
#: little of the anatomy (the real T1 cut into 9 mm slices still scores merged-17 Dice 0.73; see the
#: model card, "Thick slices")
MAX_SLICE_MM = 10.0
#: how the caller lets such voxels through, named in the refusal
_ALLOW_HINT = ("to run anyway pass allow_anisotropic=True (command line: --allow-anisotropic; Slicer and "
               f"BrainFM Web: tick 'Allow slices thicker than {MAX_SLICE_MM:g} mm')")
_SAMPLE = 2_000_000  # voxels examined by the label-map heuristic


def unusual_spacing(spacing: Sequence[float]) -> bool:
    """Whether voxel sizes (mm) suggest a header in other units: below 0.2 mm, above 10 mm, or coarser
    than 4 mm in-plane (along two axes). Thick clinical slices (e.g. 1 x 1 x 5 mm) are usual.

    >>> [unusual_spacing(s) for s in [(1, 1, 5), (0.1, 0.1, 0.1), (5, 5, 5), (1, 1, 12)]]
    [False, True, True, True]
    """
    sp = sorted(float(s) for s in spacing)
    return sp[0] < 0.2 or sp[-1] > 10.0 or sp[1] > 4.0


def slice_limit(allow_anisotropic: bool) -> Optional[float]:
    """The longest voxel edge (mm) accepted: :data:`MAX_SLICE_MM`, or None (any) when thick slices are allowed.

    >>> slice_limit(False), slice_limit(True)
    (10.0, None)
    """
    return None if allow_anisotropic else MAX_SLICE_MM


def check_scalar(shape: Sequence[int]) -> None:
    """Refuse a volume with several channels per voxel (``shape`` X, Y, Z, C): BrainFM needs a scalar image.

    >>> check_scalar((8, 8, 8))
    >>> check_scalar((8, 8, 8, 3))
    Traceback (most recent call last):
      ...
    brainfm.errors.InputError: the image has 3 channels per voxel; BrainFM needs a scalar 3D image (pick one ...
    """
    if len(shape) != 3:
        raise InputError(
            f"the image has {shape[3]} channels per voxel; BrainFM needs a scalar 3D image "
            "(pick one frame or channel first)"
        )


def check_grid(shape: Sequence[int], spacing: Sequence[float], *, where: str = "", min_size: int = MIN_SIZE,
               max_slice_mm: Optional[float] = MAX_SLICE_MM, max_anisotropy: Optional[float] = None) -> None:
    """The refusals of :func:`validate_image` that the grid alone decides (a file's header tells them):
    fewer than ``min_size`` voxels along an axis, voxels longer than ``max_slice_mm``, an anisotropy
    above ``max_anisotropy``. ``where`` starts the messages (``"scan.nii.gz: "``).

    >>> check_grid((64, 64, 12), (0.5, 0.5, 12.0), max_slice_mm=None)
    >>> check_grid((64, 64, 12), (0.5, 0.5, 12.0), where="thick.nii: ")
    Traceback (most recent call last):
      ...
    brainfm.errors.InputError: thick.nii: voxel size 0.5 x 0.5 x 12 mm: slices thicker than 10 mm are too thick ...
    """
    shape = tuple(int(n) for n in shape)[:3]
    if min(shape) < min_size:
        raise InputError(f"{where}the volume is too small ({'x'.join(map(str, shape))} voxels): BrainFM needs at "
                         f"least {min_size} voxels along every axis")
    sp = np.asarray(spacing, np.float64)
    ratio = float(sp.max() / sp.min())
    sp_txt = " x ".join(f"{s:.3g}" for s in sp)
    if max_slice_mm is not None and float(sp.max()) > max_slice_mm:
        if sorted(sp)[1] > 4.0:  # coarse in-plane too: no thick-slice scan, most likely a header in other units
            raise InputError(
                f"{where}voxel size {sp_txt} mm: voxels this large along two or three axes are not a brain scan's "
                "slices; the header most likely gives sizes in other units than millimetres: check it (e.g. "
                f"`nib-ls`, `fslhd`); if the sizes are right, {_ALLOW_HINT}")
        raise InputError(
            f"{where}voxel size {sp_txt} mm: slices thicker than {max_slice_mm:g} mm are too thick for reliable "
            f"results; {_ALLOW_HINT}")
    if max_anisotropy is not None and ratio > max_anisotropy:
        raise InputError(
            f"{where}voxel size {sp_txt} mm is extremely anisotropic (ratio {ratio:.1f} > {max_anisotropy:g}): "
            f"results on such thick slices will be unreliable; {_ALLOW_HINT}")


def check_image_header(path: Union[str, "os.PathLike[str]"], *, frame: Optional[int] = None,
                       allow_anisotropic: bool = False) -> None:
    """Refuse, from the file's header alone (milliseconds, no voxel read), what reading ``path``
    (:func:`brainfm.io.read_volume` with ``frame``) and then checking it as the image of a prediction
    (:func:`check_scalar`, :func:`validate_image` with :func:`slice_limit`) would refuse for its header:
    the same functions raise, so the message is the one the full read gives. Files whose header
    cannot be read cheaply (DICOM) pass, as does whatever only the voxels tell (NaN, empty, constant,
    truncated data).

    >>> import tempfile, os, nibabel as nib
    >>> p = os.path.join(tempfile.mkdtemp(), "thick.nii.gz")
    >>> nib.save(nib.Nifti1Image(np.zeros((64, 64, 12), np.float32), np.diag([0.5, 0.5, 12.0, 1.0])), p)
    >>> check_image_header(p, allow_anisotropic=True)
    >>> check_image_header(p)
    Traceback (most recent call last):
      ...
    brainfm.errors.InputError: thick.nii.gz: voxel size 0.5 x 0.5 x 12 mm: slices thicker than 10 mm are too ...
    """
    from brainfm.io.readers import read_header

    header = read_header(path, frame=frame)
    if header is None:
        return
    check_scalar(header.shape)
    check_grid(header.shape, header.spacing, where=_where(header.meta), max_slice_mm=slice_limit(allow_anisotropic))


def validate_image(volume: Volume, *, role: str = "image", max_anisotropy: Optional[float] = None,
                   min_size: int = MIN_SIZE, max_slice_mm: Optional[float] = MAX_SLICE_MM) -> List[str]:
    """Return warnings about ``volume``; raise :class:`InputError` when it cannot be used.

    Errors, in this order: the grid's (:func:`check_grid`: fewer than ``min_size`` voxels along an
    axis, voxels longer than ``max_slice_mm`` along an axis (slices that thick; ``None`` allows any),
    voxel anisotropy (largest / smallest voxel size) above ``max_anisotropy`` (default ``None``: any;
    the slice thickness, not the ratio, limits the results: 0.5 x 0.5 x 5 mm scores like 1 x 1 x 5
    mm)), then the voxels': NaN/Inf voxels (with their count), an empty (all-zero) volume, a
    constant image. Anisotropy above 3 gives a warning.
    ``role`` is ``"image"`` (an intensity image; warns when it looks like a label map) or
    ``"label"`` (a label map; must hold integer values). Messages start with the file's name when the volume was read from one
    (``meta["source_path"]``); warnings found while reading it (``meta["warnings"]``: header
    problems) come first. The label-map check looks at the stored integers of scaled images
    (``meta["scl_slope"]``/``meta["scl_inter"]``), so an intensity offset cannot fool it.
    """
    if role not in ("image", "label"):
        raise InputError(f"role must be 'image' or 'label', got {role!r}")
    where = _where(volume.meta)
    warnings: List[str] = [str(w) for w in volume.meta.get("warnings", []) or []]
    data = np.asarray(volume.data)
    check_grid(volume.shape, volume.spacing, where=where, min_size=min_size, max_slice_mm=max_slice_mm,
               max_anisotropy=max_anisotropy)
    if data.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise InputError(f"{where}the volume contains {bad} NaN/Inf voxels ({100.0 * bad / data.size:.3g}% of "
                             f"{data.size}); replace them (e.g. with 0) before running BrainFM")
    elif data.dtype.kind not in "iub":
        raise InputError(f"{where}unsupported voxel type {data.dtype}")
    lo, hi = data.min(), data.max()
    if lo == 0 and hi == 0:
        raise InputError(f"{where}the volume is empty: every voxel is zero")
    if role == "image" and lo == hi:
        raise InputError(f"{where}the image is constant (every voxel = {lo}); it holds no anatomy to analyse")
    sp = np.asarray(volume.spacing)
    ratio = float(sp.max() / sp.min())
    sp_txt = " x ".join(f"{s:.3g}" for s in sp)
    if ratio > 3.0:
        warnings.append(f"voxel size {sp_txt} mm is anisotropic (ratio {ratio:.1f}); details between the thick "
                        "slices are interpolated (outputs on a 1 mm grid: output_frame='1mm'; command line: "
                        "--output-frame 1mm; Slicer and BrainFM Web: Results grid 1 mm)")
    if unusual_spacing(sp):
        warnings.append(f"unusual voxel size {sp_txt} mm; check the file's header (units must be mm)")
    sample = _sample(data)
    if role == "image" and _looks_like_labels(*_stored(sample, data, volume.meta)):
        warnings.append("the image looks like a label map (few distinct integer values in uniform regions); "
                        "BrainFM expects an intensity image (MRI or CT); pass label maps as labels")
    if role == "label":
        if sample.dtype.kind == "f" and not np.array_equal(sample, np.round(sample)):
            raise InputError(f"{where}the label map holds non-integer values; it looks like an intensity image")
        n = np.unique(sample).size
        if n > 1000:
            warnings.append(f"the label map has {n} distinct values; it may be an intensity image")
    return warnings


def _where(meta: Mapping[str, Any]) -> str:
    """``"<file name>: "`` of the file a volume was read from, by its ``meta`` ("" when it was not)."""
    if meta.get("dicom_series"):
        return f"DICOM series {meta['dicom_series']}: "
    src = meta.get("source_path")
    return f"{Path(str(src)).name}: " if src else ""


def _stored(sample: np.ndarray, data: np.ndarray, meta) -> Tuple[np.ndarray, np.ndarray]:
    """``(sample, neighbour grid)``, as the integers stored on disk when the file scaled them
    (``value = stored * scl_slope + scl_inter``): a label map stays a label map, and an image's
    background stays 0, whatever the scaling. Only the examined subsample is converted."""
    slope, inter = meta.get("scl_slope"), meta.get("scl_inter")
    on_disk = str(meta.get("original_dtype", ""))
    scaled = slope is not None and inter is not None and (float(slope), float(inter)) != (1.0, 0.0)
    grid = _grid(data)
    if not scaled or not float(slope) or not on_disk.startswith(("int", "uint")):
        return sample, grid

    def unscale(a: np.ndarray) -> np.ndarray:
        return np.round((np.asarray(a, np.float64) - float(inter)) / float(slope))

    return unscale(sample), unscale(grid)


def _sample(data: np.ndarray) -> np.ndarray:
    flat = data.reshape(-1)
    step = max(1, flat.size // _SAMPLE)
    return flat[::step]


def _grid(data: np.ndarray) -> np.ndarray:
    """A strided view of ``data`` (about ``_SAMPLE`` voxels) whose neighbours along axis 0 are compared."""
    step = max(1, int(round((data.size / _SAMPLE) ** 0.5)))
    return data[:, ::step, ::step]


def _looks_like_labels(sample: np.ndarray, grid: np.ndarray) -> bool:
    """Integral values, at most 256 distinct ones, and either few values (<= 64) spread sparsely
    over their range (FreeSurfer numbers skip most integers; an 8-bit image uses most grey
    levels) or piecewise constant: inside the foreground most neighbouring voxels are equal
    (> 70 %), unlike a real image, whose noise and gradients make neighbours differ."""
    if sample.dtype.kind == "f" and not np.array_equal(sample, np.round(sample)):
        return False
    values = np.unique(sample)
    n = values.size
    if n > 256 or n < 2:
        return False
    if n <= 64 and n / (float(values[-1]) - float(values[0]) + 1.0) < 0.5:
        return True
    a, b = grid[:-1], grid[1:]
    fg = (a != 0) | (b != 0)
    if not fg.any():
        return False
    return float(np.mean(a[fg] == b[fg])) > 0.7
