"""Registration to the atlas fitted to segmentations: the map from a scan to the atlas that carries
the model's segmentation of the scan onto its segmentation of the atlas template.

Two steps, both on label maps (so the scan's contrast does not matter):

1. **Affine from structure centroids.** The centroid of every structure found in both label maps
   (background and extra-cerebral CSF left out, left and right apart) is a point pair; the affine
   map is their least-squares fit, each pair weighted by the square root of the smaller structure's
   voxel count. No optimisation, so no local minimum: it cannot land upside down.
2. **Demons.** Both label maps are rendered with the same T1-like contrast
   (:func:`brainfm.generator.physics.render_t1_like`) on a grid of ``grid_mm`` around the scan's
   labelled voxels, the atlas rendering through the affine map. SimpleITK's fast symmetric forces
   demons then find a smooth displacement (``iterations`` rounds, Gaussian smoothing of the field
   with a standard deviation of ``smoothing`` grid voxels).

A scan point ``p`` (RAS mm) goes to the atlas point ``matrix @ (p + displacement(p))``
(:class:`AtlasMap`). Outside the demons grid the displacement is zero (the affine map alone).

>>> import numpy as np
>>> lab = np.zeros((24, 24, 24), np.int16)
>>> lab[4:12, 6:18, 6:18], lab[12:20, 6:18, 6:18] = 2, 41          # two hemispheres
>>> lab[10:14, 10:14, 2:6], lab[10:14, 2:5, 10:14] = 16, 10        # two structures off their plane
>>> scan = Volume(lab, np.diag([2.0, 2.0, 2.0, 1.0]))
>>> atlas = Volume(lab, np.diag([2.0, 2.0, 2.0, 1.0]) @ np.array(
...     [[1, 0, 0, 3], [0, 1, 0, -2], [0, 0, 1, 0], [0, 0, 0, 1.0]]))   # the same brain, moved
>>> amap = fit_atlas_map(scan, atlas, iterations=0)
>>> np.round(amap(np.array([[10.0, 20.0, 30.0]])), 3).tolist()
[[16.0, 16.0, 30.0]]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from brainfm.volume import Volume

#: labels left out of the centroid fit: background and extra-cerebral CSF (its extent varies most)
EXCLUDED = (0, 24)
#: the affine fit needs at least this many structures found in both label maps (4 points fix an affine)
MIN_STRUCTURES = 4
#: working grid (mm), demons rounds, field smoothing (grid voxels), margin around the labels (mm)
GRID_MM = 2.0
ITERATIONS = 30
SMOOTHING = 1.0
MARGIN_MM = 8.0

_LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class AtlasMap:
    """Scan RAS mm -> atlas RAS mm: ``matrix @ (p + field(p))``.

    Attributes:
        matrix: 4x4 affine part (scan world -> atlas world).
        field: displacement (RAS mm) as a ``(X, Y, Z, 3)`` Volume on the demons grid, or None
            (the affine map alone).
    """

    matrix: np.ndarray
    field: Optional[Volume] = None

    def __call__(self, points_mm: np.ndarray) -> np.ndarray:
        """Atlas points (float32, same shape) of scan points ``(..., 3)`` in RAS mm."""
        from brainfm.tasks.registration import sample_at

        p = np.asarray(points_mm, np.float32)
        if self.field is not None:
            data = np.asarray(self.field.data)
            p = p + np.stack([sample_at(Volume(data[..., r], self.field.affine), p) for r in range(3)], -1)
        m = np.asarray(self.matrix, np.float32)
        out = np.empty(p.shape, np.float32)
        for r in range(3):  # column-wise: no (N, 3) @ (3, 3) temporaries
            out[..., r] = m[r, 0] * p[..., 0] + m[r, 1] * p[..., 1] + m[r, 2] * p[..., 2] + m[r, 3]
        return out


def structure_centroids(labels: Volume, *, excluded: Sequence[int] = EXCLUDED) -> dict:
    """``{label: (centroid RAS mm (3,), voxel count)}`` of every structure of ``labels``.

    >>> lab = np.zeros((4, 4, 4), np.int16); lab[0:2, 0, 0] = 2
    >>> c = structure_centroids(Volume(lab, np.eye(4)))
    >>> c[2][0].tolist(), c[2][1]
    ([0.5, 0.0, 0.0], 2)
    """
    data = np.asarray(labels.data)
    ijk = np.nonzero(data)
    if not ijk[0].size:
        return {}
    values, inverse, counts = np.unique(data[ijk], return_inverse=True, return_counts=True)
    centres = np.stack([np.bincount(inverse, weights=ax, minlength=len(values)) for ax in ijk], -1) / counts[:, None]
    aff = np.asarray(labels.affine, np.float64)
    world = centres @ aff[:3, :3].T + aff[:3, 3]
    skip = set(int(e) for e in excluded)
    return {int(v): (world[i], int(counts[i])) for i, v in enumerate(values) if int(v) not in skip}


def centroid_affine(scan_labels: Volume, atlas_labels: Volume, *, excluded: Sequence[int] = EXCLUDED) -> np.ndarray:
    """4x4 affine (scan RAS mm -> atlas RAS mm) fitted to the structure centroids of both label maps.

    Raises ValueError when fewer than :data:`MIN_STRUCTURES` structures are in both.
    """
    a = structure_centroids(scan_labels, excluded=excluded)
    b = structure_centroids(atlas_labels, excluded=excluded)
    common = sorted(set(a) & set(b))
    if len(common) < MIN_STRUCTURES:
        raise ValueError(f"{len(common)} structures in both the scan's and the atlas's segmentation, "
                         f"at least {MIN_STRUCTURES} are needed")
    x = np.array([a[v][0] for v in common])
    y = np.array([b[v][0] for v in common])
    w = np.sqrt(np.array([min(a[v][1], b[v][1]) for v in common], np.float64))[:, None]
    design = np.c_[x, np.ones(len(x))]
    coef, *_ = np.linalg.lstsq(design * w, y * w, rcond=None)
    if np.linalg.matrix_rank(design) < 4:
        raise ValueError("the structure centroids are coplanar: they do not fix an affine map")
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = coef[:3].T, coef[3]
    return m


def _sitk_affine(matrix: np.ndarray) -> Any:
    """ITK transform (LPS points) of a RAS -> RAS 4x4 matrix."""
    import SimpleITK as sitk

    t = sitk.AffineTransform(3)
    t.SetMatrix((_LPS @ matrix[:3, :3] @ _LPS).ravel().tolist())
    t.SetTranslation((_LPS @ matrix[:3, 3]).tolist())
    return t


def _working_grid(labels: Volume, grid_mm: float) -> Any:
    """Empty SimpleITK image of ``grid_mm`` voxels over the box of ``labels``, with its axes."""
    import SimpleITK as sitk

    from brainfm.io.sitk_bridge import itk_geometry

    sp = np.linalg.norm(np.asarray(labels.affine, np.float64)[:3, :3], axis=0)
    size = np.maximum(np.ceil(np.array(labels.shape) * sp / grid_mm), 2).astype(int)
    _sp, direction, origin = itk_geometry(labels.affine)
    d = np.asarray(direction, np.float64).reshape(3, 3)
    ref = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    ref.SetSpacing([float(grid_mm)] * 3)
    ref.SetDirection(direction)
    # the first grid voxel's corner is the corner of the box's first voxel
    ref.SetOrigin((np.asarray(origin, np.float64) + d @ ((grid_mm - sp) / 2.0)).tolist())
    return ref


def _cropped(labels: Volume, margin_mm: float) -> Volume:
    """``labels`` cropped to its labelled box plus ``margin_mm`` (a view)."""
    from brainfm.geometry.crop import crop_to_foreground

    sp = float(np.linalg.norm(np.asarray(labels.affine, np.float64)[:3, :3], axis=0).min())
    return crop_to_foreground(labels, threshold=None, margin_vox=int(np.ceil(margin_mm / sp)))[0]


def _rendering(labels: Volume, ref: Any, transform: Any) -> Any:
    """The T1-like rendering of ``labels`` smoothed to the working grid and sampled on ``ref``."""
    import SimpleITK as sitk

    from brainfm.generator.physics import render_t1_like
    from brainfm.io.sitk_bridge import to_sitk

    img = to_sitk(labels.with_data(render_t1_like(np.asarray(labels.data))), dtype=np.float32)
    img = sitk.SmoothingRecursiveGaussian(img, 0.5 * ref.GetSpacing()[0])
    return sitk.Resample(img, ref, transform, sitk.sitkLinear, 0.0)


def fit_atlas_map(scan_labels: Volume, atlas_labels: Volume, *, grid_mm: float = GRID_MM,
                  iterations: int = ITERATIONS, smoothing: float = SMOOTHING, margin_mm: float = MARGIN_MM,
                  excluded: Sequence[int] = EXCLUDED) -> AtlasMap:
    """The :class:`AtlasMap` that carries ``scan_labels`` onto ``atlas_labels`` (FreeSurfer numbers,
    any grids; see the module docstring). ``iterations=0``: the affine map alone.

    Raises ValueError when the label maps share too few structures (:func:`centroid_affine`).
    """
    scan_labels, atlas_labels = _cropped(scan_labels, margin_mm), _cropped(atlas_labels, margin_mm)
    matrix = centroid_affine(scan_labels, atlas_labels, excluded=excluded)
    if iterations <= 0:
        return AtlasMap(matrix)
    import SimpleITK as sitk

    from brainfm.io.sitk_bridge import from_sitk, sitk_array

    ref = _working_grid(scan_labels, grid_mm)
    fixed = _rendering(scan_labels, ref, sitk.Transform())
    moving = _rendering(atlas_labels, ref, _sitk_affine(matrix))
    demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
    demons.SetNumberOfIterations(int(iterations))
    demons.SetStandardDeviations(float(smoothing))
    field = demons.Execute(fixed, moving)  # moving(p + d(p)) ~ fixed(p), d in LPS mm
    d_lps = np.stack([sitk_array(sitk.VectorIndexSelectionCast(field, r, sitk.sitkFloat32)) for r in range(3)], -1)
    d_ras = (d_lps * np.diag(_LPS).astype(np.float32)).astype(np.float32)
    return AtlasMap(matrix, Volume(np.ascontiguousarray(d_ras), from_sitk(fixed).affine))
