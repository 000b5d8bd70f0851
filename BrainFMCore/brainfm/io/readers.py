"""Read 3D volumes (NIfTI, MGH/MGZ via nibabel; NRRD, MetaImage via SimpleITK) as
:class:`~brainfm.volume.Volume` with an exact voxel -> RAS affine.

>>> import tempfile, os, numpy as np
>>> from brainfm.volume import Volume
>>> from brainfm.io import write_volume
>>> d = tempfile.mkdtemp()
>>> p = write_volume(Volume(np.ones((8, 9, 10), np.float32), np.diag([2., 1, 1, 1])), os.path.join(d, "a.nrrd"))
>>> v = read_volume(p)
>>> v.shape, v.spacing, v.meta["source_format"]
((8, 9, 10), (2.0, 1.0, 1.0), 'nrrd')
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np

from brainfm.errors import InputError
from brainfm.io.formats import EXTENSIONS, is_supported, split_ext
from brainfm.io.sitk_bridge import LPS_TO_RAS, affine_from_itk  # noqa: F401 (LPS_TO_RAS: public here)
from brainfm.volume import Volume


VECTOR_INTENTS = ("vector", "displacement vector")


def read_volume(path: Union[str, "os.PathLike[str]"], *, frame: Optional[int] = None,
                kind: str = "auto") -> Volume:
    """Read a 3D volume file.

    ``frame`` picks one volume of a 4D (time series / multi-channel) file; NIfTI vector files
    written by :func:`brainfm.io.write_volume` are returned as (X, Y, Z, C) without it.
    ``kind``: ``"auto"`` keeps integer voxel types (label maps, 8-bit images) and turns every
    float type into float32; ``"image"`` always returns float32; ``"label"`` returns integers
    (int32 when the file stores integral floats) and refuses non-integer values.
    ``meta`` gets ``source_path``, ``source_format``, ``original_dtype`` (the on-disk voxel type;
    and ``intent``, ``frame`` when relevant). NIfTI files also give ``scl_slope``/``scl_inter``
    (the intensity scaling that was applied), ``header`` (qform/sform codes, which transform the
    results follow, their disagreement), ``nifti_geometry`` (the raw header fields that outputs on
    this grid repeat, see :mod:`brainfm.io.nifti_header`) and ``warnings``. The raw header is
    checked before nibabel repairs it: a zero voxel size or a singular sform is refused, naming the
    header field. A DICOM file (``.dcm``, or any file with the DICOM mark) is read with its whole
series (:mod:`brainfm.io.dicom`).
    Every failure is an :class:`InputError` that names the file and says what to do.
    """
    if kind not in ("auto", "image", "label"):
        raise InputError(f"kind must be 'auto', 'image' or 'label', got {kind!r}")
    p = Path(path).expanduser()
    if p.name.lower().endswith(".dcm") or (not is_supported(p) and p.is_file()):
        from brainfm.io.dicom import is_dicom_file, read_dicom_file

        if is_dicom_file(p):
            return read_dicom_file(p, kind=kind)
    _stem, ext = split_ext(p)
    fmt, lib = EXTENSIONS[ext]
    if not p.exists():
        raise InputError(f"input file not found: {p}")
    if p.is_dir():
        raise InputError(f"input path {p} is a folder, not an image file")
    extra: Dict[str, Any] = {}
    if lib == "nibabel":
        arr, affine, orig_dtype, intent, extra = _read_nibabel(p)
    else:
        arr, affine, orig_dtype, intent = _read_sitk(p)
    arr, meta = _pick_frame(arr, p, frame, intent)
    if 1 in arr.shape[:3]:
        raise InputError(f"{p.name} is a 2D image (shape {tuple(arr.shape[:3])}); BrainFM needs a 3D volume")
    geometry = extra.pop("geometry", None)
    if geometry is not None:  # raw-header checks, after the 2D check (2D files often have pixdim[3] = 0)
        from brainfm.io.nifti_header import inspect_geometry

        g = inspect_geometry(p, geometry)
        meta.update(header=g.summary, nifti_geometry=g.fields, warnings=list(g.warnings))
    if not arr.dtype.isnative:  # MGH stores big-endian; downstream code (torch) needs native order
        arr = arr.astype(arr.dtype.newbyteorder("="))
    arr = _convert_dtype(arr, kind, p)
    meta.update(extra)
    meta.update(source_path=str(p.resolve()), source_format=fmt,
                original_dtype=np.dtype(orig_dtype).newbyteorder("=").name)
    return make_volume(arr, affine, meta, p)


def make_volume(arr: np.ndarray, affine: np.ndarray, meta: Dict[str, Any], p: Path) -> Volume:
    """A :class:`Volume`; a geometry it refuses (singular or non-finite affine) is reported with the file's name."""
    try:
        return Volume(np.ascontiguousarray(arr), affine, meta)
    except InputError as e:
        raise InputError(f"{p.name}: {e}; fix the file's header before running BrainFM") from None


