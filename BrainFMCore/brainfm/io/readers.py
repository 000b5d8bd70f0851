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

:func:`read_header` makes the checks of :func:`read_volume` that a file's header decides, without
reading its voxels (milliseconds), with the same functions and so the same messages:

>>> h = read_header(p)
>>> h.shape, h.spacing
((8, 9, 10), (2.0, 1.0, 1.0))
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from brainfm.errors import InputError
from brainfm.io.content import name_misleads, open_by_content
from brainfm.io.formats import EXTENSIONS, is_supported, split_ext
from brainfm.io.sitk_bridge import LPS_TO_RAS, affine_from_itk  # noqa: F401 (LPS_TO_RAS: public here)
from brainfm.volume import Volume, check_affine, voxel_sizes


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
    if _is_dicom(p):
        from brainfm.io.dicom import read_dicom_file

        return read_dicom_file(p, kind=kind)
    fmt, lib = _format(p)
    extra: Dict[str, Any] = {}
    if lib == "nibabel":
        arr, affine, orig_dtype, intent, extra = _read_nibabel(p)
    else:
        arr, affine, orig_dtype, intent = _read_sitk(p)
    arr, meta = _pick_frame(arr, p, frame, intent)
    _check_3d(arr.shape, p)
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


@dataclass(frozen=True)
class VolumeHeader:
    """What a file's header says of the volume :func:`read_volume` would return (its voxels unread):
    ``shape`` (X, Y, Z, or X, Y, Z, C for a vector field), the voxel -> RAS ``affine`` and ``meta``
    (``source_path`` and, as :func:`read_volume` gives them, ``intent``, ``frame``, ``n_frames``)."""

    shape: Tuple[int, ...]
    affine: np.ndarray
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def spacing(self) -> Tuple[float, float, float]:
        """Voxel size in mm along voxel axes 0, 1, 2, as :attr:`Volume.spacing` gives it."""
        return voxel_sizes(self.affine)


def read_header(path: Union[str, "os.PathLike[str]"], *, frame: Optional[int] = None) -> Optional[VolumeHeader]:
    """The checks of :func:`read_volume` (with ``frame``) that the file's header decides, made on the
    header alone; raises the :class:`InputError` that :func:`read_volume` raises for the same file, made
    by the same functions: a file that cannot be found or opened, not 3D (2D; 4D or more without
    ``frame``, or ``frame`` out of range), colour or complex voxels, a zero voxel size, a singular or
    non-finite affine, NIfTI positions in metres or microns, the missing voxel file of a ``.mhd`` or
    ``.nhdr``. Returns the header, or None when it cannot be read cheaply: DICOM files (their whole
    series is read by :mod:`brainfm.io.dicom`) and files that ITK cannot read the header of (the full
    read gives their message). A file that passes may still be refused when its voxels are read
    (truncated or corrupt data). Reads no voxels: milliseconds.

    >>> import tempfile, os, nibabel as nib
    >>> p = os.path.join(tempfile.mkdtemp(), "bold.nii.gz")
    >>> nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 5), np.float32), np.eye(4)), p)
    >>> read_header(p, frame=2).shape
    (8, 8, 8)
    >>> read_header(p)
    Traceback (most recent call last):
      ...
    brainfm.errors.InputError: bold.nii.gz is 4D with 5 frames/channels (shape (8, 8, 8, 5)); BrainFM needs ...
    """
    p = Path(path).expanduser()
    if _is_dicom(p):
        return None
    fmt, lib = _format(p)
    nifti = False
    if lib == "nibabel":
        if fmt == "mgh":
            found_mgh = _mgh_header(p)
            if found_mgh is None:  # the full read names what nibabel cannot read
                return None
            shape, affine, dtype = found_mgh
            intent = None
        else:
            img, affine, dtype = _open_nibabel(p)
            shape = tuple(int(n) for n in img.shape)
            intent, nifti = _intent(img.header), isinstance(img, _nifti_types())
        _check_nibabel_dims(shape, p)
    else:
        _check_data_file(p)
        found = _itk_header(p)
        if found is None:  # the full read names what ITK cannot read
            return None
        reader, affine = found
        dim, ncomp, dtype = _itk_voxels(reader)
        _check_itk_dims(dim, ncomp, reader.GetSize(), p)
        shape = tuple(int(n) for n in reader.GetSize()) + ((ncomp,) if ncomp > 1 else ())
        intent = None
    picked, meta = _pick_frame(_shape_only(shape), p, frame, intent)
    _check_3d(picked.shape, p)
    if nifti:  # the raw-header checks of inspect_geometry
        from brainfm.io.nifti_header import check_raw_header

        check_raw_header(p)
    check_voxel_type(dtype, p)
    meta["source_path"] = str(p.resolve())
    return VolumeHeader(tuple(int(n) for n in picked.shape), check_file_affine(affine, p), meta)


