"""The module *logic* classes on slicer-core: real scene, real BrainFMSceneLib, real ``brainfm run`` child.

Only the Qt-only parts of Slicer are stubbed (``slicer_app_stubs``). This runs the same path as
``BrainFMSegmentationLogic().process(...)`` in Slicer: input checks, dependency check, export,
child process with a tiny random-weight model on the CPU, import into nodes, cleanup; plus the
cancel and failure paths, which must leave the scene as it was.
"""
from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core wheel not installed")
torch = pytest.importorskip("torch")

import slicer_app_stubs  # noqa: E402

slicer_app_stubs.install()

import BrainFMBiasField  # noqa: E402
import BrainFMCommon  # noqa: E402
import BrainFMRegistration  # noqa: E402
import BrainFMSegmentation  # noqa: E402
import BrainFMSynthesis  # noqa: E402
from BrainFMSceneLib._errors import CancelledError, CheckpointError, InputError, ResourceError  # noqa: E402
from BrainFMSceneLib.volume_nodes import add_volume, ijk_to_ras  # noqa: E402
from BrainFMModuleSupport.logic import runParameters  # noqa: E402
from fixtures import GEOMETRY_CASES, blob_head  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from brainfm.models import BrainFMNet, ModelConfig, save_native

    torch.manual_seed(0)
    net = BrainFMNet(ModelConfig(f_maps=4, num_levels=3, num_groups=2, heads={"segmentation": 33}))
    weights, _ = save_native(net, tmp_path_factory.mktemp("model") / "tiny.safetensors",
                             info={"name": "tiny-test", "version": "0"})
    return str(weights)


def head_node(scene, name="head"):
    vol = blob_head((24, 28, 20), GEOMETRY_CASES["oblique"])
    return add_volume(scene, vol.data, vol.affine, name)


def node_ids(scene):
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def test_module_files_import_with_their_classes():
    for module in (BrainFMSegmentation, BrainFMSynthesis, BrainFMBiasField, BrainFMRegistration):
        name = module.__name__
        for suffix in ("", "ParameterNode", "Logic", "Widget", "Test"):
            assert hasattr(module, name + suffix), f"{name}{suffix} missing"
        assert getattr(module, name + "ParameterNode")._is_parameter_node_wrapper
        logic = getattr(module, name + "Logic")
        assert issubclass(logic, BrainFMCommon.BrainFMLogicBase)
        assert logic().moduleName == name
    assert BrainFMSynthesis.CONTRAST_CHOICES == ["T1w", "T2w", "FLAIR", "CT"]


def test_input_and_output_checks_on_real_nodes(scene):
    volume = head_node(scene)
    BrainFMCommon.checkInputVolume(volume)
    label = add_volume(scene, np.ones((5, 6, 7), np.int16), np.eye(4), "labels", labelmap=True)
    import vtk

    rgb = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    image = vtk.vtkImageData()
    image.SetDimensions(5, 6, 7)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    rgb.SetAndObserveImageData(image)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    flat = add_volume(scene, np.ones((5, 6, 1), np.float32), np.eye(4), "flat")
    cases = [(None, "No input"), (label, "label map"), (flat, "is 2D"), (rgb, "3 components"),
             (empty, "no voxels")]
    for node, words in cases:
        with pytest.raises(InputError, match=words):
            BrainFMCommon.checkInputVolume(node)
    other = head_node(scene, "other")
    with pytest.raises(InputError, match="never overwrites"):
        BrainFMCommon.checkOutputNodes(volume, {"outputVolume": volume})
    with pytest.raises(InputError, match="both"):
        BrainFMCommon.checkOutputNodes(volume, {"a": other, "b": other})
    BrainFMCommon.checkOutputNodes(volume, {"a": other, "b": None})
    assert BrainFMCommon.modelSpec(BrainFMCommon.MODEL_DEFAULT, ".") == "default"
    with pytest.raises(InputError, match="needs a weights file"):
        BrainFMCommon.modelSpec(BrainFMCommon.MODEL_CUSTOM, ".")
    with pytest.raises(InputError, match="not found"):
        BrainFMCommon.modelSpec(BrainFMCommon.MODEL_OFFICIAL, "/nonexistent/brainfm_pretrained.pth")


