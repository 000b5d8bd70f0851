"""The head in the image: where anatomical labels may be painted.

Scanner backgrounds are rarely zero (noise, ghosts, Rician floor), so "non-zero input" is not the head.
:func:`head_mask` finds it on the normalised network image: voxels above the threshold between
background and tissue, closed over 4 mm, holes filled (dark CSF, sinuses, skull), the largest
connected component kept, then grown by one voxel. When the background is exactly zero (skull-stripped
or masked images, CT below the window), the non-zero voxels are the head already and are kept as they are.

The threshold between background and tissue (:func:`background_threshold`) is bounded three ways.
Otsu's threshold on the intensities splits the largest contrast, which is background against head
only when the head has one intensity class; on a T1 with bright scalp fat it can fall between the fat
and the brain, and the mask then keeps the scalp and drops the brain. Otsu's threshold on the logarithm
splits at a ratio, as noise and tissue differ, and keeps the brain there; but when the background is
most of a very noisy image, the noise's own spread on the log scale pulls it into the noise. So the
threshold is the logarithmic one, raised to at least the 99th percentile of the background noise
(Rayleigh, its scale from the median of the array's faces, which are air in a head scan), and at most
Otsu's threshold on the intensities.

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

from typing import Optional

import numpy as np
from scipy import ndimage

HEAD_MASK_METHOD = ("non-zero voxels when the background is zero, else a threshold between background noise and "
                    "tissue (Otsu of the log intensities, bounded by the noise floor and by Otsu), closing (4 mm), "
                    "holes filled, largest component, grown by one voxel")
ZERO_BACKGROUND_FRACTION = 0.05  #: this share of exact zeros means a masked (zero) background
LOG_OFFSET = 1e-3  #: added before the logarithm, times the 99.9th percentile of the image: bounds its tail at 0
#: the 99th percentile of a Rayleigh distribution in units of its scale: sqrt(-2 ln 0.01)
NOISE_FLOOR = float(np.sqrt(-2.0 * np.log(0.01)))
_RAYLEIGH_MEDIAN = float(np.sqrt(2.0 * np.log(2.0)))  #: the median of a Rayleigh distribution of scale 1


def noise_scale(image: np.ndarray) -> float:
    """The Rayleigh scale of the background noise: the smallest median of the positive voxels of the
    array's six faces, divided by the Rayleigh median. 0 when no face has a positive voxel.

    >>> rng = np.random.default_rng(0)
    >>> img = rng.rayleigh(0.02, (30, 30, 30)); img[5:25, 5:25, 0:25] = 0.5   # a head at one face
    >>> abs(noise_scale(img) - 0.02) < 0.002
    True
    """
    x = np.asarray(image)
    medians = []
    for axis in range(x.ndim):
        for end in (0, -1):
            face = np.take(x, end, axis=axis)
            face = face[face > 0]
            if face.size:
                medians.append(float(np.median(face)))
    return min(medians) / _RAYLEIGH_MEDIAN if medians else 0.0


def background_threshold(image: np.ndarray, *, max_samples: int = 2_000_000) -> float:
    """The intensity between background and tissue in a normalised ``[0, 1]`` image (see the module
    docstring): Otsu's threshold of ``log(x + LOG_OFFSET * top)`` over the positive voxels, at least
    :data:`NOISE_FLOOR` times :func:`noise_scale`, at most Otsu's threshold of the intensities; both
    thresholds see the voxels clipped at ``top``, their 99.9th percentile, so that a few hot voxels
    (spikes) change nothing.

    >>> rng = np.random.default_rng(0)
    >>> img = rng.rayleigh(0.01, (40, 40, 40))                          # background: the Rician floor of air
    >>> img[6:34, 6:34, 4:30] = 0.25; img[6:34, 6:34, 30:34] = 0.9      # brain, and bright scalp fat above
    >>> from skimage.filters import threshold_otsu
    >>> float(threshold_otsu(img)) > 0.25                                # Otsu alone drops the brain
    True
    >>> 0.04 < background_threshold(img) < 0.25
    True
    """
    from skimage.filters import threshold_otsu

    x = np.asarray(image, np.float32)
    vals = x[x > 0]
    if vals.size > max_samples:  # Otsu on a regular subsample: the same threshold, less work
        vals = vals[:: int(np.ceil(vals.size / max_samples))]
    # a few hot voxels (spikes) must not set the scale: both splits see the values up to the 99.9th percentile
    top = float(np.quantile(vals, 0.999))
    vals = np.minimum(vals, top).astype(np.float64)
    offset = LOG_OFFSET * top
    upper = float(threshold_otsu(vals))
    log_split = float(np.exp(threshold_otsu(np.log(vals + offset))) - offset)
    return min(upper, max(log_split, NOISE_FLOOR * noise_scale(x)))


def is_masked(image: np.ndarray) -> bool:
    """Whether ``image`` has a masked (exactly zero) background: at least :data:`ZERO_BACKGROUND_FRACTION`
    of its voxels are 0 (after normalisation: its minimum).

    >>> is_masked(np.r_[np.zeros(10), np.ones(90)]), is_masked(np.r_[np.zeros(1), np.ones(99)])
    (True, False)
    """
    return float(np.mean(np.asarray(image) == 0)) >= ZERO_BACKGROUND_FRACTION


def head_mask(image: np.ndarray, *, voxel_mm: float = 1.0, max_samples: int = 2_000_000,
              threshold: Optional[float] = None, masked: Optional[bool] = None) -> np.ndarray:
    """Boolean mask of the head in a normalised ``[0, 1]`` image ``(X, Y, Z)`` on an isotropic grid
    of ``voxel_mm`` (see the module docstring). An image without contrast gives an all-True mask.
    ``threshold``: the intensity between background and tissue, instead of :func:`background_threshold`
    (to compare thresholds on the same images). ``masked``: whether the scan's background is masked
    (zeros), when the caller knows it from the input grid (:func:`is_masked` of the input); default: from
    ``image`` itself. A network image resampled from an oblique scan has zeros outside the scan's field
    of view even when the scan's own background is noise."""
    x = np.asarray(image, np.float32)
    if is_masked(x) if masked is None else masked:
        return x > 0
    vals = x[x > 0]
    if vals.size < 16 or float(vals.max()) <= float(vals.min()):
        return np.ones(x.shape, bool)
    mask = x > (background_threshold(x, max_samples=max_samples) if threshold is None else float(threshold))
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