def _nifti_types() -> Tuple[type, ...]:
    """nibabel's NIfTI-1 and NIfTI-2 image classes (whose raw header is checked)."""
    import nibabel as nib

    return (nib.Nifti1Image, nib.Nifti2Image)


def _shape_only(shape: Sequence[int]) -> np.ndarray:
    """A read-only array of ``shape`` that takes no memory (every element is the same byte): the
    checks of :func:`read_volume` that look at the shape run unchanged on a header.

    >>> a = _shape_only((256, 256, 256, 4)); a.shape, a.nbytes > 0, a.strides
    ((256, 256, 256, 4), True, (0, 0, 0, 0))
    """
    return np.broadcast_to(np.zeros((), np.uint8), tuple(shape))


def _is_dicom(p: Path) -> bool:
    """True for a file that :func:`read_volume` reads as DICOM: a ``.dcm`` file, or a file of another
    type than :data:`EXTENSIONS` that has the DICOM mark."""
    if p.name.lower().endswith(".dcm") or (not is_supported(p) and p.is_file()):
        from brainfm.io.dicom import is_dicom_file

        return is_dicom_file(p)
    return False


def _format(p: Path) -> Tuple[str, str]:
    """``(format, library)`` of the image file ``p``; :class:`InputError` for an unknown type, a missing
    file or a folder."""
    _stem, ext = split_ext(p)
    if not p.exists():
        raise InputError(f"input file not found: {p}")
    if p.is_dir():
        raise InputError(f"input path {p} is a folder, not an image file")
    return EXTENSIONS[ext]


def _check_3d(shape: Sequence[int], p: Path) -> None:
    """Refuse a volume one voxel thick (after the frame is picked): a 2D image."""
    if 1 in tuple(shape)[:3]:
        raise InputError(f"{p.name} is a 2D image (shape {tuple(shape)[:3]}); BrainFM needs a 3D volume")


def check_file_affine(affine: np.ndarray, p: Path) -> np.ndarray:
    """``affine`` as a :class:`Volume` keeps it (:func:`brainfm.volume.check_affine`); its refusal
    (singular or non-finite) names the file ``p``.

    >>> check_file_affine(np.diag([1.0, 1.0, 0.0, 1.0]), Path("flat.nii"))
    Traceback (most recent call last):
      ...
    brainfm.errors.InputError: flat.nii: affine is singular (zero voxel size or degenerate axes); fix the file's ...
    """
    try:
        return check_affine(affine)
    except InputError as e:
        raise InputError(f"{p.name}: {e}; fix the file's header before running BrainFM") from None


def make_volume(arr: np.ndarray, affine: np.ndarray, meta: Dict[str, Any], p: Path) -> Volume:
    """A :class:`Volume`; a geometry it refuses (singular or non-finite affine) is reported with the
    file's name (:func:`check_file_affine`)."""
    return Volume(np.ascontiguousarray(arr), check_file_affine(affine, p), meta)


def _unreadable(p: Path, e: BaseException) -> InputError:
    return InputError(f"cannot read {p.name}: the file is unreadable, corrupt or truncated "
                      f"({type(e).__name__}: {e})")


def _open_nibabel(p: Path) -> Tuple[Any, np.ndarray, np.dtype]:
    """``(image, affine, on-disk voxel type)`` of a nibabel file, its voxels not read yet."""
    import nibabel as nib
    from nibabel.imageglobals import LoggingOutputSuppressor

    try:
        with LoggingOutputSuppressor():  # nibabel's header repairs are reported by inspect_geometry
            img = _load_by_content(p) if name_misleads(p) else nib.load(str(p), mmap=False)
        return img, np.asarray(img.affine, dtype=np.float64), img.get_data_dtype()
    except InputError:
        raise
    except Exception as e:  # nibabel raises many types (ImageFileError, EOFError, zlib.error...)
        raise _unreadable(p, e) from e


