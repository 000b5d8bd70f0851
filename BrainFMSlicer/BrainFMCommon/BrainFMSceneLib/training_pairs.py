"""Training pairs from the scene -> the folder layout of ``brainfm finetune``.

A pair is an image (scalar volume node) and its labels (a segmentation node or a labelmap volume
node). :func:`export_training_pairs` writes ``images/<case>.nii`` and ``labels/<case>.nii`` (same
file name, the labels on the exact voxel grid of the image: a segmentation is exported with Slicer's
segmentation-to-labelmap export and the image as reference geometry) and decides the label scheme:

- a segment is one of FreeSurfer's structures of the ``fs33`` scheme when it carries BrainFM's
  label-value tag with such a value (BrainFM's own results, possibly edited) or when its name is that
  structure's FreeSurfer name (e.g. ``Left-Hippocampus``: a FreeSurfer segmentation loaded into Slicer);
- every segment of every pair is such a structure: the labels keep those FreeSurfer numbers, scheme
  ``fs33`` (the new model segments FreeSurfer anatomy);
- otherwise a colour-table CSV (values, names, segment colours) is written as ``label_table.csv`` and
  the scheme is that file: FreeSurfer's structures keep their numbers and names (the new model's class
  then starts from the base model's class of that structure), as do segments with BrainFM's tag of
  another FreeSurfer number; every other segment gets a value by its name (the same name the same value
  in every pair; the smallest values not taken, in first-seen order).

A labelmap node's values count as FreeSurfer numbers when its colour table is BrainFM's label table;
otherwise each value is a segment named after its colour table entry. The input nodes are never
modified (the one temporary labelmap node of a segmentation export is removed again).

>>> import tempfile
>>> write_label_table([TrainingLabel(1, "Lesion", (255, 0, 0))], tempfile.mkdtemp()).name
'label_table.csv'
>>> len(FS33_VALUES), FS33_VALUES[:4]
(32, (2, 3, 4, 5))
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from BrainFMSceneLib._errors import InputError
from BrainFMSceneLib.label_tables import COLOR_NODE_ATTRIBUTE
from BrainFMSceneLib.scene_utils import remove_nodes
from BrainFMSceneLib.segmentation_nodes import LABEL_VALUE_TAG, segment_tag
from BrainFMSceneLib.volume_files import DEFAULT_EXPORT_SUFFIX, export_volume_node, safe_file_stem
from BrainFMSceneLib.volume_nodes import ijk_to_ras, reindex_to_grid, update_volume_from_array, volume_to_array_and_affine

PathLike = Union[str, Path]
#: the FreeSurfer numbers of the engine's ``fs33`` scheme (``brainfm.labels.get_scheme("fs33")``, background left out)
FS33_VALUES: Tuple[int, ...] = (2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 26, 28, 41, 42, 43, 44, 46,
                                47, 49, 50, 51, 52, 53, 54, 58, 60)
FS33 = "fs33"
LABEL_TABLE_NAME = "label_table.csv"


@dataclass(frozen=True)
class TrainingLabel:
    """One class of the training labels: its ``value`` in the label files, ``name`` and RGB colour (0..255)."""

    value: int
    name: str
    color: Tuple[int, int, int]


@dataclass
class ExportedPairs:
    """What :func:`export_training_pairs` wrote: ``data_dir`` (``images/``, ``labels/``), the
    ``label_scheme`` for ``--label-scheme`` (``fs33`` or the path of the written colour table),
    the classes and the case names (one per pair, in order)."""

    data_dir: Path
    label_scheme: str
    labels: List[TrainingLabel] = field(default_factory=list)
    cases: List[str] = field(default_factory=list)


@dataclass
class _Segment:
    """A class of one pair's labels: its index (1-based) in the pair's index map."""

    name: str
    color: Tuple[int, int, int]
    fs_value: Optional[int]


def fs33_names() -> Dict[int, str]:
    """FreeSurfer number -> FreeSurfer name of the structures of the engine's ``fs33`` scheme (empty where
    the engine is not installed: then only BrainFM's tags identify them)."""
    try:
        from brainfm.labels import get_scheme
    except ImportError:
        return {}
    scheme = get_scheme(FS33)
    return {int(v): str(n) for n, v in zip(scheme.names, scheme.fs_values) if int(v) in FS33_VALUES}


def _rgb255(rgb: Sequence[float]) -> Tuple[int, int, int]:
    return tuple(int(round(min(max(float(c), 0.0), 1.0) * 255)) for c in list(rgb)[:3])  # type: ignore[return-value]


