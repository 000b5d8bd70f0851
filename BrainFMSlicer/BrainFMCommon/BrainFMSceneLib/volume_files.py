"""Volume nodes <-> files for the child process, through Slicer storage nodes.

* :func:`export_volume_node` writes a node with a *detached* ``vtkMRMLVolumeArchetypeStorageNode``:
  the input node gets no storage node, keeps its name and its modified flags.
* :func:`read_volume_file` reads a result file back (nibabel for NIfTI, the engine's format: fast,
  and vector components stay RAS; the Slicer storage node for other formats).
* :func:`import_volume_file` puts a result into the scene; when the file holds the input grid
  (possibly re-ordered, e.g. the K-flip of left-handed volumes after a file round trip) the voxels
  are re-indexed and the input node's geometry is copied exactly: output grid = input grid.

>>> import numpy as np, slicer, tempfile, os
>>> from BrainFMSceneLib.volume_nodes import add_volume
>>> from BrainFMSceneLib.volume_files import export_volume_node, read_volume_file
>>> scene = slicer.vtkMRMLScene()
>>> node = add_volume(scene, np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.eye(4), "in")
>>> path = export_volume_node(node, os.path.join(tempfile.mkdtemp(), "in.nrrd"))
>>> arr, aff = read_volume_file(path)
>>> float(arr[1, 2, 3]), node.GetStorageNode() is None
(23.0, True)
"""
from __future__ import annotations

import os
import re
import tempfile
import uuid
from pathlib import Path
from typing import Any, Optional, Tuple, Union

import numpy as np

from BrainFMSceneLib._errors import InputError
from BrainFMSceneLib.volume_nodes import (
    add_volume,
    ijk_to_ras,
    reindex_to_grid,
    update_volume_from_array,
    volume_to_array_and_affine,
)

try:
    import slicer
except ImportError:  # pragma: no cover
    slicer = None  # type: ignore[assignment]

PathLike = Union[str, "os.PathLike[str]"]
#: Extensions the archetype storage node writes in slicer-core and full Slicer.
WRITE_EXTENSIONS = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
#: Default exchange format for the child process. Measured for a 256^3 int16 volume (slicer-core
#: 5.13, 2 shared cores): write .nrrd 0.02 s, .nii 0.02 s, .nii.gz 0.95 s, compressed .nrrd 0.82 s;
#: read .nii with nibabel ~0 s (memory map), with SimpleITK 0.07 s. Uncompressed NIfTI is as fast
#: as NRRD and is the engine's native format (nibabel), so it is the default.
DEFAULT_EXPORT_SUFFIX = ".nii"


#: image suffixes a node name may still carry (``scan.nii.gz`` loaded by some readers keeps them)
_NAME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".mgz", ".mgh")


