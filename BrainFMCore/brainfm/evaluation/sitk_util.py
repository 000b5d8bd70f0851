"""Volume <-> SimpleITK image for the anchors: the conversion of :mod:`brainfm.io.sitk_bridge`,
with float32 voxels by default (what the SimpleITK filters used by the evaluation expect).

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

from typing import Any

import numpy as np

from brainfm.io import sitk_bridge
from brainfm.io.sitk_bridge import from_sitk
from brainfm.volume import Volume

__all__ = ["to_sitk", "from_sitk"]


def to_sitk(volume: Volume, *, dtype: Any = np.float32) -> Any:
    """SimpleITK image of a 3D :class:`Volume` (:func:`brainfm.io.sitk_bridge.to_sitk`), float32 by default."""
    return sitk_bridge.to_sitk(volume, dtype=dtype)
