"""brainfm.labels: schemes, FreeSurfer table, exports (re-read, also by Slicer's reader), volumes."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

from brainfm.errors import InputError
from brainfm.labels import (
    EVAL17_FS,
    SCHEMES,
    SLICER_CSV_COLUMNS,
    freesurfer_lut,
    get_scheme,
    merge_hemispheres,
    read_freesurfer_lut,
    scheme_for_channels,
    structure_volumes,
    write_freesurfer_lut,
    write_slicer_color_csv,
)
from brainfm.volume import Volume
from fixtures import GEOMETRY_CASES, label_head


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_scheme_consistent_and_lr_partner_is_a_left_right_involution(name):
    s = get_scheme(name)
    n = s.n_channels
    assert len(s.values) == len(s.fs_values) == len(s.names) == len(s.colors) == len(s.lr_partner) == n
    assert s.values[0] == 0 and s.fs_values[0] == 0
    lut = freesurfer_lut()
    for c in range(n):
        p = s.lr_partner[c]
        assert s.lr_partner[p] == c
        assert s.names[c] == lut[s.fs_values[c]][0]
        assert s.colors[c] == lut[s.fs_values[c]][1][:3]
        if s.names[c].startswith("Left-") and p != c:
            assert s.names[p] == "Right-" + s.names[c][5:]
        elif s.names[c].startswith("Right-"):
            assert s.names[p] == "Left-" + s.names[c][6:]
        elif not s.names[c].startswith("Left-"):
            assert p == c, f"midline {s.names[c]} must be its own partner"


def test_brainfm56_matches_the_reference_table():
    s = get_scheme("brainfm56")
    # (channel, native value, FreeSurfer number, partner) rows of reference_impl.md §3.4
    rows = [(0, 0, 0, 0), (1, 11, 14, 1), (4, 16, 24, 4), (7, 33, 99, 7), (8, 34, 901, 8), (15, 41, 912, 15),
            (18, 44, 916, 18), (19, 46, 930, 19), (20, 1, 2, 38), (26, 7, 10, 44), (32, 17, 26, 50),
            (33, 47, 819, 51), (37, 55, 869, 55), (38, 18, 41, 20), (50, 30, 58, 32), (55, 56, 870, 37)]
    for ch, value, fs, partner in rows:
        assert (s.values[ch], s.fs_values[ch], s.lr_partner[ch]) == (value, fs, partner)
    assert sorted(s.values) == [v for v in range(57) if v != 45]  # 45 is not a class
    assert s.names[30] == "Left-Hippocampus" and s.names[48] == "Right-Hippocampus"
    assert s.fs_of_channel(np.array([[0, 30], [48, 55]])).tolist() == [[0, 17], [53, 870]]
    assert s.channel_of_value(np.array([14, 28, 45])).tolist() == [30, 48, 0]


def test_left18_and_fs33_and_channel_lookup():
    left = get_scheme("brainfm_left18")
    assert left.n_channels == 18 and all(not n.startswith("Right-") for n in left.names)
    assert left.fs_values[left.values.index(14)] == 17
    fs33 = get_scheme("fs33")
    assert fs33.fs_values == fs33.values and len(set(fs33.values)) == 33
    assert scheme_for_channels(56).name == "brainfm56" and scheme_for_channels(18).name == "brainfm_left18"
    assert scheme_for_channels(33) is fs33
    with pytest.raises(InputError, match="no label scheme has 7 channels"):
        scheme_for_channels(7)
    with pytest.raises(InputError, match="non-integer"):
        fs33.channel_of_fs(np.array([2.5]))


def test_one_rule_decides_the_label_scheme():
    """decide_scheme: a declared scheme wins, else the channel count; model loading, the predictor
    and training evaluation all follow it."""
    import torch

    from brainfm.inference import Predictor
    from brainfm.labels import decide_scheme
    from brainfm.models import BrainFMNet, ModelConfig
    from brainfm.models.common import label_scheme_for
    from brainfm.training.evaluate import class_map_to

    assert decide_scheme("brainid33", n_channels=33) is get_scheme("brainid33")
    assert decide_scheme(None, n_channels=33) is get_scheme("fs33")
    assert decide_scheme(get_scheme("fs33"), n_channels=56) is get_scheme("fs33")  # an object as it is
    with pytest.raises(InputError, match="unknown label scheme 'nope'"):
        decide_scheme("nope", n_channels=33)
    with pytest.raises(InputError, match="no label scheme has 7 channels"):
        decide_scheme(None, n_channels=7)
    with pytest.raises(InputError, match="no label scheme declared"):
        decide_scheme()
    assert [label_scheme_for({"segmentation": n}) for n in (56, 18, 33, 7)] == ["brainfm56", "brainfm_left18",
                                                                              "fs33", None]
    torch.manual_seed(0)
    net = BrainFMNet(ModelConfig(f_maps=8, num_levels=2, heads={"segmentation": 33}))
    assert Predictor(net, device="cpu")._scheme() is get_scheme("fs33")
    declared = type("Info", (), {"label_scheme": "brainid33", "voxel_mm": 1.0, "quality": {}})()
    assert Predictor(type("M", (), {"net": net, "info": declared})(), device="cpu")._scheme() is get_scheme("brainid33")
    unknown = type("Info", (), {"label_scheme": "nope", "voxel_mm": 1.0, "quality": {}})()
    assert Predictor(type("M", (), {"net": net, "info": unknown})(), device="cpu")._scheme() is None
    assert int(class_map_to("fs33", 33, source_scheme="brainid33")[1]) == 11
    with pytest.raises(InputError, match="unknown label scheme"):
        class_map_to("fs33", 33, source_scheme="nope")


def test_fs33_labels_are_those_of_the_synthseg_training_maps(shared_data):
    import nibabel as nib

    path = shared_data / "SynthSeg" / "data" / "training_label_maps" / "training_seg_01.nii.gz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    present = set(np.unique(np.asarray(nib.load(str(path)).dataobj)).astype(int).tolist())
    assert set(get_scheme("fs33").values) <= present
    lut = freesurfer_lut()
    assert present <= set(lut), f"unnamed labels: {sorted(present - set(lut))}"


def test_lut_covers_every_scheme_number():
    lut = freesurfer_lut()
    for s in SCHEMES.values():
        assert set(s.fs_values) <= set(lut)
    assert lut[0] == ("Unknown", (0, 0, 0, 0))
    assert lut[42] == ("Right-Cerebral-Cortex", (205, 62, 78, 255))
    assert lut[930][0] == "Optic-Nerve"


def test_slicer_csv_reread_with_values_colors_and_terminology(tmp_path):
    path = write_slicer_color_csv(tmp_path / "t" / "brainfm56.csv", scheme="brainfm56")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == SLICER_CSV_COLUMNS
        rows = list(reader)
    s = get_scheme("brainfm56")
    assert [int(r["LabelValue"]) for r in rows] == sorted(v for v in s.fs_values if v != 0)
    lut = freesurfer_lut()
    for r in rows:
        v = int(r["LabelValue"])
        assert r["Name"] == lut[v][0]
        assert tuple(int(r[k]) for k in ("Color_R", "Color_G", "Color_B", "Color_A")) == lut[v][1]
        if r["Type_CodeValue"]:
            assert (r["Category_CodingScheme"], r["Category_CodeValue"]) == ("SCT", "123037004")
    by_name = {r["Name"]: r for r in rows}
    hip = by_name["Right-Hippocampus"]
    assert (hip["Type_CodeValue"], hip["TypeModifier_CodeValue"], hip["TypeModifier_CodeMeaning"]) == (
        "5366008", "24028007", "Right")
    assert by_name["Brain-Stem"]["TypeModifier_CodeValue"] == ""
    assert by_name["Left-SeptalNuc"]["Category_CodeValue"] == ""  # no verified code: no terminology
    assert [p.name for p in path.parent.iterdir()] == ["brainfm56.csv"]  # no temp files left


def _import_slicer():
    """slicer-core's package scans every ``slicer`` folder on sys.path (pkgutil.extend_path), so the
    test folder Testing/pytest/slicer_ext must not be on the path while it is imported."""
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parents[1]]
    try:
        return pytest.importorskip("slicer", reason="slicer-core wheel not installed")
    finally:
        sys.path[:] = saved


def test_slicer_reads_the_csv_color_table(tmp_path):
    slicer = _import_slicer()
    path = write_slicer_color_csv(tmp_path / "fs33.csv", scheme="fs33")
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLColorTableNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLColorTableStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    assert node.GetColorName(17) == "Left-Hippocampus"
    rgba = [0.0] * 4
    node.GetColor(12, rgba)
    assert np.allclose(np.array(rgba) * 255, [236, 13, 176, 255], atol=0.5)
    term = node.GetTerminologyAsString(49)
    assert "42695009" in term and "24028007" in term


def test_freesurfer_lut_roundtrip(tmp_path):
    path = write_freesurfer_lut(tmp_path / "lut.txt")  # every scheme
    table = read_freesurfer_lut(path)
    lut = freesurfer_lut()
    expected = {v for s in SCHEMES.values() for v in s.fs_values}
    assert set(table) == expected
    for v, (name, rgb) in table.items():
        assert (name, rgb) == (lut[v][0], lut[v][1][:3])


def test_structure_volumes_on_anisotropic_oblique_voxels():
    aff = GEOMETRY_CASES["oblique"]  # spacing 1.1 x 0.9 x 1.3 mm, rotated
    lab = label_head((20, 24, 18))
    rows = structure_volumes(Volume(lab, aff))
    voxel = 1.1 * 0.9 * 1.3
    for r in rows:
        n = int((lab == r["value"]).sum())
        assert r["voxels"] == n and r["volume_mm3"] == pytest.approx(n * voxel, rel=1e-9)
    assert [r["value"] for r in rows] == sorted(set(np.unique(lab).tolist()) - {0})
    aniso = Volume(lab, GEOMETRY_CASES["anisotropic"])  # 0.8 x 0.8 x 3.0 mm
    by_value = {r["value"]: r for r in structure_volumes(aniso, scheme="fs33")}
    assert len(by_value) == 32  # every fs33 structure, present or not
    assert by_value[17]["voxels"] == 0 and by_value[17]["name"] == "Left-Hippocampus"
    assert by_value[2]["volume_mm3"] == pytest.approx(int((lab == 2).sum()) * 1.92, rel=1e-9)


def test_structure_volumes_rejects_images():
    img = Volume(np.linspace(0, 1, 27, dtype=np.float32).reshape(3, 3, 3), np.eye(4))
    with pytest.raises(InputError, match="non-integer"):
        structure_volumes(img)
    ok = structure_volumes(Volume(np.full((2, 2, 2), 24.0, np.float32), np.eye(4)))
    assert ok == [{"value": 24, "name": "CSF", "voxels": 8, "volume_mm3": 8.0}]


def test_merge_hemispheres_keeps_input_and_maps_right_to_left():
    lab = label_head((12, 12, 12))
    before = lab.copy()
    merged = merge_hemispheres(lab)
    assert np.array_equal(lab, before)
    assert set(np.unique(merged).tolist()) == {0, 2, 3, 4, 24}
    v = merge_hemispheres(Volume(np.array([[[820, 53, 16]]], np.int32), np.eye(4)), scheme="brainfm56")
    assert isinstance(v, Volume) and v.data.ravel().tolist() == [819, 17, 16]
    fs33 = get_scheme("fs33")
    merged_classes = set(merge_hemispheres(np.array(fs33.fs_values)).tolist()) - {0, 24}
    assert merged_classes == set(EVAL17_FS) and len(EVAL17_FS) == 17