def test_quality_maps_to_run_options():
    full = runParameters(tasks=("seg",), quality="Full", device="cuda:1")
    fast = runParameters(tasks=("seg",), quality="fast", device="cuda:1")
    assert (full.precision, full.tile_size) == ("fp32", None)
    assert (fast.precision, fast.tile_size) == ("auto", 96)  # the child resolves it for its device
    assert runParameters(tasks=("seg",), quality="fast", device="auto").as_arg_list()[7] == "auto"
    assert fast.environment_updates() == {"CUDA_VISIBLE_DEVICES": "1"}
    assert runParameters(tasks=("seg",), quality="fast", device="cpu").precision == "fp32"
    assert "--tile-size" in fast.as_arg_list()
    for bad in ({"quality": "best"}, {"device": "gpu7"}, {"tasks": ("segmentation",)}):
        with pytest.raises(InputError):
            runParameters(**{"tasks": ("seg",), **bad})


def test_bad_inputs_raise_before_anything_starts(scene, tiny_model):
    logic = BrainFMSegmentation.BrainFMSegmentationLogic()
    volume = head_node(scene)
    label = add_volume(scene, np.ones((5, 6, 7), np.int16), np.eye(4), "labels", labelmap=True)
    before = node_ids(scene)
    with pytest.raises(InputError, match="label map"):
        logic.process(label, device="cpu", model=tiny_model)
    with pytest.raises(InputError, match="never overwrites"):
        BrainFMSynthesis.BrainFMSynthesisLogic().process(volume, outputVolume=volume, model=tiny_model)
    with pytest.raises(InputError, match="Unknown contrast"):
        BrainFMSynthesis.BrainFMSynthesisLogic().process(volume, contrast="PD")
    with pytest.raises(InputError, match="Model file not found"):
        logic.process(volume, device="cpu", model="/nonexistent/model.safetensors")
    assert node_ids(scene) == before


@pytest.mark.parametrize("info, device, words", [
    ({"torch": "2.3.0", "cuda_build": None}, "cuda", "CPU-only build"),
    ({"torch": "2.3.0", "cuda_build": "12.1", "cuda_available": False}, "cuda:0", "no usable GPU"),
    ({"torch": "2.3.0", "cuda_build": "12.1", "cuda_available": True, "gpus": [{"index": 0}]}, "cuda:1",
     "does not exist"),
    ({"torch": None, "torch_error": "ModuleNotFoundError"}, "cuda", "PyTorch is not usable"),
])
def test_device_check_messages(info, device, words):
    logic = BrainFMSegmentation.BrainFMSegmentationLogic()
    logic._torchInfo = dict(info)  # what BrainFMSceneLib.diagnostics.probe_torch reports from the child
    with pytest.raises(ResourceError, match=words):
        logic.checkDevice(device)
    logic._torchInfo = {"torch": "2.3.0", "cuda_build": "12.1", "cuda_available": True, "gpus": [{"index": 0}]}
    logic.checkDevice("cuda:0")
    logic.checkDevice("cpu")


