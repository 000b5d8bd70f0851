"""Fine-tuning from the scene (BrainFMSceneLib.training_pairs, BrainFMSceneLib.finetune_job) on the real
slicer-core MRML scene: the exported training data (label values, names, colours, world geometry), the
label scheme decision, the errors, the command, and real ``brainfm finetune`` + ``models add`` children."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core wheel not installed - BrainFMSceneLib scene tests skipped")
nib = pytest.importorskip("nibabel")

from fixtures import GEOMETRY_CASES, blob_head, label_head  # noqa: E402

from BrainFMSceneLib._errors import InputError  # noqa: E402
from BrainFMSceneLib.finetune_job import FinetuneJob, finetune_command, parse_finetuned_model  # noqa: E402
from BrainFMSceneLib.segmentation_nodes import add_segmentation_from_labels, segment_summary  # noqa: E402
from BrainFMSceneLib.training_pairs import FS33_VALUES, export_training_pairs  # noqa: E402
from BrainFMSceneLib.volume_nodes import add_volume, ijk_to_ras  # noqa: E402

SHAPE = (20, 24, 18)


def _read(path):
    img = nib.load(str(path))
    return np.asarray(img.dataobj), np.asarray(img.affine)


def _scene_nodes(scene):
    return sorted((scene.GetNthNode(i).GetID(), scene.GetNthNode(i).GetName()) for i in range(scene.GetNumberOfNodes()))


def _user_segmentation(scene, volume, segments, name="my labels"):
    """A segmentation drawn by a user on ``volume``'s grid: ``segments`` = [(name, mask, rgb 0..1)], no BrainFM tag."""
    lab = np.zeros(SHAPE, np.int16)
    for value, (_, mask, _) in enumerate(segments, start=1):
        lab[mask] = value
    lm = add_volume(scene, lab, ijk_to_ras(volume), "drawn", labelmap=True)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(lm, seg)
    scene.RemoveNode(lm)
    segmentation = seg.GetSegmentation()
    for i, (seg_name, _, rgb) in enumerate(segments):
        segmentation.GetNthSegment(i).SetName(seg_name)
        segmentation.GetNthSegment(i).SetColor(*rgb)
    return seg


