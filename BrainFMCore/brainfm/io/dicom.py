"""DICOM series as volumes, through SimpleITK's GDCM series reader.

A folder of DICOM files may hold several series; each is one volume (:func:`find_series`), its
slices ordered by position by GDCM. A single ``.dcm`` file stands for its whole series
(:func:`read_dicom_file`). Enhanced / multi-frame files, unevenly spaced slices and anything GDCM
cannot read are refused with a message that says what to do instead (convert with dcm2niix, or
load the study with 3D Slicer's DICOM module first).

>>> is_dicom_file(__file__)
False
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from brainfm.errors import InputError
from brainfm.volume import Volume

PathLike = Union[str, "os.PathLike[str]"]

ADVICE = "convert it with dcm2niix, or load it with 3D Slicer's DICOM module first and save it as NIfTI"
#: SOP classes of enhanced (multi-frame, per-frame functional groups) images
ENHANCED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR",
    "1.2.840.10008.5.1.4.1.1.4.3": "Enhanced MR Color",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT",
    "1.2.840.10008.5.1.4.1.1.130": "Enhanced PET",
    "1.2.840.10008.5.1.4.1.1.6.2": "Enhanced US Volume",
}
TAG_SERIES_UID = "0020|000e"
TAG_DESCRIPTION = "0008|103e"
TAG_NUMBER = "0020|0011"
TAG_FRAMES = "0028|0008"
TAG_SOP_CLASS = "0008|0016"
TAG_POSITION = "0020|0032"
TAG_SLOPE, TAG_INTERCEPT = "0028|1053", "0028|1052"
#: relative spread of slice gaps accepted as "evenly spaced"
SPACING_TOLERANCE = 0.01


@dataclass
class DicomSeries:
    """One series found in a folder: its UID, its files (in slice order) and a readable name."""

    uid: str
    files: List[Path]
    description: str = ""
    number: str = ""
    folder: Optional[Path] = None
    info: Dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """``<SeriesNumber>_<SeriesDescription>`` made safe for a folder name (``series_<uid tail>`` if both are empty).

        >>> DicomSeries("1.2.3", [], "T1 MPRAGE / sag", "3").name
        '3_T1_MPRAGE_sag'
        """
        parts = [p for p in (self.number.strip(), self.description.strip()) if p]
        text = "_".join(parts) if parts else f"series_{self.uid.split('.')[-1][-8:]}"
        safe = re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("._")
        return safe or "series"


def is_dicom_file(path: PathLike) -> bool:
    """True for a ``.dcm`` file or a file with the ``DICM`` mark at byte 128 (DICOM Part 10)."""
    p = Path(path)
    if not p.is_file():
        return False
    if p.name.lower().endswith(".dcm"):
        return True
    try:
        with open(p, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _file_info(path: Path) -> Dict[str, str]:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise InputError(f"cannot read the DICOM file {path.name} ({_first_line(e)}); {ADVICE}") from None
    keys = set(reader.GetMetaDataKeys())
    return {k: reader.GetMetaData(k).strip() for k in (TAG_SERIES_UID, TAG_DESCRIPTION, TAG_NUMBER, TAG_FRAMES,
                                                       TAG_SOP_CLASS, TAG_SLOPE, TAG_INTERCEPT) if k in keys}


def _first_line(e: BaseException) -> str:
    """ITK's reason in a few words (its source locations and object addresses removed)."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    useful = [x for x in lines if "ERROR" in x or "rror" in x] or lines or [type(e).__name__]
    text = re.sub(r"^.*?ITK ERROR: \w+\(0x[0-9a-fA-F]+\):\s*", "", useful[-1])
    return text[:200]


def find_series(folder: PathLike) -> List[DicomSeries]:
    """Every DICOM series in ``folder`` (not its sub-folders), sorted by series number and name."""
    import SimpleITK as sitk

    d = Path(folder)
    reader = sitk.ImageSeriesReader()
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        uids = list(reader.GetGDCMSeriesIDs(str(d)))
        found = []
        for uid in uids:
            files = [Path(f) for f in reader.GetGDCMSeriesFileNames(str(d), uid)]
            if files:
                found.append((uid, files))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)
    series = []
    for uid, files in found:
        try:
            info = _file_info(files[0])
        except InputError:
            info = {}
        series.append(DicomSeries(uid, files, info.get(TAG_DESCRIPTION, ""), info.get(TAG_NUMBER, ""), d, info))

    def order(s: DicomSeries):
        num = s.number
        return (int(num) if num.isdigit() else 1 << 30, s.name)

    return sorted(series, key=order)


