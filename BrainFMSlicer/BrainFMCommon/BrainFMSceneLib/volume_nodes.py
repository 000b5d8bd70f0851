"""Exact-geometry exchange between MRML volume nodes, numpy arrays and ``brainfm.volume.Volume``.

Conventions (the same as ``brainfm.volume``): arrays are indexed ``[i, j, k]`` (+ a trailing
component axis for vector volumes) and the 4x4 ``affine`` maps voxel indices to **RAS** mm (the
node's ``IJKToRAS`` matrix). ``slicer.util.arrayFromVolume`` is ``[k, j, i]``; this module hides the
transposition. Qt-free: works on the ``slicer-core`` wheel with any scene passed in explicitly.

>>> import numpy as np, slicer
>>> from BrainFMSceneLib.volume_nodes import add_volume, volume_to_array_and_affine
>>> scene = slicer.vtkMRMLScene()
>>> aff = np.diag([2.0, 1.0, 1.0, 1.0]); aff[:3, 3] = [-10, 0, 5]
>>> node = add_volume(scene, np.zeros((3, 4, 5), np.float32), aff, "demo")
>>> arr, a = volume_to_array_and_affine(node)
>>> arr.shape, float(a[0, 0]), float(a[0, 3])
((3, 4, 5), 2.0, -10.0)
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from BrainFMSceneLib._errors import InputError

try:  # the slicer / vtk modules exist in Slicer and in the slicer-core wheel
    import slicer
    import vtk
    from vtk.util import numpy_support
except ImportError:  # pragma: no cover - only documentation tools import without slicer
    slicer = None  # type: ignore[assignment]
    vtk = None  # type: ignore[assignment]
    numpy_support = None  # type: ignore[assignment]


def _require_slicer() -> None:
    if slicer is None:  # pragma: no cover
        raise ImportError("BrainFMSceneLib.volume_nodes needs the 'slicer' (or slicer-core) Python package")


# -- matrices ---------------------------------------------------------------------------------
def ijk_to_ras(node: Any) -> np.ndarray:
    """The node's voxel -> RAS affine (4x4 float64), i.e. ``GetIJKToRASMatrix``."""
    _require_slicer()
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def _vtk_matrix(affine: np.ndarray) -> Any:
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(affine[r, c]))
    return m