@pytest.mark.parametrize("case", ["oblique", "lps_stored"])
def test_brainfm_segmentation_keeps_freesurfer_numbers_on_the_exact_volume_grid(scene, tmp_path, case):
    """A BrainFM result (tagged segments, fs33 values) on another ordering of the same voxel centres: the labels
    come out re-indexed onto the volume's grid, voxel for voxel, with the volume's world geometry."""
    aff = GEOMETRY_CASES[case]
    head = blob_head(SHAPE, aff)
    volume = add_volume(scene, head.data, aff, "T1 scan")
    labels = label_head(SHAPE)
    # the segmentation's own grid: the same voxel centres stored with I and J reversed
    flip = np.array([[-1, 0, 0, SHAPE[0] - 1], [0, -1, 0, SHAPE[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    seg = add_segmentation_from_labels(scene, labels[::-1, ::-1, :], aff @ flip, name="T1 seg").segmentation_node
    before, summary = _scene_nodes(scene), segment_summary(seg)
    out = export_training_pairs([(volume, seg)], tmp_path / "data")
    assert out.label_scheme == "fs33" and out.cases == ["001_T1_scan"]
    assert [label.value for label in out.labels] == sorted(int(v) for v in np.unique(labels) if v)
    assert {label.value: label.name for label in out.labels}[4] == "Left-Lateral-Ventricle"
    img, img_aff = _read(out.data_dir / "images" / "001_T1_scan.nii")
    lab, lab_aff = _read(out.data_dir / "labels" / "001_T1_scan.nii")
    np.testing.assert_array_equal(lab, labels)  # FreeSurfer numbers, voxel for voxel on the volume's grid
    np.testing.assert_array_equal(lab_aff, img_aff)  # the very same header geometry as the image
    np.testing.assert_allclose(img_aff, aff, atol=1e-4)  # = the volume's IJK -> RAS
    np.testing.assert_allclose(img, head.data, atol=1e-6)
    assert np.issubdtype(lab.dtype, np.integer)
    assert _scene_nodes(scene) == before and segment_summary(seg) == summary  # inputs and scene unchanged
    assert volume.GetStorageNode() is None and not (out.data_dir / "label_table.csv").exists()


def test_segmentation_on_another_grid_lands_at_the_same_world_positions(scene, tmp_path):
    """A segmentation on an axis-aligned 1 mm grid, the volume oblique: exported on the volume's voxels, each
    structure keeps its place in world coordinates (centroids within a voxel)."""
    vol_aff = GEOMETRY_CASES["oblique"]
    volume = add_volume(scene, blob_head(SHAPE, vol_aff).data, vol_aff, "oblique scan")
    seg_shape, seg_aff = (30, 30, 30), GEOMETRY_CASES["ras"].copy()
    seg_aff[:3, 3] = vol_aff[:3, :3] @ (np.array(SHAPE) - 1) / 2 + vol_aff[:3, 3] - 14.5  # centred on the volume
    labels = label_head(seg_shape)
    seg = add_segmentation_from_labels(scene, labels, seg_aff, name="atlas labels").segmentation_node
    out = export_training_pairs([(volume, seg)], tmp_path / "data")
    lab, lab_aff = _read(out.data_dir / "labels" / f"{out.cases[0]}.nii")
    np.testing.assert_allclose(lab_aff, vol_aff, atol=1e-4)

    def centroid(arr, aff, value):
        ijk = np.argwhere(arr == value)
        return (aff @ np.c_[ijk, np.ones(len(ijk))].T)[:3].mean(axis=1)

    for value in (2, 41, 4, 43):
        assert np.sum(lab == value) > 10, value
        np.testing.assert_allclose(centroid(lab, lab_aff, value), centroid(labels, seg_aff, value), atol=1.2)


def test_own_labels_get_values_by_name_and_a_colour_table_the_engine_reads(scene, tmp_path):
    from brainfm.labels import read_label_table

    aff = GEOMETRY_CASES["ras"]
    a = add_volume(scene, blob_head(SHAPE, aff).data, aff, "case A")
    b = add_volume(scene, blob_head(SHAPE, aff, seed=1).data, aff, "case B")
    box = np.zeros(SHAPE, bool)
    m1, m2, m3 = box.copy(), box.copy(), box.copy()
    m1[2:6, 2:6, 2:6], m2[8:12, 8:12, 8:12], m3[14:17, 14:17, 10:14] = True, True, True
    seg_a = _user_segmentation(scene, a, [("Lesion", m1, (1.0, 0.0, 0.0)), ("Edema", m2, (0.0, 1.0, 0.0))])
    seg_b = _user_segmentation(scene, b, [("Edema", m3, (0.0, 0.5, 0.0)), ("Necrosis", m1, (0.2, 0.2, 1.0))])
    out = export_training_pairs([(a, seg_a), (b, seg_b)], tmp_path / "data")
    assert [(x.value, x.name, x.color) for x in out.labels] == [
        (1, "Lesion", (255, 0, 0)), (2, "Edema", (0, 255, 0)), (3, "Necrosis", (51, 51, 255))]
    assert out.label_scheme == str(out.data_dir / "label_table.csv")
    names, colours = read_label_table(out.label_scheme)  # the engine's reader
    assert names == {1: "Lesion", 2: "Edema", 3: "Necrosis"}
    assert colours == {1: (255, 0, 0), 2: (0, 255, 0), 3: (51, 51, 255)}
    lab_a, _ = _read(out.data_dir / "labels" / "001_case_A.nii")
    lab_b, _ = _read(out.data_dir / "labels" / "002_case_B.nii")
    expected_a, expected_b = np.zeros(SHAPE, int), np.zeros(SHAPE, int)
    expected_a[m1], expected_a[m2] = 1, 2
    expected_b[m3], expected_b[m1] = 2, 3  # the same name, the same value in every pair
    np.testing.assert_array_equal(lab_a, expected_a)
    np.testing.assert_array_equal(lab_b, expected_b)


def test_a_segment_of_your_own_makes_a_named_label_table_that_keeps_freesurfer_s_structures(scene, tmp_path):
    """A BrainFM result plus one segment the user added: not fs33 any more; the FreeSurfer structures keep
    their numbers and names (the new model's classes start from the base's), the new segment gets the
    smallest value not taken."""
    aff = GEOMETRY_CASES["ras"]
    volume = add_volume(scene, blob_head(SHAPE, aff).data, aff, "scan")
    seg = add_segmentation_from_labels(scene, label_head(SHAPE), aff, name="seg", reference_node=volume).segmentation_node
    brainfm_only = export_training_pairs([(volume, seg)], tmp_path / "fs")
    assert brainfm_only.label_scheme == "fs33"
    assert all(label.value in FS33_VALUES for label in brainfm_only.labels)
    lesion = np.zeros(SHAPE, np.int16)
    lesion[9:11, 11:13, 8:10] = 1
    extra = add_volume(scene, lesion, aff, "lesion", labelmap=True)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(extra, seg)
    seg.GetSegmentation().GetNthSegment(seg.GetSegmentation().GetNumberOfSegments() - 1).SetName("Lesion")
    out = export_training_pairs([(volume, seg)], tmp_path / "own")
    assert out.label_scheme.endswith("label_table.csv")
    assert [(x.value, x.name) for x in out.labels] == [(1, "Lesion")] + [(x.value, x.name) for x in brainfm_only.labels]
    lab, _ = _read(out.data_dir / "labels" / f"{out.cases[0]}.nii")
    assert set(np.unique(lab[9:11, 11:13, 8:10])) == {1}  # the lesion painted over the anatomy
    outside = np.ones(SHAPE, bool)
    outside[9:11, 11:13, 8:10] = False
    np.testing.assert_array_equal(lab[outside], label_head(SHAPE)[outside])  # FreeSurfer numbers elsewhere


def test_segments_named_as_freesurfer_structures_keep_their_numbers(scene, tmp_path):
    """A FreeSurfer segmentation loaded into Slicer (no BrainFM tags, FreeSurfer's names, any case): its
    structures are recognised by name, the labels are FreeSurfer numbers and the scheme is fs33."""
    aff = GEOMETRY_CASES["ras"]
    volume = add_volume(scene, blob_head(SHAPE, aff).data, aff, "scan")
    labels = label_head(SHAPE)
    mask = {name: labels == value for value, name in ((2, "Left-Cerebral-White-Matter"), (17, "left-hippocampus"),
                                                      (41, "Right-Cerebral-White-Matter"))}
    mask["left-hippocampus"] = np.zeros(SHAPE, bool)
    mask["left-hippocampus"][5:8, 6:9, 5:8] = True
    seg = _user_segmentation(scene, volume, [(n, m, (0.5, 0.5, 0.5)) for n, m in mask.items()])
    out = export_training_pairs([(volume, seg)], tmp_path / "fs")
    assert out.label_scheme == "fs33" and [x.value for x in out.labels] == [2, 17, 41]
    lab, _ = _read(out.data_dir / "labels" / f"{out.cases[0]}.nii")
    assert set(np.unique(lab[5:8, 6:9, 5:8])) == {17}
    assert set(np.unique(lab)) == {0, 2, 17, 41}


def test_labelmap_pairs_are_resampled_to_the_volume_and_named_by_value(scene, tmp_path):
    aff = GEOMETRY_CASES["oblique"]
    volume = add_volume(scene, blob_head(SHAPE, aff).data, aff, "scan")
    lab = np.zeros(SHAPE, np.int16)
    lab[3:9, 4:10, 5:9], lab[12:16, 14:20, 9:13] = 5, 9
    labelmap = add_volume(scene, lab[:, :, ::-1].copy(), aff @ np.array(  # K stored reversed
        [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, SHAPE[2] - 1], [0, 0, 0, 1]], float), "tumour", labelmap=True)
    out = export_training_pairs([(volume, labelmap)], tmp_path / "data")
    assert [(x.value, x.name) for x in out.labels] == [(1, "Label 5"), (2, "Label 9")]
    got, _ = _read(out.data_dir / "labels" / f"{out.cases[0]}.nii")
    np.testing.assert_array_equal(got, np.select([lab == 5, lab == 9], [1, 2], 0))


def test_clear_errors_name_the_node_and_leave_the_scene_as_it_was(scene, tmp_path):
    aff = GEOMETRY_CASES["ras"]
    volume = add_volume(scene, blob_head(SHAPE, aff).data, aff, "scan")
    good = add_segmentation_from_labels(scene, label_head(SHAPE), aff, name="seg", reference_node=volume).segmentation_node
    empty_volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "no data")
    empty_seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "nothing drawn")
    far = aff.copy()
    far[:3, 3] += 500.0
    far_volume = add_volume(scene, blob_head(SHAPE, far).data, far, "other head")
    before = _scene_nodes(scene)
    cases = [
        ([], "at least one training pair"),
        ([(empty_volume, good)], "'no data' has no image data"),
        ([(volume, empty_seg)], "'nothing drawn' has no segments"),
        ([(volume, good), (far_volume, good)], "'seg' does not overlap the volume 'other head'"),
        ([(volume, None)], "'scan' has no segmentation"),
    ]
    for pairs, message in cases:
        with pytest.raises(InputError, match=message):
            export_training_pairs(pairs, tmp_path / "data")
        assert _scene_nodes(scene) == before
    assert not (tmp_path / "data" / "images").exists()  # checked before anything is written


def test_finetune_command_is_an_argument_list():
    args = finetune_command(Path("/d/data"), "/d/run", model="official", steps=20, name="lesions.v2",
                            label_scheme="/d/data/label_table.csv", device="cuda:1", python="/opt/PythonSlicer")
    assert args == ["/opt/PythonSlicer", "-m", "brainfm", "finetune", "--model", "official", "--data", "/d/data",
                    "--out", "/d/run", "--label-scheme", "/d/data/label_table.csv", "--steps", "20",
                    "--name", "lesions.v2", "--device", "cuda:1", "--progress", "machine"]
    assert "--device" not in finetune_command("d", "r", name="x", device="auto", python="p")
    assert "--mode" not in args  # mode head: the engine's default
    assert finetune_command("d", "r", name="x", mode="encoder", python="p")[-4:-2] == ["--mode", "encoder"]
    with pytest.raises(InputError, match="Unknown fine-tuning mode 'full'"):
        finetune_command("d", "r", name="x", mode="full", python="p")
    with pytest.raises(InputError, match="Unknown fine-tuning mode 'decoder'"):
        FinetuneJob([], mode="decoder")  # refused when the job is made, before anything runs
    for bad in ("", "default", "../x", "a b"):
        with pytest.raises(InputError, match="not allowed"):
            finetune_command("d", "r", name=bad, python="p")
    with pytest.raises(InputError, match="at least 1"):
        finetune_command("d", "r", name="x", steps=0, python="p")
    assert parse_finetuned_model(["text", '{"model": "None", "step": 0}']) is None


@pytest.fixture()
def tiny_base(tmp_path, monkeypatch):
    """An empty model store of this test only, and a tiny native model with an image head (the base)."""
    torch = pytest.importorskip("torch")
    from brainfm.models import BrainFMNet, ModelConfig, save_native

    monkeypatch.setenv("BRAINFM_HOME", str(tmp_path / "home"))
    torch.manual_seed(0)
    net = BrainFMNet(ModelConfig(f_maps=4, num_levels=3, num_groups=4, unit_feat=False, heads={"image": 1}))
    weights, _ = save_native(net, tmp_path / "base" / "toy-base", info={"name": "toy-base"})
    return Path(weights)


def _lesion_pairs(scene, n=2):
    pairs = []
    for i in range(n):
        aff = GEOMETRY_CASES["lps_stored" if i else "oblique"]
        volume = add_volume(scene, blob_head(SHAPE, aff, seed=i).data, aff, f"subject {i}")
        lab = label_head(SHAPE)
        pairs.append((volume, _user_segmentation(scene, volume, [
            ("Lesion", lab == 4, (1.0, 0.0, 0.0)), ("Tissue", (lab == 2) | (lab == 41), (0.9, 0.9, 0.9))])))
    return pairs


@pytest.mark.slow
def test_finetune_job_end_to_end_adds_a_model_with_the_segment_names(scene, tmp_path, tiny_base):
    from brainfm.models import load_model
    from BrainFMSceneLib.registry import list_models

    pairs = _lesion_pairs(scene)
    before = _scene_nodes(scene)
    job = FinetuneJob(pairs, model=str(tiny_base), steps=2, name="lesion-test", device="cpu", python=sys.executable)
    seen, lines = [], []
    job.progress.connect(lambda f, m: seen.append(f))
    job.log.connect(lines.append)
    job.start()
    temp = job.temp_dir
    assert temp.is_dir() and (temp / "data" / "labels").is_dir()
    deadline = time.monotonic() + 600
    while job.poll():  # GUI-style polling
        assert time.monotonic() < deadline, "fine-tuning did not finish"
        time.sleep(0.1)
    assert job.status == "completed", (job.error, job.logText()[-3000:])
    job.raise_if_failed()
    assert job.model.id == "lesion-test" and job.error is None
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    assert any("Lesion, Tissue" in line for line in lines)
    assert not temp.exists()
    stored = {c.id: c for c in list_models() if c.kind == "store"}
    assert "lesion-test" in stored and "seg" in stored["lesion-test"].tasks
    assert Path(stored["lesion-test"].path).is_relative_to(tmp_path / "home")
    info = load_model(stored["lesion-test"].path).info
    assert isinstance(info.label_scheme, dict) and list(info.label_scheme["names"]) == ["Unknown", "Lesion", "Tissue"]
    assert _scene_nodes(scene) == before
    again = FinetuneJob(pairs, model=str(tiny_base), steps=2, name="lesion-test", python=sys.executable)
    with pytest.raises(InputError, match="already has a model called 'lesion-test'"):
        again.start()
    assert again.temp_dir is None


def test_cancelled_finetune_job_leaves_no_folder_and_adds_no_model(scene, tmp_path, tiny_base):
    from BrainFMSceneLib.registry import list_models

    job = FinetuneJob(_lesion_pairs(scene, 1), model=str(tiny_base), steps=5000, name="never-added",
                      device="cpu", python=sys.executable)
    said = []
    job.start()
    job.runner.progress.connect(lambda f, m: said.append(m))
    job.runner.log.connect(said.append)
    temp = job.temp_dir
    deadline = time.monotonic() + 120
    while job.poll() and not said and time.monotonic() < deadline:
        time.sleep(0.05)  # until the child has said something: it is really running
    assert said and job.running, (job.status, job.error)
    job.cancel()
    job.wait(timeout=120)
    assert job.status == "cancelled" and "ancel" in str(job.error) and job.result.cancelled
    assert job.model is None and job.add_job is None and not temp.exists()
    assert "never-added" not in [c.id for c in list_models()]
    with pytest.raises(Exception, match="ancel"):
        job.raise_if_failed()