def series_of_file(path: PathLike) -> DicomSeries:
    """The series that the DICOM file ``path`` belongs to (all its files in the same folder)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"input file not found: {p}")
    info = _file_info(p)
    uid = info.get(TAG_SERIES_UID, "")
    for s in find_series(p.parent):
        if s.uid == uid or any(f.resolve() == p.resolve() for f in s.files):
            return s
    raise InputError(f"{p.name} is not part of a DICOM image series that GDCM can read; {ADVICE}")


def _check_series(series: DicomSeries, label: str) -> None:
    info = series.info or _file_info(series.files[0])
    frames = info.get(TAG_FRAMES, "")
    sop = info.get(TAG_SOP_CLASS, "")
    if sop in ENHANCED_SOP_CLASSES or (frames.isdigit() and int(frames) > 1):
        kind = ENHANCED_SOP_CLASSES.get(sop, "multi-frame")
        article = "an" if kind[0].lower() in "aeiou" else "a"
        raise InputError(f"{label} is {article} {kind} DICOM ({frames or '?'} frames in one file), which BrainFM "
                         f"does not read directly (its geometry is stored per frame); {ADVICE}")


def _check_spacing(reader: Any, n: int, direction: np.ndarray, label: str) -> None:
    """Refuse unevenly spaced slices (missing slices, variable gaps): GDCM would stack them as if even."""
    if n < 3:
        return
    normal = direction[:, 2]
    pos = []
    for i in range(n):
        try:
            pos.append([float(v) for v in reader.GetMetaData(i, TAG_POSITION).split("\\")])
        except (RuntimeError, ValueError):
            return  # no positions recorded: nothing to check
    along = np.sort(np.asarray(pos) @ normal)
    gaps = np.diff(along)
    mean = float(np.mean(gaps))
    if mean <= 0 or float(np.max(np.abs(gaps - mean))) > SPACING_TOLERANCE * mean + 1e-4:
        raise InputError(f"{label}: the slices are not evenly spaced (gaps {float(gaps.min()):.3g} to "
                         f"{float(gaps.max()):.3g} mm: missing slices or a variable gap); {ADVICE}")


def read_series(series: DicomSeries, *, kind: str = "auto") -> Volume:
    """Read ``series`` as one :class:`Volume` (RAS affine; rescale slope/intercept applied by GDCM).

    ``meta``: ``source_path`` (the first file), ``source_format`` ``"dicom"``, ``dicom_series_uid``,
    ``dicom_series`` (name), ``n_files``, ``original_dtype``, ``scl_slope``/``scl_inter`` (DICOM
    rescale slope/intercept).
    """
    import SimpleITK as sitk

    from brainfm.io.readers import _convert_dtype, make_volume, sitk_arrays

    files = [str(f) for f in series.files]
    if not files:
        raise InputError(f"DICOM series {series.name} has no files")
    label = (f"the DICOM file {Path(files[0]).name}" if len(files) == 1
             else f"DICOM series {series.name} ({len(files)} files in {Path(files[0]).parent})")
    _check_series(series, label)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        img = reader.Execute()
        arr = sitk.GetArrayFromImage(img)
    except RuntimeError as e:
        raise InputError(f"cannot read {label} ({_first_line(e)}); {ADVICE}") from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)
    direction = np.array(img.GetDirection(), np.float64).reshape(img.GetDimension(), -1)[:3, :3]
    _check_spacing(reader, len(files), direction, label)
    first = Path(files[0])
    arr, affine, dtype, _ = sitk_arrays(img, arr, first)
    if arr.ndim != 3:
        raise InputError(f"{label} has {arr.ndim} dimensions (shape {arr.shape}); {ADVICE}")
    if 1 in arr.shape[:3]:
        raise InputError(f"{label} is a 2D image (shape {tuple(arr.shape)}, {len(files)} file(s)); "
                         "BrainFM needs a 3D volume: pass the folder holding the whole series")
    info = series.info
    meta: Dict[str, Any] = {
        "source_path": str(first.resolve()), "source_format": "dicom", "dicom_series_uid": series.uid,
        "dicom_series": series.name, "n_files": len(files), "original_dtype": np.dtype(dtype).name,
    }
    try:
        meta["scl_slope"] = float(info.get(TAG_SLOPE, "1") or 1)
        meta["scl_inter"] = float(info.get(TAG_INTERCEPT, "0") or 0)
    except ValueError:
        pass
    return make_volume(_convert_dtype(arr, kind, first), affine, meta, first)


def read_dicom_file(path: PathLike, *, kind: str = "auto") -> Volume:
    """Read the whole series that the DICOM file ``path`` belongs to."""
    return read_series(series_of_file(path), kind=kind)


def series_shape(series: DicomSeries) -> Optional[Sequence[int]]:
    """(columns, rows, slices) of ``series`` from its first file, without reading the pixels."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(series.files[0]))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    size = list(reader.GetSize())
    return [size[0], size[1], len(series.files) * (size[2] if len(size) > 2 else 1)]
