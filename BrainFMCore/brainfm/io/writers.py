"""Write :class:`~brainfm.volume.Volume` objects atomically, with exact geometry.

>>> import tempfile, os, numpy as np
>>> from brainfm.volume import Volume
>>> from brainfm.io import read_volume
>>> d = tempfile.mkdtemp()
>>> v = Volume(np.arange(8 * 8 * 8, dtype=np.int32).reshape(8, 8, 8), np.diag([-1., -1, 2, 1]))
>>> p = write_volume(v, os.path.join(d, "lab.mgz"))
>>> w = read_volume(p)
>>> bool((w.data == v.data).all()), w.data.dtype.name, np.allclose(w.affine, v.affine)
(True, 'int16', True)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np

from brainfm.errors import InputError
from brainfm.io.atomic import atomic_output, check_output_path
from brainfm.io.formats import EXTENSIONS, split_ext
from brainfm.io.readers import LPS_TO_RAS
from brainfm.volume import Volume

PathLike = Union[str, "os.PathLike[str]"]


def write_volume(volume: Volume, path: PathLike, *, dtype=None, overwrite: bool = True,
                 forbid: Iterable[Optional[PathLike]] = (), refuse: Iterable[Optional[PathLike]] = ()) -> Path:
    """Write ``volume`` to ``path`` (.nii/.nii.gz/.mgz/.mgh/.nrrd/.nhdr/.mha/.mhd) and return the path.

    The file is written in a private temporary folder beside the target and moved into place
    with ``os.replace``: a failure leaves neither a partial file nor a changed old file.
    ``forbid`` (alias ``refuse``) lists paths that must not be written (the input files).
    ``dtype`` forces a voxel type; by default integer data (label maps) are stored as int16
    when the values fit, else int32 (uint8 stays uint8), and floats as float32.
    A (X, Y, Z, C) volume is written as a NIfTI vector image (5D, intent "vector", or
    "displacement vector" (1006) when ``meta["intent"] == "displacement"``).
    """
    p = Path(path).expanduser()
    _stem, ext = split_ext(p)
    fmt, lib = EXTENSIONS[ext]
    p = check_output_path(p, overwrite=overwrite, forbid=list(forbid) + list(refuse))
    data = _cast(volume.data, dtype, fmt)
    if data.ndim == 4 and fmt != "nifti":
        raise InputError(f"a {data.shape[3]}-channel volume can only be written as NIfTI (.nii or .nii.gz), "
                         f"not {ext}")
    try:
        with atomic_output(p) as tmp:
            if lib == "nibabel":
                _write_nibabel(data, volume.affine, tmp, fmt, volume.meta.get("intent"))
            else:
                _write_sitk(data, volume.affine, tmp)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"cannot write {p}: {type(e).__name__}: {e}") from e
    return p


def _cast(data: np.ndarray, dtype, fmt: str) -> np.ndarray:
    data = np.asarray(data)
    if dtype is not None:
        target = np.dtype(dtype)
        if target.kind in "iu":
            if data.dtype.kind == "f" and not np.isfinite(data).all():
                raise InputError(f"cannot store NaN/Inf values as {target.name}")
            info = np.iinfo(target)
            if data.size and (data.min() < info.min or data.max() > info.max):
                raise InputError(f"values {data.min()}..{data.max()} do not fit in {target.name}")
            if data.dtype.kind == "f":
                data = np.round(data)
        elif target.kind != "f":
            raise InputError(f"cannot write voxels as {target}; use an integer or float type")
        out = data.astype(target, copy=False)
    elif data.dtype == np.bool_:
        out = data.astype(np.uint8)
    elif data.dtype.kind in "iu":
        if data.dtype == np.uint8:
            out = data
        else:
            lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
            if -32768 <= lo and hi <= 32767:
                out = data.astype(np.int16, copy=False)
            elif np.iinfo(np.int32).min <= lo and hi <= np.iinfo(np.int32).max:
                out = data.astype(np.int32, copy=False)
            else:
                raise InputError(f"integer values {lo}..{hi} do not fit in int32")
    elif data.dtype.kind == "f":
        out = data.astype(np.float32, copy=False)
    else:
        raise InputError(f"cannot write voxels of type {data.dtype}")
    if fmt == "mgh" and out.dtype not in (np.uint8, np.int16, np.int32, np.float32):
        raise InputError(f"MGH/MGZ files cannot store {out.dtype}; use uint8, int16, int32 or float32")
    return out


def _write_nibabel(data: np.ndarray, affine: np.ndarray, tmp: Path, fmt: str, intent) -> None:
    import nibabel as nib

    if fmt == "mgh":
        img = nib.MGHImage(data, affine)
    else:
        if data.ndim == 4:  # NIfTI vector layout: (X, Y, Z, 1, C)
            data = data[:, :, :, None, :]
        img = nib.Nifti1Image(data, affine)
        img.header.set_data_dtype(data.dtype)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        img.header.set_xyzt_units("mm", "sec")
        if data.ndim == 5:
            img.header.set_intent(1006 if intent == "displacement" else "vector")
    nib.save(img, str(tmp))


def _write_sitk(data: np.ndarray, affine: np.ndarray, tmp: Path) -> None:
    import SimpleITK as sitk

    m = LPS_TO_RAS @ affine[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    direction = m / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise InputError("this volume's affine has shear, which NRRD/MetaImage cannot store; write NIfTI instead")
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(data, (2, 1, 0))))
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(x) for x in direction.ravel()])
    img.SetOrigin([float(x) for x in LPS_TO_RAS @ affine[:3, 3]])
    sitk.WriteImage(img, str(tmp), True)