def _load_by_content(p: Path) -> Any:
    """The nibabel image of a file whose name says compressed where its bytes are not, or the reverse
    (:mod:`brainfm.io.content`): read whole, by what it holds."""
    import nibabel as nib

    from brainfm.io.nifti_header import read_raw_header

    if EXTENSIONS[split_ext(p)[1]][0] == "mgh":
        klass = nib.MGHImage
    else:
        hdr = read_raw_header(p)
        if hdr is None:
            raise InputError(f"cannot read {p.name}: its name says NIfTI but it holds no NIfTI header")
        klass = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
    with open_by_content(p) as fh:
        return klass.from_bytes(fh.read())


def _mgh_header(p: Path) -> Optional[Tuple[Tuple[int, ...], np.ndarray, np.dtype]]:
    """``(shape, affine, voxel type)`` of an MGH/MGZ file as nibabel's image gives them, from its header
    alone: ``nibabel.load`` also reads the footer, which lies after the voxels (in a ``.mgz``, after
    all of them are decompressed). None when nibabel would refuse the file (a dimension of 0, a
    header it cannot parse) or it is shorter than a header: the full read says why."""
    from nibabel.freesurfer.mghformat import MGHHeader, header_dtype

    try:
        with open_by_content(p) as fh:
            block = fh.read(header_dtype.itemsize)
        if len(block) < header_dtype.itemsize:
            return None
        hdr = MGHHeader(block)  # the footer (scan parameters) left empty
        if not np.all(hdr["dims"]):
            return None
        shape = tuple(int(n) for n in hdr.get_data_shape())
        return shape, np.asarray(hdr.get_affine(), dtype=np.float64), hdr.get_data_dtype()
    except Exception:  # noqa: BLE001 - not this check's to word: the full read does
        return None


def _intent(hdr: Any) -> Optional[str]:
    """The NIfTI intent of a nibabel header (``"vector"``...), None for others and unknown codes."""
    if not hasattr(hdr, "get_intent"):
        return None
    try:
        return hdr.get_intent()[0]
    except Exception:  # unknown intent code: not one of ours
        return None


def _check_nibabel_dims(shape: Sequence[int], p: Path) -> None:
    """Refuse a nibabel image of fewer than 3 dimensions."""
    if len(shape) < 3:
        raise InputError(f"{p.name} is a {len(shape)}D image (shape {tuple(shape)}); BrainFM needs a 3D volume")


def _read_nibabel(p: Path) -> Tuple[np.ndarray, np.ndarray, np.dtype, Optional[str], Dict[str, Any]]:
    extra: Dict[str, Any] = {}
    img, affine, orig_dtype = _open_nibabel(p)
    try:
        arr = np.asanyarray(img.dataobj)
        if isinstance(arr, np.memmap):  # never keep the file mapped
            arr = np.array(arr)
    except Exception as e:  # nibabel raises many types (ImageFileError, EOFError, zlib.error...)
        raise _unreadable(p, e) from e
    if isinstance(img, _nifti_types()):
        extra["geometry"] = img
        slope, inter = getattr(img.dataobj, "slope", 1.0), getattr(img.dataobj, "inter", 0.0)
        extra.update(scl_slope=float(slope), scl_inter=float(inter))
    intent = _intent(img.header)
    _check_nibabel_dims(arr.shape, p)
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


def _check_data_file(p: Path) -> None:
    """Refuse a detached header (``.mhd``, ``.nhdr``) whose voxel file is missing, naming that file."""
    data_file = detached_data_file(p)
    if data_file is not None and not data_file.is_file():
        raise InputError(f"cannot read {p.name}: its voxels are in a separate file, {data_file.name}, which is "
                         f"missing (looked for {data_file}); copy it next to {p.name}")


def _read_sitk(p: Path) -> Tuple[np.ndarray, np.ndarray, np.dtype, Optional[str]]:
    import SimpleITK as sitk

    _check_data_file(p)
    _itk_header(p)  # ITK refuses the voxels of a grid it cannot place without saying why: the header says it
    try:
        img = sitk.ReadImage(str(p))
        arr = sitk.GetArrayFromImage(img)
    except Exception as e:  # RuntimeError from ITK
        raise _unreadable(p, e) from e
    return sitk_arrays(img, arr, p)


