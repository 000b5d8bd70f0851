"""Volume <-> SimpleITK image with exact geometry.

A :class:`~brainfm.volume.Volume` holds ``data[i, j, k]`` and a voxel -> RAS affine; an ITK image
holds the voxel at index ``(i, j, k)`` (numpy order ``[k, j, i]``) with spacing, a direction
matrix and an origin in LPS world coordinates. The conversion flips the first two world axes
(RAS <-> LPS) and splits the affine into spacing (column norms) and unit direction columns, so
oblique and left-handed grids survive the round trip. ITK images cannot hold a sheared affine.

>>> import numpy as np
>>> from brainfm.volume import Volume
>>> c, s = np.cos(0.3), np.sin(0.3)
>>> aff = np.array([[c, -s, 0, 10], [s, c, 0, -5], [0, 0, -2.5, 7], [0, 0, 0, 1.0]])  # oblique, left-handed
>>> v = Volume(np.arange(24, dtype=np.int16).reshape(2, 3, 4), aff)
>>> img = to_sitk(v)
>>> img.GetSize(), [round(x, 6) for x in img.GetSpacing()], [round(x, 6) for x in img.GetOrigin()]
((2, 3, 4), [1.0, 1.0, 2.5], [-10.0, 5.0, 7.0])
>>> back = from_sitk(img)
>>> bool(np.array_equal(back.data, v.data)), back.data.dtype, bool(np.allclose(back.affine, aff))
(True, dtype('int16'), True)
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np

from brainfm.errors import InputError
from brainfm.volume import Volume

#: LPS (ITK) <-> RAS (nibabel, BrainFM) world axes
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def itk_geometry(affine: np.ndarray) -> Tuple[Tuple[float, ...], Tuple[float, ...], Tuple[float, ...]]:
    """``(spacing, direction (9 numbers, row-major), origin)`` of an ITK image for the voxel -> RAS
    ``affine``. Raises :class:`~brainfm.errors.InputError` when the affine has shear.

    >>> itk_geometry(np.diag([2.0, 1.0, 3.0, 1.0]))
    ((2.0, 1.0, 3.0), (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0), (0.0, 0.0, 0.0))
    """
    a = np.asarray(affine, np.float64)
    m = LPS_TO_RAS @ a[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    direction = m / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise InputError("this volume's affine has shear, which an ITK image (NRRD, MetaImage) cannot store; "
                         "write NIfTI instead")
    return (tuple(float(s) for s in spacing), tuple(float(x) for x in direction.ravel()),
            tuple(float(x) for x in LPS_TO_RAS @ a[:3, 3]))


def affine_from_itk(direction: Sequence[float], spacing: Sequence[float], origin: Sequence[float]) -> np.ndarray:
    """Voxel -> RAS 4x4 affine of ITK geometry (an image's or a header's); for images of more than 3
    dimensions the spatial 3x3 block is used.

    >>> affine_from_itk((-1, 0, 0, 0, -1, 0, 0, 0, 1), (2.0, 1.0, 3.0), (4.0, 5.0, 6.0)).tolist()[0]
    [2.0, 0.0, 0.0, -4.0]
    """
    sp = np.asarray(spacing, np.float64)
    dim = sp.shape[0]
    d = np.asarray(direction, np.float64).reshape(dim, dim)[:3, :3]
    aff = np.eye(4)
    aff[:3, :3] = LPS_TO_RAS @ d @ np.diag(sp[:3])
    aff[:3, 3] = LPS_TO_RAS @ np.asarray(origin, np.float64)[:3]
    return aff


def image_information(path: Any) -> Optional[Any]:
    """A SimpleITK ``ImageFileReader`` that has read only the header of the image file ``path``
    (size, spacing, direction, origin, pixel type; no voxels), or None when ITK cannot read it.
    ITK's warnings are not shown.

    >>> image_information("no-such-file.nrrd") is None
    True
    """
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)
    return reader


def to_sitk(volume: Volume, *, dtype: Optional[Any] = None) -> Any:
    """SimpleITK image of a 3D :class:`Volume` (``data[i, j, k]`` -> ITK index ``(i, j, k)``); the
    voxel type is the data's, or ``dtype`` when given (e.g. ``np.float32`` for ITK filters)."""
    import SimpleITK as sitk

    data = np.asarray(volume.data)
    if data.ndim != 3:
        raise InputError(f"a SimpleITK image is made from a 3D volume, got shape {data.shape}")
    spacing, direction, origin = itk_geometry(volume.affine)
    arr = np.ascontiguousarray(data.transpose(2, 1, 0))
    img = sitk.GetImageFromArray(arr if dtype is None else arr.astype(dtype, copy=False))
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    img.SetOrigin(origin)
    return img


def sitk_array(image: Any) -> np.ndarray:
    """The voxels of a 3D SimpleITK image as ``[i, j, k]`` (a transposed view of a new array).

    >>> import SimpleITK as sitk
    >>> sitk_array(sitk.Image(4, 3, 2, sitk.sitkUInt8)).shape
    (4, 3, 2)
    """
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)


def from_sitk(image: Any) -> Volume:
    """:class:`Volume` of a 3D SimpleITK image (the inverse of :func:`to_sitk`; C-contiguous data)."""
    return Volume(np.ascontiguousarray(sitk_array(image)),
                  affine_from_itk(image.GetDirection(), image.GetSpacing(), image.GetOrigin()))
