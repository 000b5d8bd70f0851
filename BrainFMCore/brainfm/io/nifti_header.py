"""NIfTI header geometry as it is on disk, before nibabel normalises it.

A NIfTI file can place its voxels in space twice: the *qform* (quaternion, offsets, ``pixdim``
and ``qfac``) and the *sform* (``srow_x/y/z``), each switched on by its code. Readers choose
differently: nibabel and FSL use the sform when ``sform_code > 0``, ITK (SimpleITK, 3D Slicer)
often the qform. When the two disagree, the same file opens in different places in different
programs. nibabel also repairs some headers silently (a zero ``pixdim`` becomes 1, a negative one
its absolute value).

This module reads the raw header (:func:`read_raw_header`), refuses headers without a usable
geometry (zero voxel size, singular or non-finite sform) naming the header field, describes what
readers will do (:func:`inspect_geometry`: warnings and a summary), and gives the raw geometry
fields that outputs on the same grid repeat (:func:`apply_geometry`), so that *each* reader places
an output exactly where it places the input.

>>> import tempfile, os, numpy as np, nibabel as nib
>>> q = np.diag([1.0, 1.0, 1.0, 1.0]); s = q.copy(); s[0, 3] = 120.0
>>> img = nib.Nifti1Image(np.ones((8, 8, 8), np.float32), None)
>>> img.set_qform(q, code=1); img.set_sform(s, code=1)
>>> p = os.path.join(tempfile.mkdtemp(), "x.nii"); nib.save(img, p)
>>> g = inspect_geometry(p, nib.load(p))
>>> g.summary["results_follow"], g.summary["qform_sform_agree"], round(g.summary["qform_sform_difference_mm"])
('sform', False, 120)
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from brainfm.errors import InputError
from brainfm.io.sitk_bridge import affine_from_itk, image_information

PathLike = Union[str, "os.PathLike[str]"]

#: transforms closer than this are "the same" (largest corner displacement, mm; axis angle, degrees)
AGREE_MM = 0.01
AGREE_DEG = 0.01
#: header fields that place the voxels in space; an output on the input grid repeats them
GEOMETRY_FIELDS = ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z",
                   "qform_code", "srow_x", "srow_y", "srow_z", "sform_code", "xyzt_units")
XFORM_NAMES = {0: "unknown", 1: "scanner", 2: "aligned", 3: "talairach", 4: "mni", 5: "template"}


@dataclass
class HeaderGeometry:
    """What :func:`inspect_geometry` found: raw fields to repeat, warnings, a JSON summary."""

    fields: Dict[str, Any]
    warnings: List[str] = field(default_factory=list)
    summary: Dict[str, Any] = field(default_factory=dict)


def read_raw_header(path: PathLike):
    """The NIfTI-1/2 header of ``path`` exactly as stored (``check=False``: nothing repaired), or
    None when the file is not NIfTI."""
    import nibabel as nib

    from brainfm.io.content import open_by_content

    with open_by_content(path) as fh:
        head = fh.read(4)
        if len(head) < 4:
            return None
        size_le, size_be = int.from_bytes(head, "little"), int.from_bytes(head, "big")
        klass = None
        if 348 in (size_le, size_be):
            klass = nib.Nifti1Header
        elif 540 in (size_le, size_be):
            klass = nib.Nifti2Header
        if klass is None:
            return None
        fh.seek(0)
        return klass.from_fileobj(fh, check=False)


def transform_difference(a: np.ndarray, b: np.ndarray, shape) -> Tuple[float, float]:
    """(largest displacement in mm of the grid's corners, largest angle in degrees between
    corresponding voxel axes) between two voxel -> world affines of a grid of ``shape``.

    >>> a = np.eye(4); b = np.eye(4); b[:3, 3] = [3.0, 4.0, 0.0]
    >>> transform_difference(a, b, (10, 10, 10))
    (5.0, 0.0)
    """
    ext = [max(int(n) - 1, 0) for n in list(shape)[:3]]
    corners = np.array([[i, j, k, 1.0] for i in (0, ext[0]) for j in (0, ext[1]) for k in (0, ext[2])])
    mm = float(np.max(np.linalg.norm((corners @ (np.asarray(a) - np.asarray(b)).T)[:, :3], axis=1)))
    deg = 0.0
    for i in range(3):
        u, v = np.asarray(a)[:3, i], np.asarray(b)[:3, i]
        nu, nv = np.linalg.norm(u), np.linalg.norm(v)
        if nu > 0 and nv > 0:
            c = float(np.clip(np.dot(u, v) / (nu * nv), -1.0, 1.0))
            deg = max(deg, float(np.degrees(np.arccos(c))))
    return mm, deg


def _field_value(hdr, name: str) -> Any:
    value = np.asarray(hdr[name])
    return value.tolist() if value.ndim else value.item()


def _check_raw(hdr, name: str) -> List[str]:
    """Refuse what no reader can place; return warnings for what readers read differently."""
    warnings: List[str] = []
    pixdim = np.asarray(hdr["pixdim"], np.float64)
    for i in (1, 2, 3):
        v = float(pixdim[i])
        if not np.isfinite(v):
            raise InputError(f"{name}: header field pixdim[{i}] (voxel size along axis {i - 1}) is {v}; "
                             "fix the header before running BrainFM")
        if v == 0.0:
            raise InputError(
                f"{name}: header field pixdim[{i}] is 0: a zero voxel size along axis {i - 1}, which readers "
                "repair differently (nibabel silently uses 1 mm); fix the header (for example with nibabel or "
                "fslorient) before running BrainFM")
        if v < 0.0:
            warnings.append(
                f"{name}: header field pixdim[{i}] is negative ({v:g}); nibabel (used here) reads a voxel size of "
                f"{abs(v):g} mm, ITK-based readers (SimpleITK, 3D Slicer) flip that axis instead. The outputs repeat "
                "this header, so each viewer places them exactly where it places the input; check the orientation")
    units = {1: "meter", 3: "micron"}.get(int(hdr["xyzt_units"]) & 0x07)
    if units:  # ITK converts them to mm, nibabel (used here) and FSL do not
        raise InputError(f"{name}: its header gives positions in {units}s (xyzt_units); nibabel and FSL read them "
                         "as millimetres while ITK and 3D Slicer convert them, so results would not line up in "
                         "every viewer. Save the file with millimetre units (voxel sizes and affine in mm) and run "
                         "it again")
    qcode, scode = int(hdr["qform_code"]), int(hdr["sform_code"])
    if qcode > 0:
        quat = np.array([float(hdr[k]) for k in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x",
                                                  "qoffset_y", "qoffset_z")])
        bad = [k for k, v in zip(("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z"),
                                 quat) if not np.isfinite(v)]
        if bad:
            raise InputError(f"{name}: header field {bad[0]} of the qform is not a number; fix the header")
    if scode > 0:
        srow = np.array([np.asarray(hdr[k], np.float64) for k in ("srow_x", "srow_y", "srow_z")])
        if not np.all(np.isfinite(srow)):
            row = ("srow_x", "srow_y", "srow_z")[int(np.argwhere(~np.isfinite(srow))[0][0])]
            raise InputError(f"{name}: header field {row} of the sform (sform_code {scode}) holds NaN/Inf; "
                             "fix the header before running BrainFM")
        m = srow[:, :3]
        scale = max(float(np.max(np.abs(m))), 1e-30)
        if abs(np.linalg.det(m)) < 1e-9 * scale ** 3:
            raise InputError(
                f"{name}: header fields srow_x/srow_y/srow_z (the sform, sform_code {scode}) are singular: a zero "
                "voxel size or two identical axes; fix the header (or set sform_code to 0 to use the qform)")
    qfac = float(pixdim[0])
    if qcode > 0 and qfac not in (-1.0, 1.0):
        warnings.append(f"{name}: header field pixdim[0] (qfac) is {qfac:g}, not 1 or -1; it is read as 1 "
                        "(a right-handed qform), as the NIfTI standard says")
    if qcode == 0 and scode == 0:
        warnings.append(
            f"{name}: the header has neither a qform nor an sform (both codes 0): its position in space is "
            "unknown and readers place it differently; results follow nibabel's default placement")
    return warnings


def check_raw_header(path: PathLike) -> Tuple[Any, List[str]]:
    """``(raw header, warnings)`` of the NIfTI file ``path``, read as stored (:func:`read_raw_header`);
    :class:`InputError` naming the file and the header field for what no reader can place (a zero
    voxel size, a singular or non-finite sform, a non-finite qform, positions in metres or microns) or
    when the file does not start with a NIfTI header. Reads the header only.

    >>> import tempfile, os, nibabel as nib
    >>> img = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.diag([0.001, 0.001, 0.001, 1.0]))
    >>> img.header.set_xyzt_units("meter")
    >>> p = os.path.join(tempfile.mkdtemp(), "metres.nii"); nib.save(img, p)
    >>> check_raw_header(p)
    Traceback (most recent call last):
      ...
    brainfm.errors.InputError: metres.nii: its header gives positions in meters (xyzt_units); nibabel and FSL ...
    """
    name = Path(path).name
    raw = read_raw_header(path)
    if raw is None:
        raise InputError(f"cannot read {name}: it does not start with a NIfTI header")
    return raw, _check_raw(raw, name)


def _itk_affine(path: PathLike) -> Optional[np.ndarray]:
    """Voxel -> RAS affine as ITK (SimpleITK, 3D Slicer) reads the file's header, None if unavailable."""
    try:
        reader = image_information(path)
        if reader is None or reader.GetDimension() < 3:
            return None
        return affine_from_itk(reader.GetDirection(), reader.GetSpacing(), reader.GetOrigin())
    except Exception:  # noqa: BLE001 - ITK's opinion is optional information
        return None


