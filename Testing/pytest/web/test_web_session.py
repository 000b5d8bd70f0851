"""WebSession on the slicer-core MRML scene: open a scan, run BrainFM in a child process, cancel.

Real components: the ``brainfm run`` child process with a tiny random-weight model, the
extension library's export/import, a real ``vtkMRMLScene``.
"""
from __future__ import annotations

import sys
import time
import zipfile

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core wheel not installed (pip install slicer-core)")
nib = pytest.importorskip("nibabel")

from BrainFMSceneLib._errors import InputError  # noqa: E402
from BrainFMSceneLib.volume_nodes import ijk_to_ras, volume_to_array_and_affine  # noqa: E402
from brainfm_web.files import AllowedFolders  # noqa: E402
from brainfm_web.session import WebSession  # noqa: E402
from web_helpers import write_model  # noqa: E402

FREESURFER_NAMES = {"Left-Cerebral-White-Matter", "Left-Cerebral-Cortex", "Left-Lateral-Ventricle",
                    "Right-Cerebral-White-Matter", "Right-Cerebral-Cortex", "Left-Hippocampus",
                    "Right-Hippocampus", "Brain-Stem", "CSF", "Left-Thalamus", "Right-Thalamus"}


def data_nodes(scene):
    """(id, class, name, MTime-independent) of every node: the whole scene, for 'unchanged' checks."""
    return sorted((scene.GetNthNode(i).GetID(), scene.GetNthNode(i).GetClassName(), scene.GetNthNode(i).GetName())
                  for i in range(scene.GetNumberOfNodes()))


@pytest.fixture()
def session(tmp_path, web_data):
    folder, _, _ = web_data
    scene = slicer.vtkMRMLScene()
    return WebSession(scene, workdir=tmp_path, allowed=AllowedFolders([folder]), python=sys.executable)


def test_open_keeps_the_file_geometry(session, web_data):
    _, scan, _ = web_data
    node = session.open_server_path(str(scan))
    img = nib.load(str(scan))
    arr, aff = volume_to_array_and_affine(node)
    np.testing.assert_allclose(aff, img.affine, atol=1e-5)
    np.testing.assert_array_equal(arr, np.asarray(img.dataobj))
    assert node.GetName() == "generated_head"
    assert session.layers() == [{"value": node.GetID(), "title": "generated_head"}]


def test_mgz_scans_open_with_the_same_geometry(session, web_data):
    folder, scan, _ = web_data
    img = nib.load(str(scan))
    mgz = folder / "head_copy.mgz"
    nib.save(nib.MGHImage(np.asarray(img.dataobj).astype(np.float32), img.affine), str(mgz))
    node = session.open_server_path(str(mgz))
    arr, aff = volume_to_array_and_affine(node)
    np.testing.assert_allclose(aff, img.affine, atol=1e-4)
    np.testing.assert_allclose(arr, np.asarray(img.dataobj), rtol=1e-6)
    assert node.GetName() == "head_copy"


def test_paths_outside_the_allowed_folders_are_refused(session, tmp_path):
    outside = tmp_path / "outside.nii.gz"
    outside.write_bytes(b"not read")
    with pytest.raises(InputError, match="outside the folders"):
        session.open_server_path(str(outside))
    with pytest.raises(InputError, match="outside the folders"):
        session.check_model_path("/etc/passwd")
    assert session.input_node is None and session.scene.GetNumberOfNodesByClass("vtkMRMLVolumeNode") == 0


def test_models_typed_in_the_page_must_be_inside_the_allowed_folders(session, web_data, tmp_path):
    _, scan, model = web_data
    session.open_server_path(str(scan))
    before = data_nodes(session.scene)
    elsewhere = tmp_path / "model.safetensors"
    elsewhere.write_bytes(model.read_bytes())
    with pytest.raises(InputError, match="outside the folders"):
        session.start(tasks=["seg"], model=str(elsewhere), device="cpu")
    with pytest.raises(InputError, match="not a model weights file"):
        session.start(tasks=["seg"], model=str(scan), device="cpu")
    assert session.status == "idle" and session.job is None and data_nodes(session.scene) == before
    trusted = WebSession(session.scene, workdir=tmp_path, allowed=session.allowed, extra_models=[elsewhere])
    assert str(elsewhere.resolve()) in trusted.model_values()  # given on the command line: offered as is