def safe_file_stem(name: str, *, default: str = "input", max_length: int = 100) -> str:
    """A file-name stem made of a node's name: letters, digits, ``.``, ``_`` and ``-`` kept, other runs of
    characters replaced by ``_``, an image suffix dropped; ``default`` when nothing is left. The engine
    names its input file in its messages, so the user reads the name of the volume they selected.

    >>> safe_file_stem("T1 MPRAGE (sag)"), safe_file_stem("scan.nii.gz"), safe_file_stem("../"), safe_file_stem("α")
    ('T1_MPRAGE_sag', 'scan', 'input', 'input')
    """
    text = str(name or "")
    lower = text.lower()
    for suffix in _NAME_SUFFIXES:
        if lower.endswith(suffix) and len(text) > len(suffix):
            text = text[: -len(suffix)]
            break
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:max_length].strip("._")
    return stem or default


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def export_volume_node(node: Any, path: PathLike, *, compress: bool = False) -> Path:
    """Write ``node`` to ``path`` (``.nrrd``, ``.nii``, ``.nii.gz``, ``.mha``...) atomically.

    The node is not modified: no storage node is attached to it, its name, its
    ``GetModifiedSinceRead()`` state and its ``MTime`` stay as they were.
    Raises :class:`InputError` for a node without image data or an unsupported extension.
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in WRITE_EXTENSIONS:
        raise InputError(f"cannot write {path.name}: use one of {', '.join(WRITE_EXTENSIONS)}")
    if node is None or node.GetImageData() is None:
        raise InputError("the volume node to export has no image data")
    if not path.parent.is_dir():
        raise InputError(f"output folder does not exist: {path.parent}")
    tmp = path.parent / f".{path.name[: -len(suffix)]}.{uuid.uuid4().hex[:8]}.tmp{suffix}"
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()  # detached: never added to the scene
    storage.SetFileName(str(tmp))
    storage.SetUseCompression(1 if compress else 0)
    try:
        ok = storage.WriteData(node)
        if not ok or not tmp.is_file():
            raise InputError(f"Slicer could not write volume {node.GetName()!r} to {path}")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _read_with_nibabel(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    import nibabel as nib  # a brainfm dependency: present wherever the engine wrote the file

    img = nib.load(str(path), mmap=False)  # no memory map: the temp folder is deleted after import
    data = np.asarray(img.dataobj)  # NIfTI voxel order: an [i, j, k] array in Fortran order
    if data.ndim == 5 and data.shape[3] == 1:  # NIfTI vector convention (X, Y, Z, 1, C)
        data = data[:, :, :, 0, :]
    return data, np.asarray(img.affine, dtype=np.float64)


def read_volume_file(path: PathLike, *, labelmap: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Read ``path`` as ``(array[i, j, k(, c)], affine RAS)``.

    NIfTI files (what ``brainfm run`` writes) are read with nibabel: the voxels are decompressed
    straight into an ``[i, j, k]`` array (Fortran order, which the node update copies without a
    transposition) and vector fields keep their RAS-mm components (ITK would convert them to
    LPS). Other formats go through ``vtkMRMLVolumeArchetypeStorageNode`` (the Slicer reader).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"result file not found: {path}")
    if _suffix(path) in (".nii", ".nii.gz"):
        try:
            return _read_with_nibabel(path)
        except ImportError:  # pragma: no cover - nibabel comes with brainfm
            pass
        except Exception as exc:  # noqa: BLE001 - truncated/corrupt file: a clear error
            raise InputError(f"could not read {path.name}: {type(exc).__name__}: {exc}") from None
    cls = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    temp_node = getattr(slicer, cls)()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(temp_node) or temp_node.GetImageData() is None:
        raise InputError(f"Slicer could not read {path}")
    return volume_to_array_and_affine(temp_node)


def import_volume_file(scene: Any, path: PathLike, *, name: str, reference_node: Any = None,
                       labelmap: bool = False, node: Any = None,
                       color_node_id: Optional[str] = None,
                       data: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> Any:
    """Load a result file into ``node`` (updated in place) or a new node named ``name``.

    :param reference_node: the input volume; when the file holds the same voxel centres its
        geometry is copied exactly and the voxels re-indexed to its IJK order.
    :param labelmap: create a labelmap node (integer voxels).
    :param color_node_id: color table for a new labelmap's display node.
    :param data: ``read_volume_file(path)`` already done (e.g. on a reader thread); not re-read.
    """
    array, affine = data if data is not None else read_volume_file(path, labelmap=labelmap)
    if reference_node is not None and reference_node.GetImageData() is not None:
        ref_aff = ijk_to_ras(reference_node)
        ref_shape = tuple(reference_node.GetImageData().GetDimensions())
        moved = reindex_to_grid(array, affine, ref_aff, ref_shape)
        if moved is not None:
            array, affine = moved, ref_aff
    if node is not None:
        update_volume_from_array(node, array, affine)
        if color_node_id and node.GetDisplayNode() is not None:
            node.GetDisplayNode().SetAndObserveColorNodeID(color_node_id)
        return node
    return add_volume(scene, array, affine, name, labelmap=labelmap, color_node_id=color_node_id)


def private_temp_dir(prefix: str = "BrainFM-") -> Path:
    """A new private temporary folder (mode 0o700, from ``tempfile.mkdtemp``)."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(d, 0o700)
    return d