def _check_affine(affine: Any) -> np.ndarray:
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise InputError(f"affine must be 4x4, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise InputError("affine is singular or contains NaN/Inf")
    return a


# -- node -> array ----------------------------------------------------------------------------
def volume_to_array_and_affine(node: Any) -> Tuple[np.ndarray, np.ndarray]:
    """Copy of the voxels as ``array[i, j, k(, c)]`` and the node's IJK -> RAS affine.

    The geometry is the node's own (local) frame; a parent transform is not applied.
    Raises :class:`InputError` when the node has no image data.
    """
    _require_slicer()
    image = node.GetImageData() if node is not None else None
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        name = node.GetName() if node is not None else None
        raise InputError(f"volume node {name!r} has no image data")
    dims = image.GetDimensions()  # (i, j, k)
    scalars = image.GetPointData().GetScalars()
    ncomp = scalars.GetNumberOfComponents()
    flat = numpy_support.vtk_to_numpy(scalars)
    kji = flat.reshape((dims[2], dims[1], dims[0]) + ((ncomp,) if ncomp > 1 else ()))
    axes = (2, 1, 0, 3) if ncomp > 1 else (2, 1, 0)
    # one plain memory copy; the [i, j, k] array is a (Fortran-ordered) transposed view of it, so
    # putting it back into a node (kji memory order) is again a plain copy, not a transposition
    return kji.copy().transpose(axes), ijk_to_ras(node)


# -- array -> node ----------------------------------------------------------------------------
def _image_data(array_ijk: np.ndarray) -> Any:
    arr = np.asarray(array_ijk)
    if arr.ndim not in (3, 4):
        raise InputError(f"expected a 3D array (or 3D + components), got {arr.ndim}D")
    image = vtk.vtkImageData()
    image.SetDimensions(int(arr.shape[0]), int(arr.shape[1]), int(arr.shape[2]))
    image.GetPointData().SetScalars(vtk_array_from_ijk(arr))
    return image


def vtk_array_from_ijk(array_ijk: np.ndarray, *, dtype: Any = None) -> Any:
    """A new VTK data array holding ``array_ijk[i, j, k(, c)]`` in VTK point order (i fastest).

    The voxels are copied once, straight into memory owned by VTK (no intermediate numpy copy;
    an ``[i, j, k]`` array in Fortran order, as nibabel reads NIfTI files, is a plain memory copy).
    ``dtype`` converts the values on the way (e.g. ``np.float64``); VTK has no bool or float16
    arrays, so those become uint8 and float32.

    >>> import numpy as np
    >>> a = vtk_array_from_ijk(np.arange(6, dtype=np.int16).reshape(3, 2, 1))
    >>> a.GetNumberOfTuples(), a.GetValue(1), a.GetValue(3)  # VTK point 1 is (i, j) = (1, 0), 3 is (0, 1)
    (6, 2, 1)
    """
    _require_slicer()
    arr = np.asarray(array_ijk)
    if arr.ndim not in (3, 4):
        raise InputError(f"expected a 3D array (or 3D + components), got {arr.ndim}D")
    ncomp = 1 if arr.ndim == 3 else int(arr.shape[3])
    target = np.dtype(dtype) if dtype is not None else arr.dtype
    target = {np.dtype(np.bool_): np.dtype(np.uint8), np.dtype(np.float16): np.dtype(np.float32)}.get(target, target)
    out = numpy_support.create_vtk_array(numpy_support.get_vtk_array_type(target))
    out.SetNumberOfComponents(ncomp)
    out.SetNumberOfTuples(int(arr.shape[0]) * int(arr.shape[1]) * int(arr.shape[2]))
    if out.GetNumberOfTuples():
        view = numpy_support.vtk_to_numpy(out).reshape(arr.shape[2::-1] + arr.shape[3:])
        np.copyto(view, arr.transpose((2, 1, 0, 3) if arr.ndim == 4 else (2, 1, 0)), casting="unsafe")
    return out


def update_volume_from_array(node: Any, array_ijk: np.ndarray, affine: Any) -> Any:
    """Replace the voxels and the IJK -> RAS geometry of ``node`` (deep copy; fires Modified).

    The node keeps its identity (ID, name, display settings, references). Returns ``node``.
    """
    _require_slicer()
    a = _check_affine(affine)
    image = _image_data(array_ijk)
    was = node.StartModify()
    try:
        node.SetIJKToRASMatrix(_vtk_matrix(a))
        node.SetAndObserveImageData(image)
    finally:
        node.EndModify(was)
    return node


def add_volume(scene: Any, array_ijk: np.ndarray, affine: Any, name: str, *,
               labelmap: bool = False, color_node_id: Optional[str] = None) -> Any:
    """Add a new volume node (scalar, labelmap or vector by array rank) with display nodes.

    :param labelmap: create a ``vtkMRMLLabelMapVolumeNode`` (integer array expected).
    :param color_node_id: color table for the display node (labelmaps).
    """
    _require_slicer()
    arr = np.asarray(array_ijk)
    if labelmap:
        if arr.ndim != 3:
            raise InputError("a labelmap must be a 3D array")
        if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_:
            if not np.all(np.mod(arr, 1) == 0):
                raise InputError("a labelmap must hold integer label values")
        arr = arr.astype(np.int32) if arr.dtype not in (np.uint8, np.int16, np.uint16, np.int32) else arr
        cls = "vtkMRMLLabelMapVolumeNode"
    else:
        cls = "vtkMRMLVectorVolumeNode" if arr.ndim == 4 else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(cls, scene.GenerateUniqueName(name))
    update_volume_from_array(node, arr, affine)
    if labelmap and color_node_id:  # avoid the default-LUT lookup (absent in a bare scene)
        display = slicer.vtkMRMLLabelMapVolumeDisplayNode()
        scene.AddNode(display)
        display.SetAndObserveColorNodeID(color_node_id)
        node.SetAndObserveDisplayNodeID(display.GetID())
    else:
        node.CreateDefaultDisplayNodes()
        if color_node_id and node.GetDisplayNode() is not None:
            node.GetDisplayNode().SetAndObserveColorNodeID(color_node_id)
    return node


# -- brainfm.Volume conversion (lazy import: the library works without brainfm) ---------------
def volume_from_node(node: Any) -> Any:
    """``brainfm.volume.Volume`` copy of ``node`` (needs the brainfm package)."""
    from brainfm.volume import Volume  # lazy: torch-free, but may be absent before install

    arr, aff = volume_to_array_and_affine(node)
    return Volume(arr, aff, meta={"source_node": node.GetName()})


def node_from_volume(scene: Any, volume: Any, name: str, *, labelmap: bool = False,
                     node: Any = None) -> Any:
    """Put a ``brainfm.volume.Volume`` into ``node`` (updated in place) or a new node."""
    if node is not None:
        return update_volume_from_array(node, volume.data, volume.affine)
    return add_volume(scene, volume.data, volume.affine, name, labelmap=labelmap)


# -- grids ------------------------------------------------------------------------------------
def grid_permutation(src_affine: Any, src_shape: Tuple[int, ...], dst_affine: Any,
                     dst_shape: Tuple[int, ...], *, atol_mm: float = 1e-3) -> Optional[Tuple[tuple, tuple]]:
    """How to re-index an array on grid ``src`` so that it lies on grid ``dst`` without resampling.

    Returns ``(axes, flips)`` (``array.transpose(axes)`` then reverse the dst axes where
    ``flips[d]``) when both grids hold the same voxel centres in physical space (e.g. the K-flip of
    a left-handed volume after a file round trip), else ``None``.
    """
    src = np.asarray(src_affine, float)
    dst = np.asarray(dst_affine, float)
    m = np.linalg.inv(dst) @ src  # src voxel -> dst voxel
    r = m[:3, :3]
    rr = np.round(r)
    if not np.allclose(r, rr, atol=1e-4) or sorted(np.abs(rr).sum(axis=0).tolist()) != [1, 1, 1]:
        return None
    if not np.allclose(np.abs(rr).sum(axis=1), 1):
        return None
    axes = [0, 0, 0]
    flips = [False, False, False]
    for d in range(3):  # dst axis d comes from src axis s
        s = int(np.nonzero(rr[d])[0][0])
        axes[d] = s
        flips[d] = rr[d, s] < 0
        if int(src_shape[s]) != int(dst_shape[d]):
            return None
    # voxel 0 of src must land on an exact dst index consistent with the flips
    t = m[:3, 3]
    scale = float(np.max(np.linalg.norm(dst[:3, :3], axis=0)))
    for d in range(3):
        expected = (int(dst_shape[d]) - 1) if flips[d] else 0
        if abs(t[d] - expected) * scale > atol_mm:
            return None
    return tuple(axes), tuple(flips)


def reindex_to_grid(array_ijk: np.ndarray, affine: Any, target_affine: Any,
                    target_shape: Tuple[int, ...]) -> Optional[np.ndarray]:
    """``array_ijk`` re-indexed onto the target grid (same voxel centres), or None if impossible.

    The result is a view of ``array_ijk`` (no copy: the node update copies the voxels anyway).
    """
    arr = np.asarray(array_ijk)
    perm = grid_permutation(affine, arr.shape[:3], target_affine, target_shape)
    if perm is None:
        return None
    axes, flips = perm
    out = arr.transpose(tuple(axes) + tuple(range(3, arr.ndim)))
    for d, f in enumerate(flips):
        if f:
            out = np.flip(out, axis=d)
    return out