def sitk_arrays(img: Any, arr: np.ndarray, p: Path) -> Tuple[np.ndarray, np.ndarray, np.dtype, Optional[str]]:
    """``(array [i, j, k (, c)], RAS affine, dtype, None)`` of a SimpleITK image and its numpy array."""
    dim, ncomp = img.GetDimension(), img.GetNumberOfComponentsPerPixel()
    _check_itk_dims(dim, ncomp, img.GetSize(), p)
    # numpy order from ITK is reversed ([t,] z, y, x [, c]); BrainFM wants [i, j, k (, t or c)]
    order = list(range(dim))[::-1] + ([dim] if ncomp > 1 else [])
    arr = np.transpose(arr, order)
    affine = affine_from_itk(img.GetDirection(), img.GetSpacing(), img.GetOrigin())
    return arr, affine, arr.dtype, None


def _itk_header(p: Path) -> Optional[Tuple[Any, Optional[np.ndarray]]]:
    """``(reader, affine)``: the header of an ITK file (:func:`~brainfm.io.sitk_bridge.image_information`)
    and its voxel -> RAS affine, refused by :func:`check_file_affine` when it is singular or not finite
    (a zero spacing, degenerate axes: ITK would refuse the voxels with no word of why); the affine is
    None for fewer than 3 dimensions. None when ITK cannot read the header."""
    from brainfm.io.sitk_bridge import image_information

    reader = image_information(p)
    if reader is None:
        return None
    if reader.GetDimension() < 3:
        return reader, None
    affine = affine_from_itk(reader.GetDirection(), reader.GetSpacing(), reader.GetOrigin())
    return reader, check_file_affine(affine, p)


def _check_itk_dims(dim: int, ncomp: int, size: Sequence[int], p: Path) -> None:
    """Refuse an ITK image of fewer than 3 dimensions, of more than 4, or of 4 with several components."""
    if dim < 3:
        raise InputError(f"{p.name} is a {dim}D image (size {size}); BrainFM needs a 3D volume")
    if dim > 4 or (dim == 4 and ncomp > 1):
        raise InputError(f"{p.name} has {dim} dimensions and {ncomp} components per voxel; "
                         "BrainFM reads 3D volumes (optionally one frame of a 4D file)")


def _itk_voxels(reader: Any) -> Tuple[int, int, Optional[np.dtype]]:
    """``(dimensions, components per voxel, numpy voxel type or None)`` of an image whose header ITK
    has read, as ``sitk.ReadImage`` will give them: a complex voxel is one component (the header
    counts its real and imaginary parts); the type is told only for complex voxels, the one ITK
    voxel type :func:`check_voxel_type` refuses (every other is a number)."""
    import SimpleITK as sitk

    complex_types = {sitk.sitkComplexFloat32: np.complex64, sitk.sitkComplexFloat64: np.complex128}
    pixel = reader.GetPixelID()
    if pixel in complex_types:
        return reader.GetDimension(), 1, np.dtype(complex_types[pixel])
    return reader.GetDimension(), reader.GetNumberOfComponents(), None


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


def check_voxel_type(dtype: Optional[np.dtype], p: Path) -> None:
    """Refuse voxels that are no grey-scale number: colour (RGB records), complex, or another type
    (``None``: a type known to be a number).

    >>> check_voxel_type(np.dtype(np.int16), Path("a.nii"))
    >>> check_voxel_type(np.dtype(np.complex64), Path("iq.nii"))
    Traceback (most recent call last):
      ...
    brainfm.errors.InputError: iq.nii holds complex-valued voxels; BrainFM needs a magnitude image: save the ...
    """
    if dtype is None:
        return
    dtype = np.dtype(dtype)
    if dtype.names:   # NIfTI RGB / RGBA: a record per voxel
        raise InputError(f"{p.name} is a colour (RGB) image with voxels of {', '.join(dtype.names)}; BrainFM "
                         "needs a grey-scale scan: save the scan itself, not a rendering of it")
    if dtype.kind == "c":
        raise InputError(f"{p.name} holds complex-valued voxels; BrainFM needs a magnitude image: save the "
                         "magnitude (the absolute value) of the complex data and run it on that")
    if dtype.kind not in "iubf":
        raise InputError(f"{p.name}: voxels of type {dtype} are not an image BrainFM can read")


def _convert_dtype(arr: np.ndarray, kind: str, p: Path) -> np.ndarray:
    check_voxel_type(arr.dtype, p)
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