def test_segmentation_run_imports_freesurfer_segments_and_keeps_the_case(session, web_data):
    _, scan, model = web_data
    node = session.open_server_path(str(scan))
    session.start(tasks=["seg", "t1"], model=str(model), device="cpu")
    assert session.status == "running"
    progress = []
    while session.poll():
        progress.append(session.progress)
        time.sleep(0.05)
    assert session.status == "completed", session.error + "\n" + "\n".join(session.log[-20:])
    assert progress == sorted(progress)
    seg = session.segmentation_node
    assert seg is not None and seg.IsA("vtkMRMLSegmentationNode")
    names = {s["name"] for s in session.segments()}
    assert len(names) >= 5 and names & FREESURFER_NAMES, names
    # the label under a world point is the segment named there
    labelmap = session.outputs["seg_labelmap"]
    arr, aff = volume_to_array_and_affine(labelmap)
    np.testing.assert_allclose(ijk_to_ras(labelmap), ijk_to_ras(node), atol=1e-6)
    ijk = np.argwhere(arr > 0)[len(np.argwhere(arr > 0)) // 2]
    ras = (aff @ np.r_[ijk, 1.0])[:3]
    hit = session.label_at(ras)
    value = int(arr[tuple(ijk)])
    assert hit["value"] == value
    assert hit["name"] == next(s["name"] for s in session.segments() if s["value"] == value)
    assert session.label_at((1e4, 1e4, 1e4)) is None
    # structure volumes: mm3 = voxels * voxel volume of the input grid
    rows = session.structure_rows()
    voxel_mm3 = abs(np.linalg.det(aff[:3, :3]))
    row = next(r for r in rows if r["value"] == value)
    assert row["voxels"] == int((arr == value).sum())
    assert row["volume_mm3"] == pytest.approx(row["voxels"] * voxel_mm3, rel=1e-4)
    # synthetic T1 is a selectable layer on the input grid
    titles = [layer["title"] for layer in session.layers()]
    assert titles[0] == "generated_head" and "generated_head synthetic T1w" in titles
    # summary lists the segmentation with its names
    summary = session.scene_summary()
    assert set(summary["segmentations"][seg.GetID()]) == names
    # download: the case folder as a zip
    archive = session.zip_results()
    members = zipfile.ZipFile(archive).namelist()
    assert {"generated_head/summary.json", "generated_head/seg_volumes.csv", "generated_head/montage.png"} <= set(members)
    assert any(m.startswith("generated_head/seg.nii") for m in members)


def test_cancel_leaves_the_scene_unchanged(session, web_data, tmp_path):
    folder, scan, _ = web_data
    slow = write_model(folder / "wide_fs33", f_maps=32, num_levels=4, seed=5)
    session.open_server_path(str(scan))
    before = data_nodes(session.scene)
    session.start(tasks=["seg"], model=str(slow), device="cpu")
    time.sleep(1.0)  # the child is starting or running
    assert session.poll()
    pid = session.job.runner.pid
    session.cancel()
    deadline = time.monotonic() + 30
    while session.poll() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert session.status == "cancelled"
    assert data_nodes(session.scene) == before
    assert session.outputs == {} and session.case_dir is None
    with pytest.raises(ProcessLookupError):
        import os
        os.kill(pid, 0)


def test_bad_model_fails_with_the_engine_message(session, web_data, tmp_path):
    folder, scan, _ = web_data
    session.open_server_path(str(scan))
    broken = folder / "broken.pth"
    broken.write_bytes(b"this is not a checkpoint")
    before = data_nodes(session.scene)
    session.start(tasks=["seg"], model=str(broken), device="cpu")
    assert session.wait(timeout=120) == "failed"
    assert "broken.pth" in session.error
    assert data_nodes(session.scene) == before


def test_thick_slices_are_refused_until_allowed_and_come_back_on_a_1_mm_grid(session, web_data):
    """12 mm slices: the run fails with the engine's refusal, which names the page's checkbox, and leaves the
    scene as it was; allowed, with 'Results grid: 1 mm', the labels come back on a 1 mm grid over the scan."""
    from web_helpers import write_scan

    folder, _, model = web_data
    scan = write_scan(folder / "thick_head.nii.gz", shape=(48, 56, 8), spacing=(1.0, 1.0, 12.0))
    node = session.open_server_path(str(scan))
    before = data_nodes(session.scene)
    session.start(tasks=["seg"], model=str(model), device="cpu")
    assert session.wait(timeout=120) == "failed"
    assert session.error.startswith("thick_head.nii: "), session.error  # the scan's name, not a temporary one
    assert "thicker than 10 mm" in session.error and "Allow slices thicker than 10 mm" in session.error, session.error
    assert data_nodes(session.scene) == before and session.outputs == {}
    session.start(tasks=["seg"], model=str(model), device="cpu", one_mm_grid=True, allow_thick_slices=True)
    assert session.wait(timeout=300) == "completed", session.error + "\n" + "\n".join(session.log[-20:])
    labelmap = session.outputs["seg_labelmap"]
    arr, aff = volume_to_array_and_affine(labelmap)
    np.testing.assert_allclose(np.linalg.norm(aff[:3, :3], axis=0), 1.0, atol=1e-6)
    assert arr.shape[2] > 2 * 8  # the 12 mm axis, now in 1 mm voxels
    # the 1 mm labels lie inside the scan's extent (world coordinates), and the page reads them there
    _, scan_aff = volume_to_array_and_affine(node)
    corners = np.array(np.meshgrid([0, 47], [0, 55], [0, 7], indexing="ij")).reshape(3, -1).T
    world = (scan_aff[:3, :3] @ corners.T).T + scan_aff[:3, 3]
    ijk = np.argwhere(arr > 0)
    centre = (aff @ np.r_[ijk.mean(0), 1.0])[:3]
    assert np.all(centre > world.min(0)) and np.all(centre < world.max(0))
    some = ijk[len(ijk) // 2]
    hit = session.label_at((aff @ np.r_[some, 1.0])[:3])
    assert hit is not None and hit["value"] == int(arr[tuple(some)])
