"""BrainFMSceneLib segmentation import: names, colors, label values, terminology, geometry, hierarchy."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core wheel not installed - BrainFMSceneLib scene tests skipped")

from fixtures import GEOMETRY_CASES, label_head  # noqa: E402

from BrainFMSceneLib._errors import InputError  # noqa: E402
from BrainFMSceneLib.label_tables import load_color_table_node, read_color_csv  # noqa: E402
from BrainFMSceneLib.scene_utils import parent_item_of, subject_hierarchy  # noqa: E402
from BrainFMSceneLib.segmentation_nodes import (  # noqa: E402
    LABEL_VALUE_TAG,
    add_segmentation_from_labels,
    segment_summary,
    segment_tag,
)
from BrainFMSceneLib.volume_nodes import add_volume, volume_to_array_and_affine  # noqa: E402

SHAPE = (20, 24, 18)
CSV = """LabelValue,Name,Color_R,Color_G,Color_B,Color_A,Category_CodingScheme,Category_CodeValue,Category_CodeMeaning,Type_CodingScheme,Type_CodeValue,Type_CodeMeaning,TypeModifier_CodingScheme,TypeModifier_CodeValue,TypeModifier_CodeMeaning,Region_CodingScheme,Region_CodeValue,Region_CodeMeaning,RegionModifier_CodingScheme,RegionModifier_CodeValue,RegionModifier_CodeMeaning
2,Left-Cerebral-White-Matter,245,245,245,255,SCT,123037004,Anatomical Structure,SCT,68523003,Cerebral white matter,SCT,7771000,Left,,,,,,
3,Left-Cerebral-Cortex,205,62,78,255,SCT,123037004,Anatomical Structure,SCT,40146001,Cerebral cortex,SCT,7771000,Left,,,,,,
4,Left-Lateral-Ventricle,120,18,134,255,,,,,,,,,,,,,,,
24,CSF,60,60,60,255,,,,,,,,,,,,,,,
41,Right-Cerebral-White-Matter,0,225,0,255,SCT,123037004,Anatomical Structure,SCT,68523003,Cerebral white matter,SCT,24028007,Right,,,,,,
42,Right-Cerebral-Cortex,205,62,78,255,SCT,123037004,Anatomical Structure,SCT,40146001,Cerebral cortex,SCT,24028007,Right,,,,,,
43,Right-Lateral-Ventricle,120,18,134,255,,,,,,,,,,,,,,,
"""


@pytest.fixture()
def table_csv(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text(CSV)
    return path


def _input_in_folder(scene, aff, name="subject T1"):
    node = add_volume(scene, np.zeros(SHAPE, np.float32), aff, name)
    sh = subject_hierarchy(scene)
    folder = sh.CreateFolderItem(sh.GetSceneItemID(), "Subject 1")
    sh.CreateItem(folder, node)  # full Slicer does this by itself when a node is added
    return node, folder


@pytest.mark.parametrize("case", ["oblique", "left_handed"])
def test_segments_names_colors_values_terminology_geometry(scene, table_csv, case):
    import slicer

    aff = GEOMETRY_CASES[case]
    labels = label_head(SHAPE)
    labels[0, 0, 0] = 99  # a value missing from the table still gets a segment
    node, folder = _input_in_folder(scene, aff)
    out = add_segmentation_from_labels(scene, labels, aff, name="subject T1 segmentation",
                                       reference_node=node, csv_path=table_csv, create_labelmap=True)
    seg = out.segmentation_node
    summary = {s["label_value"]: s for s in segment_summary(seg)}
    present = sorted(int(v) for v in np.unique(labels) if v != 0)
    assert sorted(summary) == present == sorted(out.label_values)
    assert seg.GetSegmentation().GetNumberOfSegments() == len(present)
    table = read_color_csv(table_csv)
    for value in present:
        s = summary[value]
        if value == 99:
            assert s["name"] == "Label 99"
            continue
        assert s["name"] == table[value].name
        np.testing.assert_allclose(s["color"], table[value].color[:3], atol=1e-6)
        segment = seg.GetSegmentation().GetSegment(s["id"])
        assert segment_tag(segment, LABEL_VALUE_TAG) == str(value)
    assert "SCT^68523003^Cerebral white matter" in summary[2]["terminology"]
    assert "SCT^7771000^Left" in summary[2]["terminology"]
    assert "SCT^24028007^Right" in summary[41]["terminology"]
    assert summary[2]["terminology"].startswith("Segmentation category and type")
    # reference geometry = input volume, referenced by role
    assert seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole()) is node
    ref = slicer.vtkOrientedImageData()
    ref_geometry = seg.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    slicer.vtkSegmentationConverter.DeserializeImageGeometry(ref_geometry, ref, False)
    assert tuple(ref.GetDimensions()) == SHAPE
    # same subject-hierarchy folder as the input
    assert parent_item_of(seg) == folder and parent_item_of(out.labelmap_node) == folder
    # optional labelmap node: same voxels and exactly the input geometry
    lm_arr, lm_aff = volume_to_array_and_affine(out.labelmap_node)
    np.testing.assert_array_equal(lm_arr, labels)
    np.testing.assert_allclose(lm_aff, aff, atol=1e-9)
    assert out.labelmap_node.GetDisplayNode().GetColorNodeID() == out.color_node.GetID()
    # round trip: segments exported back to a labelmap on the input grid reproduce the labels
    exported = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "exported")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportAllSegmentsToLabelmapNode(
        seg, exported, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
    ex_arr, ex_aff = volume_to_array_and_affine(exported)
    np.testing.assert_allclose(ex_aff, aff, atol=1e-6)
    segmentation = seg.GetSegmentation()  # exported values are segment indices + 1
    lut = np.zeros(segmentation.GetNumberOfSegments() + 1, np.int32)
    for i in range(segmentation.GetNumberOfSegments()):
        lut[i + 1] = segmentation.GetNthSegment(i).GetLabelValue()
    np.testing.assert_array_equal(lut[ex_arr], labels)


def test_refill_existing_node_and_no_labelmap_left(scene, table_csv):
    aff = GEOMETRY_CASES["ras"]
    node, _ = _input_in_folder(scene, aff)
    first = add_segmentation_from_labels(scene, label_head(SHAPE), aff, name="seg", reference_node=node,
                                         csv_path=table_csv)
    n_labelmaps = scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode")
    assert n_labelmaps == 0 and first.labelmap_node is None
    small = np.zeros(SHAPE, np.int32)
    small[5:8, 5:8, 5:8] = 3
    again = add_segmentation_from_labels(scene, small, None, name="seg", reference_node=node,
                                         segmentation_node=first.segmentation_node, color_node=first.color_node)
    assert again.segmentation_node is first.segmentation_node
    assert [s["name"] for s in segment_summary(again.segmentation_node)] == ["Left-Cerebral-Cortex"]
    # one BrainFM color table node reused
    assert load_color_table_node(scene, csv_path=table_csv) is first.color_node


def test_engine_label_table_when_brainfm_is_installed(scene):
    pytest.importorskip("brainfm.labels")
    aff = GEOMETRY_CASES["anisotropic"]
    node, _ = _input_in_folder(scene, aff)
    out = add_segmentation_from_labels(scene, label_head(SHAPE), aff, name="seg", reference_node=node)
    names = {s["label_value"]: s["name"] for s in segment_summary(out.segmentation_node)}
    assert names[2] == "Left-Cerebral-White-Matter" and names[43] == "Right-Lateral-Ventricle"
    assert names[24] == "CSF"


def test_bad_label_maps_and_tables(scene, tmp_path, table_csv):
    node, _ = _input_in_folder(scene, np.eye(4))
    with pytest.raises(InputError, match="non-integer"):
        add_segmentation_from_labels(scene, np.full(SHAPE, 0.5), np.eye(4), name="s", csv_path=table_csv)
    with pytest.raises(InputError, match="3D"):
        add_segmentation_from_labels(scene, np.zeros((4, 4)), np.eye(4), name="s", csv_path=table_csv)
    with pytest.raises(InputError, match="reference volume's shape"):
        add_segmentation_from_labels(scene, np.zeros((3, 3, 3), np.int32), None, name="s",
                                     reference_node=node, csv_path=table_csv)
    bad = tmp_path / "bad.csv"
    bad.write_text("Value,Label\n1,x\n")
    with pytest.raises(InputError, match="not a Slicer color table"):
        read_color_csv(bad)
    bad.write_text("LabelValue,Name,Color_R,Color_G,Color_B\nx,y,1,2,3\n")
    with pytest.raises(InputError, match="line 2"):
        read_color_csv(bad)


def test_label_table_sources_in_order(tmp_path, monkeypatch, table_csv):
    import BrainFMSceneLib.label_tables as lt

    assert lt.resolve_csv(tmp_path, csv_path=table_csv) == table_csv  # explicit path first
    if lt.engine_csv_path(tmp_path) is not None:  # brainfm installed: the engine's table
        engine = lt.read_color_csv(lt.resolve_csv(tmp_path))
        assert engine[17].name == "Left-Hippocampus" and engine[17].has_codes
    monkeypatch.setattr(lt, "engine_csv_path", lambda directory, scheme=None: None)  # brainfm not installed
    monkeypatch.setattr(lt, "resource_csv_path", lambda: table_csv)
    assert lt.resolve_csv(tmp_path) == table_csv  # then the CSV shipped in Resources
    monkeypatch.setattr(lt, "resource_csv_path", lambda: None)
    with pytest.raises(InputError, match="No label table available"):
        lt.resolve_csv(tmp_path)
