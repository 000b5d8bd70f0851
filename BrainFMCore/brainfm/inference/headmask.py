"""The head in the image: where anatomical labels may be painted.

Scanner backgrounds are rarely zero (noise, ghosts, Rician floor), so "non-zero input" is not the head.
:func:`head_mask` finds it on the normalised network image: voxels above Otsu's threshold (between
background and tissue), closed over 4 mm, holes filled (dark CSF, sinuses, skull), the largest
connected component kept, then grown by one voxel. When the background is exactly zero (skull-stripped
or masked images, CT below the window), the non-zero voxels are the head already and are kept as they are.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> img = rng.random((40, 40, 40)).astype(np.float32) * 0.1           # noisy background
>>> x, y, z = np.mgrid[:40, :40, :40]
>>> inside = (x - 20) ** 2 + (y - 20) ** 2 + (z - 20) ** 2 < 12 ** 2
>>> img[inside] = 0.6; img[(x - 20) ** 2 + (y - 20) ** 2 + (z - 20) ** 2 < 4 ** 2] = 0.02   # dark core
>>> m = head_mask(img, voxel_mm=2.0)
>>> bool(m[inside].all()), bool(m[:3, :3, :3].any())
(True, False)
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

HEAD_MASK_METHOD = ("non-zero voxels when the background is zero, else Otsu threshold, closing (4 mm), "
                    "holes filled, largest component, grown by one voxel")
ZERO_BACKGROUND_FRACTION = 0.05  #: this share of exact zeros means a masked (zero) background


def _otsu(values: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    return float(threshold_otsu(values))


def head_mask(image: np.ndarray, *, voxel_mm: float = 1.0, max_samples: int = 2_000_000) -> np.ndarray:
    """Boolean mask of the head in a normalised ``[0, 1]`` image ``(X, Y, Z)`` on an isotropic grid
    of ``voxel_mm`` (see the module docstring). An image without contrast gives an all-True mask."""
    x = np.asarray(image, np.float32)
    if float(np.mean(x == 0)) >= ZERO_BACKGROUND_FRACTION:
        return x > 0
    vals = x[x > 0]
    if vals.size < 16 or float(vals.max()) <= float(vals.min()):
        return np.ones(x.shape, bool)
    if vals.size > max_samples:  # Otsu on a regular subsample: the same threshold, less work
        vals = vals[:: int(np.ceil(vals.size / max_samples))]
    mask = x > _otsu(vals)
    r = max(1, int(round(4.0 / float(voxel_mm))))
    ball = ndimage.iterate_structure(ndimage.generate_binary_structure(3, 1), r)
    pad = r + 1  # closing near the border of the field of view must not be cut off
    mask = ndimage.binary_closing(np.pad(mask, pad), structure=ball)[pad:-pad, pad:-pad, pad:-pad]
    mask = ndimage.binary_fill_holes(mask)
    lab, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        mask = lab == int(np.argmax(sizes))
    elif n == 0:
        return np.ones(x.shape, bool)
    return ndimage.binary_dilation(mask, structure=ndimage.generate_binary_structure(3, 1))
