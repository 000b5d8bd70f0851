"""Code-generated test files with unusual headers: raw NIfTI headers (written byte for byte, so
nothing is repaired on the way), scaled integers, DICOM series and multi-frame DICOM files."""
from __future__ import annotations

import gzip
import hashlib
from pathlib import Path
from typing import Optional, Sequence

import nibabel as nib
import numpy as np


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_raw_nifti(path: Path, data: np.ndarray, *, qform: Optional[np.ndarray] = None, qcode: int = 0,
                    sform: Optional[np.ndarray] = None, scode: int = 0, pixdim: Optional[Sequence[float]] = None,
                    qfac: Optional[float] = None, slope: Optional[float] = None, inter: Optional[float] = None,
                    dtype=None) -> Path:
    """A single-file NIfTI-1 whose header holds exactly what is asked (``pixdim`` replaces
    pixdim[1:4] after the qform is set, ``qfac`` replaces pixdim[0]); ``slope``/``inter`` store
    ``(data - inter) / slope`` as ``dtype``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(data)
    stored = data
    if slope is not None or inter is not None:
        s, i = float(slope if slope is not None else 1.0), float(inter if inter is not None else 0.0)
        stored = np.round((data.astype(np.float64) - i) / s)
    stored = stored.astype(dtype or data.dtype)
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(stored.shape)
    hdr.set_data_dtype(stored.dtype)
    hdr.set_xyzt_units("mm", "sec")
    if qform is not None:
        hdr.set_qform(qform, code=qcode)
    else:
        hdr["qform_code"] = 0
    if sform is not None:
        hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = np.asarray(sform, np.float64)[:3]
    hdr["sform_code"] = scode
    if pixdim is not None:
        pix = hdr["pixdim"].copy()
        pix[1:4] = pixdim
        hdr["pixdim"] = pix
    if qfac is not None:
        pix = hdr["pixdim"].copy()
        pix[0] = qfac
        hdr["pixdim"] = pix
    hdr["scl_slope"] = np.nan if slope is None and inter is None else (slope if slope is not None else 1.0)
    hdr["scl_inter"] = np.nan if slope is None and inter is None else (inter if inter is not None else 0.0)
    hdr["vox_offset"] = 352
    hdr["magic"] = b"n+1"
    import io

    buf = io.BytesIO()
    hdr.write_to(buf)
    raw = buf.getvalue()[:348] + b"\x00" * 4 + stored.tobytes(order="F")
    path.write_bytes(gzip.compress(raw, compresslevel=1) if path.name.endswith(".gz") else raw)
    return path


def affine_lps(volume_affine: np.ndarray):
    """(origin, spacing, direction) in ITK's LPS convention for a voxel -> RAS affine."""
    lps = np.diag([-1.0, -1.0, 1.0])
    m = lps @ volume_affine[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    return lps @ volume_affine[:3, 3], spacing, m / spacing


def write_dicom_series(folder: Path, data: np.ndarray, affine: np.ndarray, *, description: str = "T1 MPRAGE",
                       number: int = 3, uid: str = "1.2.826.0.1.3680043.2.1125.77.1", prefix: str = "IM",
                       extension: str = "", slice_positions: Optional[Sequence[float]] = None) -> list:
    """One file per slice (``data[i, j, k]``, int16, the k axis across files) with the tags GDCM needs to
    order the slices and place them (ImagePositionPatient, ImageOrientationPatient), as a scanner would.
    ``slice_positions`` places file k at that many slice spacings from the origin (default k; to make
    missing slices or uneven gaps)."""
    import SimpleITK as sitk

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    origin, spacing, direction = affine_lps(affine)
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(data.astype(np.int16), (2, 1, 0))))
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(v) for v in direction.ravel()])
    img.SetOrigin([float(v) for v in origin])
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetImageIO("GDCMImageIO")
    orientation = "\\".join(f"{v:.9f}" for v in list(direction[:, 0]) + list(direction[:, 1]))
    files = []
    n = data.shape[2]
    for k in range(n):
        s = img[:, :, k]
        where = slice_positions[k] if slice_positions is not None else k
        pos = np.asarray(origin) + direction[:, 2] * spacing[2] * where
        tags = {"0008|0060": "MR", "0020|000e": uid, "0008|103e": description, "0020|0011": str(number),
                "0020|000d": uid + ".0", "0020|0037": orientation, "0020|0032": "\\".join(f"{v:.6f}" for v in pos),
                "0020|0013": str(k + 1), "0008|0016": "1.2.840.10008.5.1.4.1.1.4", "0018|0050": f"{spacing[2]:.6f}",
                "0008|0018": f"{uid}.{k + 1}"}
        for tag, value in tags.items():
            s.SetMetaData(tag, value)
        target = folder / f"{prefix}{k:04d}{extension}"
        writer.SetFileName(str(target))
        writer.Execute(s)
        files.append(target)
    return files


def write_multiframe_dicom(path: Path, data: np.ndarray) -> Path:
    """All slices in one multi-frame DICOM file (``NumberOfFrames`` > 1), as GDCM writes a 3D image."""
    import SimpleITK as sitk

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(data.astype(np.uint16), (2, 1, 0))))
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")
    writer.SetFileName(str(path))
    writer.Execute(img)
    return Path(path)