def _unreadable(p: Path, e: BaseException) -> InputError:
    return InputError(f"cannot read {p.name}: the file is unreadable, corrupt or truncated "
                      f"({type(e).__name__}: {e})")


def _read_nibabel(p: Path) -> Tuple[np.ndarray, np.ndarray, np.dtype, Optional[str], Dict[str, Any]]:
    import nibabel as nib
    from nibabel.imageglobals import LoggingOutputSuppressor

    extra: Dict[str, Any] = {}
    try:
        with LoggingOutputSuppressor():  # nibabel's header repairs are reported by inspect_geometry
            img = nib.load(str(p), mmap=False)
        orig_dtype = img.get_data_dtype()
        arr = np.asanyarray(img.dataobj)
        if isinstance(arr, np.memmap):  # never keep the file mapped
            arr = np.array(arr)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as e:  # nibabel raises many types (ImageFileError, EOFError, zlib.error...)
        raise _unreadable(p, e) from e
    if isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        extra["geometry"] = img
        slope, inter = getattr(img.dataobj, "slope", 1.0), getattr(img.dataobj, "inter", 0.0)
        extra.update(scl_slope=float(slope), scl_inter=float(inter))
    intent = None
    hdr = img.header
    if hasattr(hdr, "get_intent"):
        try:
            intent = hdr.get_intent()[0]
        except Exception:  # unknown intent code: not one of ours
            intent = None
    if arr.ndim < 3:
        raise InputError(f"{p.name} is a {arr.ndim}D image (shape {arr.shape}); BrainFM needs a 3D volume")
    return arr, affine, orig_dtype, intent, extra


def detached_data_file(p: Path) -> Optional[Path]:
    r"""The voxel data file that a detached header (MetaImage ``.mhd``, NRRD ``.nhdr``) names, or None for
    other files and for headers that hold their own data (``LOCAL``) or name a list of files.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "scan.mhd").write_text("NDims = 3\nElementDataFile = scan.raw\n")
    >>> detached_data_file(d / "scan.mhd").name
    'scan.raw'
    """
    name = p.name.lower()
    if not (name.endswith(".mhd") or name.endswith(".nhdr")):
        return None
    try:
        lines = p.read_text(encoding="latin-1", errors="replace").splitlines()[:200]
    except OSError:
        return None
    keys = ("elementdatafile",) if name.endswith(".mhd") else ("data file", "datafile")
    for line in lines:
        key, sep, value = line.partition("=" if name.endswith(".mhd") else ":")
        value = value.strip()
        if sep and key.strip().lower() in keys:
            if not value or value.upper() == "LOCAL" or value.upper().startswith("LIST") or "%" in value or " " in value:
                return None
            return (p.parent / value) if not Path(value).is_absolute() else Path(value)
    return None


def _read_sitk(p: Path) -> Tuple[np.ndarray, np.ndarray, np.dtype, Optional[str]]:
    import SimpleITK as sitk

    data_file = detached_data_file(p)
    if data_file is not None and not data_file.is_file():
        raise InputError(f"cannot read {p.name}: its voxels are in a separate file, {data_file.name}, which is "
                         f"missing (looked for {data_file}); copy it next to {p.name}")
    try:
        img = sitk.ReadImage(str(p))
        arr = sitk.GetArrayFromImage(img)
    except Exception as e:  # RuntimeError from ITK
        raise _unreadable(p, e) from e
    return sitk_arrays(img, arr, p)


