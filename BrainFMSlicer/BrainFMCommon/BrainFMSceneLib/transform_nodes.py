"""Displacement field -> ``vtkMRMLGridTransformNode`` (RAS mm, resampling convention).

BrainFM's ``reg_displacement`` holds, at each subject voxel centre ``p`` (RAS mm), ``d(p) = atlas
point - subject point``. The grid transform is stored "FromParent" (resampling, the ITK /
voxelmorph convention): ``FromParent(p) = p + d(p)``. Putting the **atlas** volume under the
transform therefore shows it on the subject (each displayed point ``p`` samples the atlas at
``p + d(p)``); ``GetTransformToParent()`` is the (iteratively computed) inverse.
The grid uses the field's own geometry (oblique and left-handed grids supported via the grid
direction matrix) and trilinear interpolation between voxel centres.

>>> import numpy as np, slicer
>>> from BrainFMSceneLib.transform_nodes import displacement_to_grid_transform
>>> scene = slicer.vtkMRMLScene()
>>> d = np.zeros((4, 4, 4, 3)); d[..., 0] = 2.5
>>> node = displacement_to_grid_transform(scene, d, np.eye(4), "reg")
>>> [round(v, 3) for v in node.GetTransformFromParent().TransformPoint((1.0, 1.0, 1.0))]
[3.5, 1.0, 1.0]
"""
from __future__ import annotations

from typing import Any

import numpy as np

from BrainFMSceneLib._errors import InputError
from BrainFMSceneLib.scene_utils import place_next_to


def _grid_image(displacement_ijk3: np.ndarray, affine: np.ndarray) -> Any:
    import vtk
    from vtk.util import numpy_support

    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image = vtk.vtkImageData()
    image.SetDimensions(*(int(s) for s in displacement_ijk3.shape[:3]))
    image.SetOrigin(*(float(o) for o in affine[:3, 3]))
    image.SetSpacing(*(float(s) for s in spacing))
    # one copy (and float64 conversion) straight into VTK memory; per component, so a field read
    # from a NIfTI vector file (components slowest in memory) is copied in long contiguous runs
    scalars = vtk.vtkDoubleArray()
    scalars.SetNumberOfComponents(3)
    scalars.SetNumberOfTuples(int(np.prod(displacement_ijk3.shape[:3])))
    view = numpy_support.vtk_to_numpy(scalars).reshape(displacement_ijk3.shape[2::-1] + (3,))
    for c in range(3):
        np.copyto(view[..., c], displacement_ijk3[..., c].T, casting="unsafe")
    image.GetPointData().SetScalars(scalars)
    return image


def displacement_to_grid_transform(scene: Any, displacement_ijk3: Any, affine: Any, name: str, *,
                                   node: Any = None, reference_node: Any = None) -> Any:
    """A grid transform node whose ``FromParent`` maps subject point ``p`` to ``p + d(p)``.

    :param displacement_ijk3: ``(X, Y, Z, 3)`` displacement in RAS mm at the voxel centres of
        ``affine`` (voxel -> RAS).
    :param node: existing ``vtkMRMLGridTransformNode`` to update in place.
    :param reference_node: input volume: the transform is placed in its subject-hierarchy folder.
    Raises :class:`InputError` for a field of the wrong shape or with NaN/Inf values.
    """
    import slicer
    import vtk

    d = np.asarray(displacement_ijk3)
    if d.ndim != 4 or d.shape[3] != 3:
        raise InputError(f"a displacement field must have shape (X, Y, Z, 3), got {d.shape}")
    if not np.all(np.isfinite(d)):
        raise InputError("the displacement field contains NaN or Inf values")
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4) or abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        raise InputError("the displacement field's affine must be a non-singular 4x4 matrix")
    spacing = np.linalg.norm(aff[:3, :3], axis=0)
    direction = aff[:3, :3] / spacing
    grid = slicer.vtkOrientedGridTransform()
    dir_matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            dir_matrix.SetElement(r, c, float(direction[r, c]))
    grid.SetGridDirectionMatrix(dir_matrix)
    grid.SetDisplacementGridData(_grid_image(d, aff))
    grid.SetDisplacementScale(1.0)
    grid.SetDisplacementShift(0.0)
    grid.SetInterpolationModeToLinear()
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", scene.GenerateUniqueName(name))
    node.SetAndObserveTransformFromParent(grid)
    node.SetAttribute("BrainFM.TransformConvention", "FromParent: subject point -> atlas point")
    if reference_node is not None:
        place_next_to(node, reference_node)
    return node


def grid_transform_to_displacement(node: Any) -> np.ndarray:
    """The ``(X, Y, Z, 3)`` RAS-mm displacement stored in a grid node made by this module."""
    from vtk.util import numpy_support

    grid = node.GetTransformFromParent()
    if not hasattr(grid, "GetDisplacementGrid"):
        raise InputError(f"{node.GetName()!r} is not a grid transform stored FromParent")
    image = grid.GetDisplacementGrid()
    dims = image.GetDimensions()
    flat = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return flat.reshape(dims[2], dims[1], dims[0], 3).transpose(2, 1, 0, 3).copy()
