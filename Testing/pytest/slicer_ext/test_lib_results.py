"""BrainFMSceneLib result import (engine-style case folder) and a real ``brainfm run`` through BrainFMJob."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core wheel not installed - BrainFMSceneLib scene tests skipped")
nib = pytest.importorskip("nibabel")

from fixtures import GEOMETRY_CASES, blob_head, label_head  # noqa: E402

from BrainFMSceneLib._errors import InputError  # noqa: E402
from BrainFMSceneLib.results import find_case_dir, import_results  # noqa: E402
from BrainFMSceneLib.scene_utils import parent_item_of, subject_hierarchy  # noqa: E402
from BrainFMSceneLib.segmentation_nodes import segment_summary  # noqa: E402
from BrainFMSceneLib.table_nodes import table_rows  # noqa: E402
from BrainFMSceneLib.volume_nodes import add_volume, ijk_to_ras, volume_to_array_and_affine  # noqa: E402

SHAPE = (20, 24, 18)
CSV = ("LabelValue,Name,Color_R,Color_G,Color_B,Color_A\n2,Left-Cerebral-White-Matter,245,245,245,255\n"
       "3,Left-Cerebral-Cortex,205,62,78,255\n4,Left-Lateral-Ventricle,120,18,134,255\n24,CSF,60,60,60,255\n"
       "41,Right-Cerebral-White-Matter,0,225,0,255\n42,Right-Cerebral-Cortex,205,62,78,255\n"
       "43,Right-Lateral-Ventricle,120,18,134,255\n")


def _input_node(scene, aff):
    node = add_volume(scene, blob_head(SHAPE).data, aff, "MRHead")
    sh = subject_hierarchy(scene)
    folder = sh.CreateFolderItem(sh.GetSceneItemID(), "Patient")
    sh.CreateItem(folder, node)
    return node, folder


def _write_case(case, aff, rng):
    """A case folder as ``brainfm.report.save_prediction`` writes it (nibabel, RAS affines)."""
    case.mkdir(parents=True)
    t1 = rng.random(SHAPE).astype(np.float32)
    labels = label_head(SHAPE)
    idx = np.indices(SHAPE).reshape(3, -1).T
    xyz = idx @ aff[:3, :3].T + aff[:3, 3]
    disp = np.stack([np.sin(xyz[:, 1] / 6), np.cos(xyz[:, 0] / 5), 0.5 + 0 * xyz[:, 2]], 1).reshape(SHAPE + (3,))
    atlas_aff = np.eye(4)
    atlas_aff[:3, 3] = [-5, -6, -4]
    nib.save(nib.Nifti1Image(t1, aff), str(case / "synth_t1.nii.gz"))
    nib.save(nib.Nifti1Image(labels, aff), str(case / "seg.nii.gz"))
    img = nib.Nifti1Image(disp[:, :, :, None, :].astype(np.float32), aff)
    img.header.set_intent(1006)  # displacement vector, 5D (X, Y, Z, 1, 3) like brainfm.io
    nib.save(img, str(case / "reg_displacement.nii.gz"))
    nib.save(nib.Nifti1Image(np.ones((10, 12, 8), np.float32), atlas_aff), str(case / "subject_in_atlas.nii.gz"))
    nib.save(nib.Nifti1Image(rng.random(SHAPE + (4,)).astype(np.float32), aff), str(case / "features.nii.gz"))
    rows = [(v, f"L{v}", int((labels == v).sum())) for v in (2, 3, 41)]
    voxel = abs(np.linalg.det(aff[:3, :3]))
    (case / "seg_volumes.csv").write_text(
        "value,name,voxels,volume_mm3\n" + "".join(f"{v},{n},{c},{c * voxel:.4f}\n" for v, n, c in rows))
    outputs = {"synth_t1": {"path": "synth_t1.nii.gz", "kind": "image", "units": "a.u."},
               "seg": {"path": "seg.nii.gz", "kind": "labelmap", "units": "FreeSurfer label"},
               "reg_displacement": {"path": "reg_displacement.nii.gz", "kind": "vector", "units": "mm (RAS)"},
               "subject_in_atlas": {"path": "subject_in_atlas.nii.gz", "kind": "image", "units": "a.u."},
               "features": {"path": "features.nii.gz", "kind": "multichannel", "units": ""},
               "seg_volumes": {"path": "seg_volumes.csv", "kind": "table", "units": ""}}
    (case / "summary.json").write_text(json.dumps({"outputs": outputs}))
    return t1, labels, disp, atlas_aff


@pytest.mark.parametrize("case_name", ["left_handed", "oblique"])
def test_import_case_folder_into_nodes(scene, tmp_path, rng, case_name):
    aff = GEOMETRY_CASES[case_name]
    node, folder = _input_node(scene, aff)
    t1, labels, disp, atlas_aff = _write_case(tmp_path / "out" / "MRHead", aff, rng)
    (tmp_path / "labels.csv").write_text(CSV)
    res = import_results(scene, tmp_path / "out", node, create_labelmap=True, csv_path=tmp_path / "labels.csv")
    assert set(res.nodes) == {"synth_t1", "seg", "seg_labelmap", "reg_displacement", "subject_in_atlas",
                              "seg_volumes"}  # features are optional
    synth = res.nodes["synth_t1"]
    assert synth.GetName() == "MRHead synthetic T1w" and synth.GetAttribute("BrainFM.Units") == "a.u."
    arr, got = volume_to_array_and_affine(synth)
    np.testing.assert_array_equal(got, ijk_to_ras(node))  # output grid = input grid, exactly
    np.testing.assert_array_equal(arr, t1)
    seg = res.nodes["seg"]
    assert seg.GetName() == "MRHead segmentation"
    names = {s["label_value"]: s["name"] for s in segment_summary(seg)}
    assert names == {2: "Left-Cerebral-White-Matter", 3: "Left-Cerebral-Cortex", 4: "Left-Lateral-Ventricle",
                     24: "CSF", 41: "Right-Cerebral-White-Matter", 42: "Right-Cerebral-Cortex",
                     43: "Right-Lateral-Ventricle"}
    np.testing.assert_array_equal(volume_to_array_and_affine(res.nodes["seg_labelmap"])[0], labels)
    transform = res.nodes["reg_displacement"]
    assert transform.GetName() == "MRHead to atlas transform"
    p = aff[:3, :3] @ np.array([4.0, 5.0, 6.0]) + aff[:3, 3]
    np.testing.assert_allclose(transform.GetTransformFromParent().TransformPoint(p), p + disp[4, 5, 6], atol=1e-5)
    atlas_node = res.nodes["subject_in_atlas"]
    np.testing.assert_allclose(volume_to_array_and_affine(atlas_node)[1], atlas_aff, atol=1e-6)  # own grid
    table = table_rows(res.nodes["seg_volumes"])
    assert [r["value"] for r in table] == [2, 3, 41] and table[0]["voxels"] == int((labels == 2).sum())
    for key, out_node in res.nodes.items():
        assert parent_item_of(out_node) == folder, key
    # explicitly requested optional output; existing node filled in place
    existing = add_volume(scene, np.zeros((2, 2, 2), np.float32), np.eye(4), "my T1")
    res2 = import_results(scene, tmp_path / "out" / "MRHead", node, keys=["features", "synth_t1"],
                          output_nodes={"synth_t1": existing})
    assert res2.nodes["synth_t1"] is existing and existing.GetName() == "my T1"
    assert res2.nodes["features"].IsA("vtkMRMLVectorVolumeNode")
    assert volume_to_array_and_affine(res2.nodes["features"])[0].shape == SHAPE + (4,)
    res3 = import_results(scene, tmp_path / "out", node, keys=["seg_labelmap"], csv_path=tmp_path / "labels.csv")
    assert set(res3.nodes) == {"seg", "seg_labelmap"}
    np.testing.assert_array_equal(volume_to_array_and_affine(res3.nodes["seg_labelmap"])[0], labels)


def test_failed_import_removes_new_nodes(scene, tmp_path, rng):
    aff = GEOMETRY_CASES["ras"]
    node, _ = _input_node(scene, aff)
    case = tmp_path / "out" / "MRHead"
    _write_case(case, aff, rng)
    (case / "seg.nii.gz").write_bytes(b"not a nifti file")
    before = {cls: scene.GetNumberOfNodesByClass(cls) for cls in
              ("vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode", "vtkMRMLGridTransformNode")}
    with pytest.raises(InputError, match="could not read seg.nii.gz"):  # on the reader thread
        import_results(scene, tmp_path / "out", node, csv_path=None)
    after = {cls: scene.GetNumberOfNodesByClass(cls) for cls in before}
    assert after == before
    with pytest.raises(InputError, match="did not produce"):
        import_results(scene, case, node, keys=["synth_ct"])
    with pytest.raises(InputError, match="no BrainFM results"):
        find_case_dir(tmp_path)


def test_real_brainfm_run_through_job(scene, tmp_path):
    """Export -> ``python -m brainfm run`` (tiny random native model, CPU) -> import, end to end."""
    pytest.importorskip("torch")
    pytest.importorskip("brainfm.cli")
    ckpt_factory = pytest.importorskip("ckpt_factory")
    import sys

    from BrainFMSceneLib.job import BrainFMJob
    from BrainFMSceneLib.parameters import RunParameters

    _, weights, _ = ckpt_factory.write_native(tmp_path / "tiny", heads={"T1": 1, "segmentation": 33})
    aff = GEOMETRY_CASES["left_handed"]
    vol = blob_head((24, 28, 20), aff)
    node = add_volume(scene, vol.data, aff, "Scan 1")
    mtime = node.GetMTime()
    params = RunParameters(tasks=("t1", "seg"), model=str(weights), device="cpu")
    job = BrainFMJob(scene, node, params, python=sys.executable, create_labelmap=True)
    fractions = []
    job.progress.connect(lambda f, m: fractions.append(f))
    job.start()
    used_temp = job.runner.temp_dir
    assert (used_temp / "Scan_1.nii").is_file()  # named after the node: the engine's messages name it
    outcome = job.wait(timeout=600)
    assert outcome.ok, (outcome.process.error_message, outcome.error, outcome.process.log[-20:])
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) > 5
    nodes = outcome.imported.nodes
    assert {"synth_t1", "seg", "seg_volumes"} <= set(nodes)
    arr, got = volume_to_array_and_affine(nodes["synth_t1"])
    np.testing.assert_array_equal(got, ijk_to_ras(node))
    assert arr.shape == (24, 28, 20)
    assert np.isfinite(arr).all() and arr.std() > 0
    lab = volume_to_array_and_affine(nodes["seg_labelmap"])[0]
    present = sorted(int(v) for v in np.unique(lab) if v)
    assert present  # even a random tiny model labels some voxels
    summary = segment_summary(nodes["seg"])
    assert sorted(s["label_value"] for s in summary) == present
    assert all(not s["name"].startswith("Label ") for s in summary)  # FreeSurfer names from the engine table
    assert node.GetMTime() == mtime and node.GetStorageNode() is None  # input untouched
    assert not used_temp.exists()  # private temp folder removed after the import


def test_a_segmentation_of_your_own_labels_keeps_their_names_and_colours(scene, tmp_path):
    """A model fine-tuned for labels of the user's own (Lesion 1, Edema 7): its case folder carries their
    table, and the imported segments have those names and colours, not FreeSurfer's for 1 and 7."""
    torch = pytest.importorskip("torch")
    from brainfm.inference import Predictor
    from brainfm.labels import custom_scheme
    from brainfm.models import BrainFMNet, ModelConfig, save_native
    from brainfm.report.save import save_prediction
    from brainfm.volume import Volume

    torch.manual_seed(0)
    net = BrainFMNet(ModelConfig(f_maps=4, num_levels=3, num_groups=4, heads={"segmentation": 3}))
    with torch.no_grad():  # class scores that put both labels in the scan
        net.head.final_conv_segmentation.bias.copy_(torch.tensor([0.0, 0.1, 0.0]))
    scheme = custom_scheme([1, 7], names={1: "Lesion", 7: "Edema"}, colors={1: (255, 0, 0), 7: (0, 0, 255)})
    weights, _ = save_native(net, tmp_path / "model" / "lesions", info={"name": "lesions",
                                                                         "label_scheme": scheme.to_dict()})
    aff = GEOMETRY_CASES["oblique"]
    node, _folder = _input_node(scene, aff)
    image, image_aff = volume_to_array_and_affine(node)
    pred = Predictor.from_pretrained(str(weights), device="cpu").predict(Volume(image, image_aff), tasks=["seg"])
    found = set(np.unique(np.asarray(pred["seg"].data)).tolist()) - {0}
    assert found and found <= {1, 7}
    save_prediction(pred, tmp_path / "out" / "MRHead", png=False)

    res = import_results(scene, tmp_path / "out", node)
    segments = {s["label_value"]: s for s in segment_summary(res.segmentation.segmentation_node)}
    assert set(segments) == found
    expected = {1: ("Lesion", (1.0, 0.0, 0.0)), 7: ("Edema", (0.0, 0.0, 1.0))}
    for value, seg in segments.items():
        assert (seg["name"], tuple(round(c, 3) for c in seg["color"])) == expected[value]
    assert res.segmentation.color_node.GetName().startswith("lesions labels")