def sitk_arrays(img: Any, arr: np.ndarray, p: Path) -> Tuple[np.ndarray, np.ndarray, np.dtype, Optional[str]]:
    """``(array [i, j, k (, c)], RAS affine, dtype, None)`` of a SimpleITK image and its numpy array."""
    dim = img.GetDimension()
    if dim < 3:
        raise InputError(f"{p.name} is a {dim}D image (size {img.GetSize()}); BrainFM needs a 3D volume")
    ncomp = img.GetNumberOfComponentsPerPixel()
    if dim > 4 or (dim == 4 and ncomp > 1):
        raise InputError(f"{p.name} has {dim} dimensions and {ncomp} components per voxel; "
                         "BrainFM reads 3D volumes (optionally one frame of a 4D file)")
    # numpy order from ITK is reversed ([t,] z, y, x [, c]); BrainFM wants [i, j, k (, t or c)]
    order = list(range(dim))[::-1] + ([dim] if ncomp > 1 else [])
    arr = np.transpose(arr, order)
    affine = affine_from_itk(img.GetDirection(), img.GetSpacing(), img.GetOrigin())
    return arr, affine, arr.dtype, None


def _pick_frame(arr: np.ndarray, p: Path, frame: Optional[int],
                intent: Optional[str]) -> Tuple[np.ndarray, Dict[str, Any]]:
    meta: Dict[str, Any] = {}
    is_vector = intent in VECTOR_INTENTS
    if arr.ndim == 5 and arr.shape[3] == 1:  # NIfTI vector layout (X, Y, Z, 1, C)
        arr = arr[:, :, :, 0, :]
    while arr.ndim > 3 and arr.shape[-1] == 1:  # size-1 time/channel axes
        arr = arr[..., 0]
    if arr.ndim > 4:
        raise InputError(f"{p.name} has {arr.ndim} dimensions (shape {arr.shape}); BrainFM reads 3D volumes")
    if arr.ndim == 4:
        n = int(arr.shape[3])
        if frame is None:
            if is_vector:
                meta["intent"] = "displacement" if intent == "displacement vector" else "vector"
                return arr, meta
            raise InputError(
                f"{p.name} is 4D with {n} frames/channels (shape {arr.shape}); BrainFM needs one 3D volume: "
                f"pick one with frame=N (command line: --frame N), N from 0 to {n - 1}")
        if not (0 <= int(frame) < n):
            raise InputError(f"frame {frame} is out of range: {p.name} has {n} frames (0 to {n - 1})")
        meta.update(frame=int(frame), n_frames=n)
        return arr[..., int(frame)], meta
    if frame is not None and int(frame) != 0:
        raise InputError(f"frame {frame} is out of range: {p.name} is a single 3D volume (only frame 0)")
    return arr, meta


def _convert_dtype(arr: np.ndarray, kind: str, p: Path) -> np.ndarray:
    if arr.dtype.names:   # NIfTI RGB / RGBA: a record per voxel
        raise InputError(f"{p.name} is a colour (RGB) image with voxels of {', '.join(arr.dtype.names)}; BrainFM "
                         "needs a grey-scale scan: save the scan itself, not a rendering of it")
    if arr.dtype.kind == "c":
        raise InputError(f"{p.name} holds complex-valued voxels; BrainFM needs a magnitude image: save the "
                         "magnitude (the absolute value) of the complex data and run it on that")
    if arr.dtype.kind not in "iubf":
        raise InputError(f"{p.name}: voxels of type {arr.dtype} are not an image BrainFM can read")
    is_int = arr.dtype.kind in "iub"
    if kind == "image" or (kind == "auto" and not is_int):
        return arr.astype(np.float32, copy=False)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if kind == "label" and not is_int:
        finite = np.isfinite(arr)
        if not finite.all() or not np.array_equal(arr, np.round(arr)):
            raise InputError(f"{p.name} is not a label map: it holds non-integer or non-finite values")
        if arr.size and (arr.min() < np.iinfo(np.int32).min or arr.max() > np.iinfo(np.int32).max):
            raise InputError(f"{p.name}: label values exceed the int32 range")
        return arr.astype(np.int32)
    if arr.dtype.itemsize == 8 or arr.dtype == np.uint32:
        if arr.size and (arr.min() < np.iinfo(np.int32).min or arr.max() > np.iinfo(np.int32).max):
            return arr.astype(np.float32) if kind == "auto" else _raise_range(p)
        return arr.astype(np.int32)
    return arr


def _raise_range(p: Path) -> np.ndarray:
    raise InputError(f"{p.name}: label values exceed the int32 range")