def _check_image(node: Any) -> None:
    if node is None:
        raise InputError("A training pair has no image volume: select the scan of each pair.")
    if node.IsA("vtkMRMLLabelMapVolumeNode") or not node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError(f"{node.GetName()!r} is not an image volume: the first node of a pair is the scan.")
    image = node.GetImageData()
    if image is None or min(image.GetDimensions()) < 1:
        raise InputError(f"The volume {node.GetName()!r} has no image data: load the scan again.")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"The volume {node.GetName()!r} has {image.GetNumberOfScalarComponents()} components per voxel; "
                         "fine-tuning needs a single-channel scan.")


def _segmentation_on_grid(node: Any, volume: Any) -> Tuple[np.ndarray, List[_Segment]]:
    """Index map (segment i -> i + 1) of a segmentation node on the grid of ``volume``."""
    import slicer

    segmentation = node.GetSegmentation()
    n = segmentation.GetNumberOfSegments()
    if n == 0:
        raise InputError(f"The segmentation {node.GetName()!r} has no segments: draw or import the labels first.")
    ids, segments = [], []
    for i in range(n):
        segment = segmentation.GetNthSegment(i)
        tag = segment_tag(segment, LABEL_VALUE_TAG).strip()
        ids.append(segmentation.GetNthSegmentID(i))
        segments.append(_Segment(segment.GetName(), _rgb255(segment.GetColor()), int(tag) if tag.isdigit() else None))
    scene = volume.GetScene() or node.GetScene()
    existing = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    temp = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName("BrainFM export (temporary)"))
    try:
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(node, ids, temp, volume)
        if not ok or temp.GetImageData() is None:
            raise InputError(f"Slicer could not export the segmentation {node.GetName()!r} "
                             f"on the grid of {volume.GetName()!r}.")
        index, affine = volume_to_array_and_affine(temp)
    finally:  # the temporary node and what the export added for it (display node, colour table)
        added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        remove_nodes(scene, [n for n in reversed(added) if n.GetID() not in existing])
    return _on_grid(index, affine, volume, node), segments


def _on_grid(labels: np.ndarray, affine: np.ndarray, volume: Any, node: Any) -> np.ndarray:
    """``labels`` (voxel -> RAS ``affine``) on the voxel grid of ``volume``: re-indexed when they share
    the voxel centres, else nearest-neighbour sampled at the volume's voxel centres (0 outside)."""
    from brainfm.geometry.grid import resample_to_grid
    from brainfm.volume import Volume

    target, shape = ijk_to_ras(volume), tuple(volume.GetImageData().GetDimensions())
    moved = reindex_to_grid(labels, affine, target, shape)
    if moved is not None:
        return np.asarray(moved)
    return resample_to_grid(Volume(labels, affine), target, shape, order="nearest").data


def _labelmap_on_grid(node: Any, volume: Any) -> Tuple[np.ndarray, List[_Segment]]:
    """Index map of a labelmap node on the grid of ``volume`` (one segment per value present)."""
    if node.GetImageData() is None:
        raise InputError(f"The label map {node.GetName()!r} has no image data.")
    labels, affine = volume_to_array_and_affine(node)
    if labels.ndim != 3 or (not np.issubdtype(labels.dtype, np.integer) and np.any(np.mod(labels, 1))):
        raise InputError(f"The label map {node.GetName()!r} does not hold integer labels.")
    labels = _on_grid(labels.astype(np.int64), affine, volume, node)
    values = [int(v) for v in np.unique(labels) if v > 0]
    display = node.GetDisplayNode()
    colors = display.GetColorNode() if display is not None else None
    freesurfer = colors is not None and colors.GetAttribute(COLOR_NODE_ATTRIBUTE) == "1"
    segments, index = [], np.zeros(labels.shape, np.int32)
    for i, value in enumerate(values):
        name, rgb = f"Label {value}", (128, 128, 128)
        if colors is not None and 0 <= value < colors.GetNumberOfColors():
            rgba = [0.0, 0.0, 0.0, 0.0]
            colors.GetColor(value, rgba)
            name, rgb = colors.GetColorName(value) or name, _rgb255(rgba)
        segments.append(_Segment(name, rgb, value if freesurfer else None))
        index[labels == value] = i + 1
    return index, segments