@pytest.mark.slow
def test_segmentation_logic_end_to_end(scene, tiny_model):
    logic = BrainFMSegmentation.BrainFMSegmentationLogic()
    volume = head_node(scene)
    original = slicer.util.arrayFromVolume(volume).copy()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "mine")
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "volumes")
    seen = []
    run = logic.process(volume, outputLabelmap=labelmap, outputTable=table, device="cpu", model=tiny_model,
                        progressCallback=lambda f, m: seen.append(f))
    assert run.status == "completed" and run.error is None
    assert seen and seen[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in seen)
    assert run.outputs["outputLabelmap"] is labelmap and run.outputs["outputTable"] is table
    segmentation = run.outputs["outputSegmentation"]
    assert segmentation.IsA("vtkMRMLSegmentationNode") and segmentation.GetScene() is scene
    np.testing.assert_allclose(ijk_to_ras(labelmap), ijk_to_ras(volume), atol=1e-6)  # input grid, world coords
    assert labelmap.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()
    seg = segmentation.GetSegmentation()
    names = [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())]
    labels = np.unique(slicer.util.arrayFromVolume(labelmap))
    assert len(names) == len(labels[labels > 0]) > 0
    assert not any(n.startswith("Segment_") for n in names), names
    assert table.GetNumberOfRows() >= len(names)  # one row per structure of the label scheme
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), original)  # input untouched
    assert not run.job.runner._temp_dir, "temporary folder not removed"


@pytest.mark.slow
def test_fast_quality_with_auto_device_runs_without_cuda(scene, tiny_model):
    """Quality "Fast" + Device "Auto" on a machine without CUDA: the child picks fp32 for the CPU
    (it used to receive --precision fp16 and fail)."""
    import json
    import shutil

    logic = BrainFMSegmentation.BrainFMSegmentationLogic()
    logic.keepTemporaryFiles = True
    lines = []
    logic.logCallback = lines.append
    volume = head_node(scene)
    run = logic.process(volume, device="auto", quality="fast", model=tiny_model)
    try:
        assert run.status == "completed" and run.error is None, run.error
        assert any("(auto, fast)" in line for line in lines)
        summaries = list(run.job.output_dir.glob("*/summary.json"))
        assert len(summaries) == 1
        summary = json.loads(summaries[0].read_text())
        expected = "fp16" if str(summary["device"]).startswith("cuda") else "fp32"
        assert summary["precision"] == expected
        if not torch.cuda.is_available():
            assert (summary["device"], summary["precision"]) == ("cpu", "fp32")
        labelmap = run.outputs["outputSegmentation"]
        assert labelmap is not None
    finally:
        shutil.rmtree(run.job.runner._temp_dir, ignore_errors=True)


def test_out_of_memory_hint_never_recommends_the_setting_in_use():
    from BrainFMSceneLib.parameters import RunParameters
    from BrainFMModuleSupport.run import friendlyError

    oom = ResourceError("out of memory on cpu even with 32^3 tiles")
    full_auto = str(friendlyError(oom, params=runParameters(tasks=("seg",), quality="full", device="auto")))
    assert "Quality: Fast" in full_auto and "Device: CPU" in full_auto
    fast_auto = str(friendlyError(oom, params=runParameters(tasks=("seg",), quality="fast", device="auto")))
    assert "Quality: Fast" not in fast_auto and "Device: CPU" in fast_auto
    fast_cpu = str(friendlyError(oom, params=runParameters(tasks=("seg",), quality="fast", device="cpu")))
    assert "Quality: Fast" not in fast_cpu and "Device: CPU" not in fast_cpu and "Crop Volume" in fast_cpu
    full_cpu = str(friendlyError(oom, params=RunParameters(tasks=("seg",), device="cpu")))
    assert "Quality: Fast" in full_cpu and "Device: CPU" not in full_cpu
    other = ResourceError("device 'cuda' was requested but this torch build is CPU-only")
    assert str(friendlyError(other)) == str(other)  # not a memory problem: no memory advice