def test_a_synthetic_ct_is_shown_in_the_brain_window_and_a_users_node_keeps_its_own(scene, tmp_path, rng):
    aff = GEOMETRY_CASES["ras"]
    node, _ = _input_node(scene, aff)
    case = tmp_path / "out" / "MRHead"
    _write_case(case, aff, rng)
    ct = np.where(blob_head(SHAPE).data > 0, 30.0, -1000.0).astype(np.float32)
    nib.save(nib.Nifti1Image(ct, aff), str(case / "synth_ct.nii.gz"))
    summary = json.loads((case / "summary.json").read_text())
    summary["outputs"]["synth_ct"] = {"path": "synth_ct.nii.gz", "kind": "image", "units": "HU"}
    (case / "summary.json").write_text(json.dumps(summary))
    res = import_results(scene, tmp_path / "out", node, keys=["synth_ct", "synth_t1"])
    display = res.nodes["synth_ct"].GetDisplayNode()
    assert not display.GetAutoWindowLevel()
    assert (display.GetWindow(), display.GetLevel()) == (80.0, 40.0)
    assert res.nodes["synth_t1"].GetDisplayNode().GetAutoWindowLevel()  # not a CT: Slicer's own window
    mine = add_volume(scene, np.zeros((2, 2, 2), np.float32), np.eye(4), "my CT")
    mine.GetDisplayNode().AutoWindowLevelOff()
    mine.GetDisplayNode().SetWindowLevel(2000.0, 300.0)  # a bone window the user chose
    import_results(scene, case, node, keys=["synth_ct"], output_nodes={"synth_ct": mine})
    assert (mine.GetDisplayNode().GetWindow(), mine.GetDisplayNode().GetLevel()) == (2000.0, 300.0)