def _pair_labels(pair: Tuple[Any, Any]) -> Tuple[Any, Any, np.ndarray, List[_Segment]]:
    volume, labels = pair
    _check_image(volume)
    if labels is None:
        raise InputError(f"The training pair of {volume.GetName()!r} has no segmentation.")
    if labels.IsA("vtkMRMLSegmentationNode"):
        index, segments = _segmentation_on_grid(labels, volume)
    elif labels.IsA("vtkMRMLLabelMapVolumeNode"):
        index, segments = _labelmap_on_grid(labels, volume)
    else:
        raise InputError(f"{labels.GetName()!r} is neither a segmentation nor a label map.")
    if not np.any(index > 0):
        raise InputError(f"The segmentation {labels.GetName()!r} does not overlap the volume {volume.GetName()!r}: "
                         "pair each scan with its own segmentation.")
    return volume, labels, index, segments


def write_label_table(labels: Sequence[TrainingLabel], folder: PathLike) -> Path:
    """Write a Slicer colour-table CSV (``LabelValue,Name,Color_R,Color_G,Color_B,Color_A``) of ``labels``
    into ``folder``; the engine reads it with ``brainfm.labels.read_label_table``."""
    path = Path(folder) / LABEL_TABLE_NAME
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["LabelValue", "Name", "Color_R", "Color_G", "Color_B", "Color_A"])
        for label in labels:
            writer.writerow([label.value, label.name, *label.color, 255])
    return path


def _write_labels(index: np.ndarray, lut: np.ndarray, volume: Any, path: Path) -> None:
    import slicer

    values = lut[index]
    dtype = np.int16 if int(lut.max()) < 2 ** 15 else np.int32
    node = slicer.vtkMRMLLabelMapVolumeNode()  # detached: never added to the scene
    update_volume_from_array(node, values.astype(dtype), ijk_to_ras(volume))
    export_volume_node(node, path)


def export_training_pairs(pairs: Sequence[Tuple[Any, Any]], folder: PathLike) -> ExportedPairs:
    """Write ``pairs`` of (scalar volume node, segmentation or labelmap node) into ``folder`` for
    ``brainfm finetune --data folder`` and choose the label scheme (module docstring).

    :raises InputError: (naming the node) no pairs, a volume without image data, a segmentation without
        segments, labels that do not overlap their volume.
    """
    if not pairs:
        raise InputError("Add at least one training pair (a scan and its segmentation).")
    found = [_pair_labels(tuple(pair)) for pair in pairs]  # every check before anything is written
    names = fs33_names()
    by_fs_name = {n.lower(): v for v, n in names.items()}

    def freesurfer(s: _Segment) -> Optional[int]:
        return s.fs_value if s.fs_value is not None else by_fs_name.get(s.name.strip().lower())

    structures = [freesurfer(s) for *_, segments in found for s in segments]
    fs33 = all(v in FS33_VALUES for v in structures)
    taken = {int(v) for v in structures if v is not None}
    by_name: Dict[str, TrainingLabel] = {}
    by_value: Dict[int, TrainingLabel] = {}
    luts = []
    for *_, segments in found:
        lut = np.zeros(len(segments) + 1, np.int64)
        for i, s in enumerate(segments):
            value = freesurfer(s)
            if value is not None:  # FreeSurfer's name, which the engine matches with the base's class
                name = s.name if fs33 else names.get(int(value), s.name)
                label = by_value.setdefault(int(value), TrainingLabel(int(value), name, s.color))
            else:
                if s.name not in by_name:
                    free = next(v for v in range(1, 1 << 15) if v not in taken)
                    taken.add(free)
                    by_name[s.name] = TrainingLabel(free, s.name, s.color)
                label = by_name[s.name]
            lut[i + 1] = label.value
        luts.append(lut)
    root = Path(folder)
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    cases = []
    for n, ((volume, _, index, _), lut) in enumerate(zip(found, luts), start=1):
        case = f"{n:03d}_{safe_file_stem(volume.GetName(), default='scan')}"
        export_volume_node(volume, root / "images" / f"{case}{DEFAULT_EXPORT_SUFFIX}")
        _write_labels(index, lut, volume, root / "labels" / f"{case}{DEFAULT_EXPORT_SUFFIX}")
        cases.append(case)
    labels = sorted(list(by_value.values()) + list(by_name.values()), key=lambda x: x.value)
    scheme = FS33 if fs33 else str(write_label_table(labels, root))
    return ExportedPairs(root, scheme, labels, cases)
