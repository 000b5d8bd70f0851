"""A case folder of a command-line batch opened in the scene (``BrainFMSceneLib.case_folders``): a real
``brainfm run`` with a tiny model, then the scan and its results loaded on the real MRML scene."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core wheel not installed")

import ckpt_factory  # noqa: E402
from fixtures import GEOMETRY_CASES, blob_head  # noqa: E402

from BrainFMSceneLib._errors import InputError  # noqa: E402
from BrainFMSceneLib.case_folders import load_case_folder  # noqa: E402
from BrainFMSceneLib.segmentation_nodes import segment_summary  # noqa: E402
from BrainFMSceneLib.table_nodes import table_rows  # noqa: E402
from BrainFMSceneLib.volume_nodes import add_volume, ijk_to_ras  # noqa: E402


@pytest.fixture()
def batch(tmp_path, monkeypatch):
    """A command-line batch of one oblique scan: ``(scan file, its case folder)``."""
    from brainfm.cli.main import main
    from brainfm.io import write_volume

    monkeypatch.setenv("BRAINFM_HOME", str(tmp_path / "home"))
    _, weights, _ = ckpt_factory.write_native(tmp_path / "tiny", heads={"T1": 1, "segmentation": 33})
    scan = write_volume(blob_head((26, 30, 22), GEOMETRY_CASES["oblique"], seed=3), tmp_path / "in" / "sub-07.nii.gz")
    code = main(["run", str(scan), "-o", str(tmp_path / "out"), "--model", str(weights), "--device", "cpu",
                 "--tasks", "seg,t1", "--progress", "none", "--no-png"])
    assert code == 0
    return scan, tmp_path / "out" / "sub-07"


def _nodes(scene):
    return sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))


def test_a_case_of_a_batch_opens_on_its_scan(scene, batch):
    from brainfm.io import read_volume

    scan, case = batch
    loaded = load_case_folder(scene, case)
    node = loaded.input_node
    assert node.GetName() == "sub-07"
    np.testing.assert_allclose(ijk_to_ras(node), read_volume(scan).affine, atol=1e-5)
    nodes = loaded.results.nodes
    assert {"seg", "seg_volumes", "synth_t1"} <= set(nodes)
    np.testing.assert_allclose(ijk_to_ras(nodes["synth_t1"]), ijk_to_ras(node), atol=1e-6)  # on the scan's grid
    names = {s["name"] for s in segment_summary(nodes["seg"])}
    assert names and all("-" in n or n in ("CSF", "Brain-Stem") for n in names), names  # FreeSurfer names
    rows = {r["name"]: r["volume_mm3"] for r in table_rows(nodes["seg_volumes"])}
    import csv

    with open(case / "seg_volumes.csv", newline="", encoding="utf-8") as f:
        written = {r["name"]: float(r["volume_mm3"]) for r in csv.DictReader(f) if float(r["volume_mm3"]) > 0}
    assert {k: v for k, v in rows.items() if v} == pytest.approx(written, rel=1e-4)


def test_a_moved_scan_is_named_and_leaves_the_scene_as_it_was(scene, batch, tmp_path):
    scan, case = batch
    before = _nodes(scene)
    moved = tmp_path / "elsewhere" / scan.name
    moved.parent.mkdir()
    shutil.move(str(scan), str(moved))
    with pytest.raises(InputError, match=r"scan of case sub-07 is not at .*sub-07\.nii\.gz.*input_path="):
        load_case_folder(scene, case)
    assert _nodes(scene) == before
    # its new place, or a node already in the scene
    assert load_case_folder(scene, case, input_path=moved).input_node.GetName() == "sub-07"
    from brainfm.io import read_volume

    vol = read_volume(moved)
    mine = add_volume(scene, np.asarray(vol.data), vol.affine, "my scan")
    n = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    loaded = load_case_folder(scene, case, input_node=mine)
    assert loaded.input_node is mine
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == n + 1  # only the synthetic T1


def test_the_module_logic_loads_a_case_from_the_python_console(scene, batch):
    import slicer_app_stubs

    slicer_app_stubs.install()
    import BrainFMSegmentation

    logic = BrainFMSegmentation.BrainFMSegmentationLogic()
    lines = []
    logic.logCallback = lines.append
    loaded = logic.loadResults(str(batch[1]))
    assert loaded.input_node.GetScene() is slicer.mrmlScene is scene
    assert loaded.results.nodes["seg"].IsA("vtkMRMLSegmentationNode")
    assert any("loaded" in line and "sub-07" in line for line in lines), lines
