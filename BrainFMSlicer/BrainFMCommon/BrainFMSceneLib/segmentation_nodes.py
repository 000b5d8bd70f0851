"""Label map (FreeSurfer numbers) -> ``vtkMRMLSegmentationNode`` with names, colors, terminology.

One segment per label value present (background 0 excluded); segment name and color from the
label table; the label value is kept as the segment's ``LabelValue`` and as the tag
``BrainFM.LabelValue``; the terminology tag is set from the table's codes (SNOMED CT where the
table has them); the reference image geometry is the input volume; the segmentation is placed in
the input's subject-hierarchy folder. Optionally a labelmap volume node with the color table.

>>> import numpy as np, slicer
>>> from BrainFMSceneLib.segmentation_nodes import add_segmentation_from_labels
>>> scene = slicer.vtkMRMLScene()
>>> lab = np.zeros((4, 4, 4), np.int32); lab[1:3, 1:3, 1:3] = 17
>>> out = add_segmentation_from_labels(scene, lab, np.eye(4), name="seg")  # doctest: +SKIP
>>> out.segmentation_node.GetSegmentation().GetNthSegment(0).GetName()  # doctest: +SKIP
'Left-Hippocampus'
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from BrainFMSceneLib._errors import InputError
from BrainFMSceneLib.label_tables import LabelEntry, entries_from_color_node, load_color_table_node
from BrainFMSceneLib.scene_utils import place_next_to, remove_nodes
from BrainFMSceneLib.volume_nodes import ijk_to_ras, reindex_to_grid, update_volume_from_array

LABEL_VALUE_TAG = "BrainFM.LabelValue"
DEFAULT_TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
DEFAULT_ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


@dataclass
class SegmentationImport:
    """What :func:`add_segmentation_from_labels` created or updated."""

    segmentation_node: Any
    labelmap_node: Optional[Any]
    color_node: Any
    label_values: List[int] = field(default_factory=list)


def _labelmap_node(scene: Any, name: str, color_node: Any, node: Any = None) -> Any:
    import slicer

    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName(name))
    if node.GetDisplayNode() is None:
        display = slicer.vtkMRMLLabelMapVolumeDisplayNode()
        scene.AddNode(display)
        node.SetAndObserveDisplayNodeID(display.GetID())
    node.GetDisplayNode().SetAndObserveColorNodeID(color_node.GetID())
    return node


def _check_labels(labels_ijk: Any) -> np.ndarray:
    lab = np.asarray(labels_ijk)
    if lab.ndim != 3:
        raise InputError(f"a label map must be 3D, got shape {lab.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        if not np.all(np.mod(lab, 1) == 0):
            raise InputError("the label map holds non-integer values; is this really a segmentation?")
    if lab.size and (lab.min() < 0 or lab.max() > 2**31 - 1):
        raise InputError("label values must be in 0 .. 2^31-1")
    if lab.dtype in (np.uint8, np.int16, np.uint16, np.int32):
        return lab  # kept: the engine writes int16 labels, and Slicer imports them faster than int32
    return lab.astype(np.int32)


def set_segment_metadata(segment: Any, value: int, entry: Optional[LabelEntry]) -> None:
    """Name, color, label value and terminology tag of one segment from a label entry."""
    segment.SetLabelValue(int(value))
    segment.SetTag(LABEL_VALUE_TAG, str(int(value)))
    if entry is None:
        segment.SetName(f"Label {value}")
        return
    segment.SetName(entry.name)
    segment.SetColor(*entry.color[:3])
    if entry.has_codes:
        segment.SetTag(segment.GetTerminologyEntryTagName(), _with_contexts(entry.terminology))


def _with_contexts(terminology: str) -> str:
    """Fill empty terminology/anatomic context names with Slicer's defaults."""
    parts = terminology.split("~")
    while len(parts) > 7 and parts[-1] == "":  # color nodes append an empty field
        parts.pop()
    if len(parts) == 7:
        parts[0] = parts[0] or DEFAULT_TERMINOLOGY_CONTEXT
        if parts[5].strip("^"):
            parts[4] = parts[4] or DEFAULT_ANATOMIC_CONTEXT
    return "~".join(parts)


