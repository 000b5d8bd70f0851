"""Volume <-> SimpleITK image conversion (RAS affine <-> LPS direction/origin) for the anchors.

>>> import numpy as np
>>> from brainfm.volume import Volume
>>> v = Volume(np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.diag([2.0, 1.0, 0.5, 1.0]))
>>> img = to_sitk(v)
>>> img.GetSize(), img.GetSpacing()
((2, 3, 4), (2.0, 1.0, 0.5))
>>> back = from_sitk(img)
>>> bool(np.array_equal(back.data, v.data)), bool(np.allclose(back.affine, v.affine))
(True, True)
"""
from __future__ import annotations

import numpy as np

from brainfm.volume import Volume

_F = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS


def to_sitk(volume: Volume, *, dtype: type = np.float32):
    """SimpleITK image of a 3D :class:`Volume` (``data[i, j, k]`` -> ITK index (i, j, k))."""
    import SimpleITK as sitk

    data = np.asarray(volume.data)
    img = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)).astype(dtype))
    lps = _F @ np.asarray(volume.affine, float)
    sp = np.linalg.norm(lps[:3, :3], axis=0)
    img.SetSpacing([float(s) for s in sp])
    img.SetDirection([float(x) for x in (lps[:3, :3] / sp).ravel()])
    img.SetOrigin([float(x) for x in lps[:3, 3]])
    return img


def from_sitk(img) -> Volume:
    """:class:`Volume` of a 3D SimpleITK image (inverse of :func:`to_sitk`)."""
    import SimpleITK as sitk

    data = sitk.GetArrayFromImage(img).transpose(2, 1, 0)
    sp = np.asarray(img.GetSpacing(), float)
    d = np.asarray(img.GetDirection(), float).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = d * sp
    lps[:3, 3] = img.GetOrigin()
    return Volume(np.ascontiguousarray(data), _F @ lps)