def inspect_geometry(path: PathLike, img: Any) -> HeaderGeometry:
    """Check the raw header of the NIfTI file ``path`` (``img``: its ``nibabel`` image) and
    describe its geometry. Raises :class:`InputError` (naming the file and the header field) for
    a zero voxel size, a singular/non-finite sform or positions in metres or microns; warns about disagreeing qform and sform,
    negative ``pixdim``, odd ``qfac`` and missing transforms.
    """
    name = Path(path).name
    raw, warnings = check_raw_header(path)
    hdr = img.header
    shape = tuple(int(n) for n in img.shape[:3])
    qcode, scode = int(raw["qform_code"]), int(raw["sform_code"])
    follows = "sform" if scode > 0 else ("qform" if qcode > 0 else "pixdim only (no transform)")
    summary: Dict[str, Any] = {
        "qform_code": qcode, "qform_meaning": XFORM_NAMES.get(qcode, "other"),
        "sform_code": scode, "sform_meaning": XFORM_NAMES.get(scode, "other"),
        "pixdim": [float(v) for v in np.asarray(raw["pixdim"])[:4]],
        "results_follow": follows,
    }
    if qcode > 0 and scode > 0:
        mm, deg = transform_difference(hdr.get_qform(), hdr.get_sform(), shape)
        agree = mm <= AGREE_MM and deg <= AGREE_DEG
        summary.update(qform_sform_agree=agree, qform_sform_difference_mm=round(mm, 4),
                       qform_sform_difference_deg=round(deg, 4))
        if not agree:
            itk = _itk_affine(path)
            itk_says = ""
            if itk is not None:
                dq = transform_difference(itk, hdr.get_qform(), shape)
                ds = transform_difference(itk, hdr.get_sform(), shape)
                itk_by = "qform" if dq <= ds else "sform"
                summary["itk_follows"] = itk_by
                itk_says = ("; ITK-based readers (SimpleITK, 3D Slicer) place this file by its qform" if itk_by == "qform"
                            else "; ITK-based readers (SimpleITK, 3D Slicer) use the sform too, other programs may "
                                 "use the qform")
            warnings.append(
                f"{name}: the header's qform and sform disagree (by up to {mm:.3g} mm and {deg:.3g} degrees): "
                f"results follow the sform, as nibabel and FSL read this file{itk_says}. Every output repeats both "
                "transforms, so each viewer places the outputs exactly where it places the input; check which "
                "transform is right (left/right and positions in the results follow the sform)")
    fields = {k: _field_value(raw, k) for k in GEOMETRY_FIELDS}
    fields["pixdim"] = [float(v) for v in np.asarray(raw["pixdim"])[:4]]
    fields["shape"] = list(shape)
    fields["affine"] = np.asarray(img.affine, np.float64).tolist()
    return HeaderGeometry(fields=fields, warnings=warnings, summary=summary)


def matches_grid(fields: Optional[Mapping[str, Any]], affine: np.ndarray, shape) -> bool:
    """True when raw ``fields`` from :func:`inspect_geometry` describe the grid (``affine``, ``shape``)."""
    if not fields or "affine" not in fields or "shape" not in fields:
        return False
    return (tuple(int(n) for n in fields["shape"]) == tuple(int(n) for n in list(shape)[:3])
            and bool(np.allclose(np.asarray(fields["affine"], np.float64), np.asarray(affine), atol=1e-5)))


def apply_geometry(hdr: Any, fields: Mapping[str, Any]) -> None:
    """Write the raw geometry ``fields`` (qform, sform, their codes, ``pixdim[0:4]``, units) into
    the NIfTI header ``hdr`` of an output on the same grid, as they were in the input's header."""
    for key in GEOMETRY_FIELDS:
        if key in fields:
            hdr[key] = np.asarray(fields[key], dtype=hdr[key].dtype) if np.ndim(fields[key]) else fields[key]
    pix = np.asarray(hdr["pixdim"]).copy()
    pix[:4] = np.asarray(fields["pixdim"], dtype=pix.dtype)[:4]
    hdr["pixdim"] = pix