def segment_tag(segment: Any, tag: str) -> str:
    """Value of a segment tag ("" when absent)."""
    import vtk

    value = vtk.reference("")
    return str(value) if segment.GetTag(tag, value) else ""


def add_segmentation_from_labels(scene: Any, labels_ijk: Any, affine: Any = None, *, name: str,
                                 reference_node: Any = None, color_node: Any = None,
                                 segmentation_node: Any = None, create_labelmap: bool = False,
                                 labelmap_node: Any = None, csv_path: Optional[str] = None) -> SegmentationImport:
    """Build (or refill) a segmentation node from an integer label array ``labels_ijk[i, j, k]``.

    :param affine: voxel -> RAS of the labels; None means "on the reference node's grid".
    :param name: name of new nodes (e.g. ``"<input> segmentation"``).
    :param reference_node: the input volume: geometry reference, subject-hierarchy parent and
        parent transform. Labels on the same voxel centres are re-indexed to its grid exactly; labels on
        another grid (e.g. a 1 mm grid for a thick-slice input) keep it, and it becomes the
        segmentation's reference geometry (so editing does not resample them to the input's voxels).
    :param color_node: label table node; default :func:`load_color_table_node` (engine table).
    :param segmentation_node: existing node to refill (its segments are replaced).
    :param create_labelmap: also keep a labelmap volume node (or fill ``labelmap_node``).
    :param csv_path: explicit Slicer color-table CSV for the names/colors/codes.
    """
    import slicer

    lab = _check_labels(labels_ijk)
    if affine is None:
        if reference_node is None:
            raise InputError("give the label map's affine or a reference volume node")
        affine = ijk_to_ras(reference_node)
        if tuple(reference_node.GetImageData().GetDimensions()) != lab.shape:
            raise InputError("the label map does not have the reference volume's shape")
    affine = np.asarray(affine, dtype=np.float64)
    on_reference_grid = False
    if reference_node is not None and reference_node.GetImageData() is not None:
        ref_aff = ijk_to_ras(reference_node)
        moved = reindex_to_grid(lab, affine, ref_aff, tuple(reference_node.GetImageData().GetDimensions()))
        if moved is not None:
            lab, affine = moved, ref_aff
            on_reference_grid = True
    if color_node is None:
        color_node = load_color_table_node(scene, csv_path=csv_path)
    entries: Dict[int, LabelEntry] = entries_from_color_node(color_node)

    keep_labelmap = create_labelmap or labelmap_node is not None
    lm = _labelmap_node(scene, f"{name} labelmap" if keep_labelmap else f"{name} (temporary)",
                        color_node, labelmap_node)
    update_volume_from_array(lm, lab, affine)

    seg = segmentation_node
    if seg is None:
        seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    seg.GetSegmentation().RemoveAllSegments()
    if seg.GetDisplayNode() is None:
        seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(reference_node if on_reference_grid else lm)
    seg.SetNodeReferenceID(seg.GetReferenceImageGeometryReferenceRole(),
                           reference_node.GetID() if on_reference_grid else None)
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(lm, seg):
            raise InputError(f"Slicer could not convert the label map into segmentation {name!r}")
    finally:
        if not keep_labelmap:
            remove_nodes(scene, [lm])
            lm = None
    values: List[int] = []
    segmentation = seg.GetSegmentation()
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        value = int(segment.GetLabelValue())
        set_segment_metadata(segment, value, entries.get(value))
        values.append(value)
    if reference_node is not None:
        place_next_to(seg, reference_node)
        if lm is not None:
            place_next_to(lm, reference_node)
    return SegmentationImport(seg, lm, color_node, values)


def segment_summary(segmentation_node: Any) -> List[Dict[str, Any]]:
    """``[{id, name, label_value, color, terminology}]`` for every segment (for tests and reports)."""
    out = []
    segmentation = segmentation_node.GetSegmentation()
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        out.append({
            "id": segmentation.GetNthSegmentID(i),
            "name": segment.GetName(),
            "label_value": int(segment.GetLabelValue()),
            "color": tuple(segment.GetColor()),
            "terminology": segment_tag(segment, segment.GetTerminologyEntryTagName()),
        })
    return out