@pytest.mark.slow
def test_cancel_and_wrong_checksum_leave_scene_unchanged(scene, tiny_model, tmp_path, monkeypatch):
    logic = BrainFMBiasField.BrainFMBiasFieldLogic()
    volume = head_node(scene)
    before = node_ids(scene)
    run = logic.process(volume, device="cpu", model=tiny_model, waitForCompletion=False)
    assert run.running
    run.cancel()
    run.wait()
    assert run.status == "cancelled" and isinstance(run.error, CancelledError)
    with pytest.raises(CancelledError):
        run.raiseIfFailed()
    assert node_ids(scene) == before
    # a registered weights file that changed afterwards: the child refuses it (checksum mismatch)
    import shutil

    from BrainFMSceneLib.registry import ModelRegistry

    monkeypatch.setenv("BRAINFM_HOME", str(tmp_path / "cache"))
    (tmp_path / "copy").mkdir()
    weights = tmp_path / "copy" / "tiny.safetensors"  # the JSON sidecar names its weights file
    shutil.copy(tiny_model, weights)
    shutil.copy(tiny_model[: -len(".safetensors")] + ".json", weights.with_suffix(".json"))
    recorded = ModelRegistry().add_custom(weights, title="registered").sha256
    assert logic.expectedSha256(str(weights)) == recorded
    with open(weights, "ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        logic.process(volume, device="cpu", model=str(weights))
    assert node_ids(scene) == before


@pytest.mark.slow
@pytest.mark.parametrize("module, method", [
    ("BrainFMSynthesis", "test_synthesis"),
    ("BrainFMBiasField", "test_bias_field"),
    ("BrainFMRegistration", "test_registration"),
    ("BrainFMSegmentation", "test_bad_inputs_leave_scene_unchanged"),
    ("BrainFMSegmentation", "test_cancel_leaves_scene_unchanged"),
    ("BrainFMCommon", "test_checks"),
])
def test_in_slicer_self_tests_pass_on_slicer_core(scene, module, method):
    """The ``<Module>Test`` methods that Slicer runs (``Slicer --testing``), here on slicer-core."""
    import importlib
    import unittest

    test_class = getattr(importlib.import_module(module), f"{module}Test")
    result = unittest.TestResult()
    try:
        test_class(method).run(result)
    finally:
        test_class.tearDownClass()
    problems = [f"{case}: {text}" for case, text in result.errors + result.failures]
    assert not problems, "\n".join(problems)
    assert not result.skipped, result.skipped
    assert result.testsRun == 1


def test_docstring_examples_of_the_module_layer():
    """Every module of BrainFMModuleSupport (walked, not listed) runs its examples."""
    import doctest
    import importlib
    import pkgutil

    import BrainFMModuleSupport

    with_examples = set()
    for info in pkgutil.iter_modules(BrainFMModuleSupport.__path__):
        module = importlib.import_module(f"BrainFMModuleSupport.{info.name}")
        failed, attempted = doctest.testmod(module)
        assert failed == 0, module.__name__
        if attempted:
            with_examples.add(info.name)
    assert {"checks", "logic", "models", "run", "texts", "ui_contract"} <= with_examples


def test_former_name_brainfmmodulelib_gives_the_same_modules():
    """``BrainFMModuleLib`` (the former name of BrainFMModuleSupport) still imports, as the same modules."""
    import sys

    import BrainFMModuleSupport.testing

    for name in [n for n in sys.modules if n == "BrainFMModuleLib" or n.startswith("BrainFMModuleLib.")]:
        del sys.modules[name]  # import it afresh (another test may have imported it)
    with pytest.warns(DeprecationWarning, match="BrainFMModuleSupport"):
        import BrainFMModuleLib.testing
    from BrainFMModuleLib import BrainFMRun
    from BrainFMModuleLib.logic import BrainFMLogicBase

    assert BrainFMModuleLib is BrainFMModuleSupport
    assert BrainFMModuleLib.testing.BrainFMTestBase is BrainFMModuleSupport.testing.BrainFMTestBase
    assert BrainFMRun is BrainFMCommon.BrainFMRun and BrainFMLogicBase is BrainFMCommon.BrainFMLogicBase
    assert sys.modules["BrainFMModuleLib.widget"].BrainFMWidgetBase is BrainFMCommon.BrainFMWidgetBase
