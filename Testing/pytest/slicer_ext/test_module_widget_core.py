"""The common widget logic (``BrainFMWidgetBase``) with fake Qt widgets and a real run.

The widgets are stand-ins named and typed after the module's .ui file (so a renamed widget
fails here too); the logic, scene, child process and import are real. Checks the Apply-button
state machine: why Apply is disabled, Apply -> Cancel while running, results written back into
the parameter node and shown, errors shown, cancel leaving the scene unchanged.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core wheel not installed")
torch = pytest.importorskip("torch")

import slicer_app_stubs  # noqa: E402

slicer_app_stubs.install()

import BrainFMBiasField  # noqa: E402
import BrainFMCommon  # noqa: E402
from BrainFMSceneLib.volume_nodes import add_volume  # noqa: E402
from fake_widgets import FakeParameters, FakeWidget  # noqa: E402
from fixtures import GEOMETRY_CASES, blob_head  # noqa: E402
from slicer_static_helpers import UiFile, module_ui  # noqa: E402


@pytest.fixture()
def widget(scene, tmp_path, monkeypatch):
    from brainfm.models import BrainFMNet, ModelConfig, registry, save_native

    monkeypatch.setenv("BRAINFM_HOME", str(tmp_path / "home"))  # an empty model store
    monkeypatch.setattr(registry, "BUNDLED_DIR", tmp_path / "no_bundled_model")

    torch.manual_seed(0)
    net = BrainFMNet(ModelConfig(f_maps=4, num_levels=3, num_groups=2, heads={"bias_field_log": 1}))
    weights, _ = save_native(net, tmp_path / "m" / "tiny.safetensors", info={"name": "tiny", "version": "0"})
    vol = blob_head((22, 24, 20), GEOMETRY_CASES["ras"])
    volume = add_volume(scene, vol.data, vol.affine, "head")
    shown, errors = [], []
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **kw: shown.append(kw))
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: errors.append(text), raising=False)
    w = BrainFMBiasField.BrainFMBiasFieldWidget()
    ui = UiFile(module_ui("BrainFMBiasField"))
    w.ui = SimpleNamespace(**{name: FakeWidget(u.cls) for name, u in ui.widgets.items()})
    w.logic = BrainFMBiasField.BrainFMBiasFieldLogic()
    w.logic.logCallback = w.appendLog  # as setup() does
    w._parameterNode = FakeParameters(inputVolume=volume, outputCorrectedVolume=None, outputFieldVolume=None,
                                      device="cpu", quality="Full", method="Auto", modelId=str(weights),
                                      oneMillimeterGrid=False, allowThickSlices=False)
    w.shown, w.errors, w.weights = shown, errors, Path(weights)
    return w


def finish(w, timeout=300.0, *, job="_run"):
    """Poll as the panel's timer does until the panel's ``job`` (the run, or ``_addJob``) has ended."""
    deadline = time.monotonic() + timeout
    while getattr(w, job) is not None:
        assert time.monotonic() < deadline, f"{job} did not finish"
        w._onPoll()
        time.sleep(0.05)


def test_apply_state_explains_why_it_is_disabled(widget):
    p = widget._parameterNode
    widget._checkCanApply()
    assert widget.ui.applyButton.enabled and widget.ui.applyButton.text == "Apply"
    p.outputFieldVolume = p.inputVolume
    widget._checkCanApply()
    assert not widget.ui.applyButton.enabled and "never overwrites" in widget.ui.applyButton.toolTip
    p.outputFieldVolume, p.modelId = None, "default"  # the store of this test is empty: no model yet
    widget._fillModelComboBox()
    widget._checkCanApply()
    assert not widget.ui.applyButton.enabled and "No BrainFM model is available yet" in widget.ui.applyButton.toolTip
    assert "jhuldr/BrainFM#downloads" in widget.ui.modelInfoLabel.text  # said before Apply, with the way out
    p.modelId = str(widget.weights)
    widget._checkCanApply()
    assert widget.ui.applyButton.enabled
    p.inputVolume = None
    widget._checkCanApply()
    assert not widget.ui.applyButton.enabled and "No input volume" in widget.ui.applyButton.toolTip


def test_device_combo_round_trip(widget):
    widget._fillDeviceComboBox()
    labels = [label for label, _ in widget.ui.deviceComboBox.items]
    assert labels[:2] == ["Auto", "CPU"]
    widget._selectDevice("cuda:7")  # a scene saved on a bigger machine keeps its setting
    assert widget.ui.deviceComboBox.itemData(widget.ui.deviceComboBox.currentIndex) == "cuda:7"
    widget._onDeviceChanged(1)
    assert widget._parameterNode.device == "cpu"


@pytest.mark.slow
def test_apply_runs_shows_results_then_cancel_and_failure(widget):
    scene = widget._parameterNode.inputVolume.GetScene()
    widget.onApplyButton()
    assert widget._run is not None and widget.ui.applyButton.text == "Cancel" and widget.ui.applyButton.enabled
    finish(widget)
    p = widget._parameterNode
    assert widget.ui.progressBar.value == 100 and "Done" in widget.ui.progressBar.format
    assert widget.ui.applyButton.text == "Apply" and not widget.errors
    assert p.outputCorrectedVolume is not None and p.outputCorrectedVolume.GetScene() is scene  # written back
    assert widget.shown and widget.shown[-1]["background"] is p.outputCorrectedVolume
    assert any("bias" in line for line in widget.ui.logTextEdit.lines)

    count = scene.GetNumberOfNodes()
    p.outputCorrectedVolume = p.outputFieldVolume = None
    widget.onApplyButton()
    widget.onApplyButton()  # the same button now cancels
    finish(widget)
    assert "Cancelled" in widget.ui.progressBar.format and scene.GetNumberOfNodes() == count

    broken = widget.weights.parent / "broken.safetensors"
    broken.write_bytes(b"garbage")
    p.modelId = str(broken)
    widget.onApplyButton()
    finish(widget)
    assert "Failed" in widget.ui.progressBar.format and scene.GetNumberOfNodes() == count
    assert widget.errors and "broken" in widget.errors[-1]  # the engine says what is wrong with the file


def test_method_combo_reaches_the_engine(widget):
    """'Fit to the segmentation' becomes ``--bias-method fit``; this model has no segmentation head, so
    the engine refuses and says why, and the scene is left as it was."""
    scene = widget._parameterNode.inputVolume.GetScene()
    count = scene.GetNumberOfNodes()
    widget._parameterNode.method = "Fit to the segmentation"
    widget.onApplyButton()
    finish(widget)
    assert "Failed" in widget.ui.progressBar.format and scene.GetNumberOfNodes() == count
    assert widget.errors and "no segmentation head" in widget.errors[-1]
    widget._parameterNode.method = "Model head"
    widget.errors.clear()
    widget.onApplyButton()
    finish(widget)
    assert "Done" in widget.ui.progressBar.format and not widget.errors


def test_start_failure_is_shown_and_leaves_the_gui_usable(widget, monkeypatch):
    """The real ``slicer.util.tryWithErrorDisplay`` shows the error and re-raises it: Apply must
    still reset the progress bar and the button instead of leaving "Starting" behind."""
    monkeypatch.setattr(slicer, "app", SimpleNamespace(testingEnabled=lambda: False), raising=False)

    def declined(**kwargs):
        raise BrainFMCommon.InputError("Installation declined by the user.")

    monkeypatch.setattr(widget.logic, "setupPythonRequirements", declined)
    widget.onApplyButton()  # must not raise
    assert widget._run is None and "Not started" in widget.ui.progressBar.format
    assert widget.errors and "could not start" in widget.errors[-1] and "declined" in widget.errors[-1]
    assert widget.ui.applyButton.text == "Apply" and widget.ui.applyButton.enabled
    assert any("declined" in line for line in widget.ui.logTextEdit.lines)


def test_unset_path_field_shows_empty_after_each_parameter_change(widget):
    """The wrapper writes ``str(pathlib.Path())`` == "." into a ctkPathLineEdit on every change of
    the parameter node; the widget's observer (called after it) shows the field empty again."""
    field = widget.ui.atlasPathLineEdit = FakeWidget("ctkPathLineEdit")  # as in BrainFMRegistration
    field.currentPath = "."  # what the ctkPathLineEdit connector just wrote
    widget._checkCanApply()
    assert field.currentPath == ""
    field.currentPath = str(widget.weights)
    widget._checkCanApply()
    assert field.currentPath == str(widget.weights)


def test_closing_the_scene_cancels_a_running_run(widget):
    cancelled = []
    widget._run = SimpleNamespace(running=True, cancel=lambda: cancelled.append(True))
    widget._parameterNode = None  # (the fake parameters cannot disconnect a GUI)
    widget.onSceneStartClose(None, None)
    assert cancelled == [True]


#: module -> (heads of its tiny model, its parameters besides the shared ones, the log's line prefix,
#: what the line says for "Model head" and for the fit)
METHOD_COMBOS = {
    "BrainFMSegmentation": ({"segmentation": 33}, dict(outputSegmentation=None, outputLabelmap=None, outputTable=None),
                            "segmentation:", "Refined to the scan", "refined to the scan's intensities"),
    "BrainFMSynthesis": ({"segmentation": 33, "T2": 1},
                         dict(contrast="T2w", superResolution=False, outputVolume=None, outputSuperResolution=None),
                         "synthesis:", "Fitted to the scan", "fitted to the scan"),
}


def module_widget(module, scene, tmp_path, monkeypatch, vol, heads, **params):
    """The module's widget with fake Qt widgets named after its .ui file, a tiny model with ``heads``, ``vol``
    as its input and ``params`` besides the shared parameters; returns ``(widget, errors shown)``."""
    import importlib

    from brainfm.models import BrainFMNet, ModelConfig, registry, save_native

    mod = importlib.import_module(module)
    monkeypatch.setenv("BRAINFM_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(registry, "BUNDLED_DIR", tmp_path / "no_bundled_model")
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **kw: None)
    errors = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: errors.append(text), raising=False)
    torch.manual_seed(0)
    net = BrainFMNet(ModelConfig(f_maps=4, num_levels=3, num_groups=2, heads=heads))
    weights, _ = save_native(net, tmp_path / "m" / "tiny.safetensors", info={"name": "tiny", "version": "0"})
    w = getattr(mod, module + "Widget")()
    ui = UiFile(module_ui(module))
    w.ui = SimpleNamespace(**{name: FakeWidget(u.cls) for name, u in ui.widgets.items()})
    if hasattr(w.ui, "segmentationShow3DButton"):
        w.ui.segmentationShow3DButton.setSegmentationNode = lambda node: None
    w.logic = getattr(mod, module + "Logic")()
    w.logic.logCallback = w.appendLog
    defaults = {name: copy.copy(value) for name, value in getattr(mod, module + "ParameterNode")._defaults.items()}
    w._parameterNode = FakeParameters(**{**defaults, **dict(
        inputVolume=add_volume(scene, vol.data, vol.affine, "head"), device="cpu", quality="Full",
        method="Model head", modelId=str(weights), oneMillimeterGrid=False, allowThickSlices=False, **params)})
    return w, errors


@pytest.mark.parametrize("module", list(METHOD_COMBOS))
def test_method_combos_reach_the_engine(module, scene, tmp_path, monkeypatch):
    """The Segmentation module's 'Labels from' and the Synthesis module's 'Image from' combos become
    ``--seg-method`` / ``--synth-method``: the run's log names the method the engine used."""
    import importlib

    from BrainFMSceneLib.parameters import SEG_METHODS, SYNTH_METHODS

    mod = importlib.import_module(module)
    heads, params, prefix, fit_choice, fit_words = METHOD_COMBOS[module]
    assert sorted(mod.METHOD_CHOICES.values()) == sorted(SEG_METHODS if "Segmentation" in module else SYNTH_METHODS)
    assert UiFile(module_ui(module)).widgets["methodComboBox"].cls == "QComboBox"
    w, errors = module_widget(module, scene, tmp_path, monkeypatch, blob_head((22, 24, 20), GEOMETRY_CASES["oblique"]),
                              heads, **params)
    seen = {}
    for choice in ("Model head", fit_choice):
        w._parameterNode.method = choice
        w.ui.logTextEdit.lines = []
        w.onApplyButton()
        finish(w)
        assert "Done" in w.ui.progressBar.format and not errors, (w.ui.progressBar.format, errors)
        seen[choice] = [line for line in w.ui.logTextEdit.lines if prefix in line]
    assert seen["Model head"] and all(fit_words not in line for line in seen["Model head"]), seen
    assert any(fit_words in line for line in seen[fit_choice]), seen


#: module -> (heads of its tiny model, its parameters besides the shared ones, the output role checked)
RESULTS_GRID = {
    "BrainFMSegmentation": ({"segmentation": 33}, METHOD_COMBOS["BrainFMSegmentation"][1], "outputSegmentation"),
    "BrainFMSynthesis": ({"segmentation": 33, "T2": 1}, METHOD_COMBOS["BrainFMSynthesis"][1], "outputVolume"),
    "BrainFMBiasField": ({"bias_field_log": 1}, dict(outputCorrectedVolume=None, outputFieldVolume=None),
                         "outputCorrectedVolume"),
    "BrainFMRegistration": ({"registration": 3}, dict(outputTransform=None, outputResampledVolume=None),
                            "outputAtlasVolume"),
}


@pytest.mark.parametrize("module", list(RESULTS_GRID))
def test_one_millimetre_results_grid_for_thick_slices(module, scene, tmp_path, monkeypatch):
    """'Results grid: 1 mm' puts a thick-slice scan's results on a 1 mm grid over the same head (the
    segmentation's own geometry too, so editing keeps its voxels); unchecked, they keep the input's grid."""
    from fixtures import affine

    from brainfm.io import write_volume
    from BrainFMSceneLib.volume_nodes import ijk_to_ras

    assert UiFile(module_ui(module)).widgets["oneMillimeterGridCheckBox"].cls == "QCheckBox"
    heads, params, role = RESULTS_GRID[module]
    params = dict(params)
    if module == "BrainFMRegistration":  # an atlas file, and a node for the atlas warped onto the scan
        write_volume(blob_head((30, 30, 30), affine(origin=(-15, -15, -15)), seed=2), tmp_path / "atlas.nii.gz")
        params.update(atlasPath=tmp_path / "atlas.nii.gz",
                      outputAtlasVolume=scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "warped atlas"))
    thick = blob_head((24, 26, 8), affine((1.0, 1.0, 4.0), origin=(-12, -13, -16)))
    w, errors = module_widget(module, scene, tmp_path, monkeypatch, thick, heads, **params)
    volume = w._parameterNode.inputVolume
    for one_mm in (False, True):
        w._parameterNode.oneMillimeterGrid = one_mm
        w.onApplyButton()
        finish(w)
        assert "Done" in w.ui.progressBar.format and not errors, (w.ui.progressBar.format, errors)
        node = getattr(w._parameterNode, role)
        if role == "outputSegmentation":
            geometry = slicer.vtkOrientedImageData()
            slicer.vtkSegmentationConverter.DeserializeImageGeometry(node.GetSegmentation().GetConversionParameter(
                slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()), geometry, False)
            spacing, dims = geometry.GetSpacing(), geometry.GetDimensions()
            linked = node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole())
            assert (linked is volume) is (not one_mm)
        else:
            spacing, dims = node.GetSpacing(), node.GetImageData().GetDimensions()
            if not one_mm:
                np.testing.assert_allclose(ijk_to_ras(node), ijk_to_ras(volume), atol=1e-6)
        if one_mm:
            np.testing.assert_allclose(spacing, (1.0, 1.0, 1.0), atol=1e-6)
            assert dims[2] > 2 * volume.GetImageData().GetDimensions()[2]  # the 4 mm axis, now in 1 mm voxels
        else:
            np.testing.assert_allclose(spacing, (1.0, 1.0, 4.0), atol=1e-6)
            assert tuple(dims) == tuple(volume.GetImageData().GetDimensions())


def scene_nodes(scene):
    """(id, class, name) of every node of ``scene``: what 'the scene is unchanged' compares."""
    return sorted((scene.GetNthNode(i).GetID(), scene.GetNthNode(i).GetClassName(), scene.GetNthNode(i).GetName())
                  for i in range(scene.GetNumberOfNodes()))


@pytest.mark.parametrize("module", list(RESULTS_GRID))
def test_slices_thicker_than_10_mm_are_refused_until_allowed(module, scene, tmp_path, monkeypatch):
    """A 12 mm-slice scan: Apply shows the engine's refusal, which names the checkbox, and leaves the scene
    as it was; with 'Allow slices thicker than 10 mm' ticked the same Apply runs, results on the input grid."""
    from fixtures import affine

    from brainfm.io import write_volume
    from BrainFMSceneLib.volume_nodes import ijk_to_ras

    widgets = UiFile(module_ui(module)).widgets
    assert widgets["allowThickSlicesCheckBox"].cls == "QCheckBox"
    heads, params, role = RESULTS_GRID[module]
    params = dict(params)
    if module == "BrainFMRegistration":
        write_volume(blob_head((30, 30, 30), affine(origin=(-15, -15, -15)), seed=2), tmp_path / "atlas.nii.gz")
        params.update(atlasPath=tmp_path / "atlas.nii.gz",
                      outputAtlasVolume=scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "warped atlas"))
    thick = blob_head((24, 26, 8), affine((1.0, 1.0, 12.0), origin=(-12, -13, -48)))
    w, errors = module_widget(module, scene, tmp_path, monkeypatch, thick, heads, **params)
    before = scene_nodes(scene)
    w.onApplyButton()
    finish(w)
    assert len(errors) == 1 and "thicker than 10 mm" in errors[0] and errors[0].startswith("head.nii: "), errors
    assert "Allow slices thicker than 10 mm" in errors[0], errors[0]
    assert scene_nodes(scene) == before
    errors.clear()
    w._parameterNode.allowThickSlices = True
    w.onApplyButton()
    finish(w)
    assert "Done" in w.ui.progressBar.format and not errors, (w.ui.progressBar.format, errors)
    # the run's warnings (12 mm slices are anisotropic) are counted where the user looks, and logged
    assert "warning" in w.ui.progressBar.format and "see the log" in w.ui.progressBar.format
    assert any("anisotropic" in line for line in w.ui.logTextEdit.lines)
    node = getattr(w._parameterNode, role)
    if role == "outputSegmentation":
        node = node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole())
    np.testing.assert_allclose(ijk_to_ras(node), ijk_to_ras(w._parameterNode.inputVolume), atol=1e-6)


def test_segmentation_module_loads_a_case_of_a_command_line_batch(scene, tmp_path, monkeypatch):
    """'Batch case' + Load: the case's scan becomes the input, its segmentation and volume table the
    outputs; no folder chosen, or a folder that is no case, is said and changes nothing."""
    from fixtures import GEOMETRY_CASES

    from brainfm.cli.main import main
    from brainfm.io import write_volume

    w, errors = module_widget("BrainFMSegmentation", scene, tmp_path, monkeypatch,
                              blob_head((22, 24, 20), GEOMETRY_CASES["ras"]), {"segmentation": 33},
                              **METHOD_COMBOS["BrainFMSegmentation"][1])
    scan = write_volume(blob_head((26, 28, 22), GEOMETRY_CASES["oblique"], seed=4), tmp_path / "in" / "sub-03.nii.gz")
    assert main(["run", str(scan), "-o", str(tmp_path / "out"), "--model", w._parameterNode.modelId, "--device",
                 "cpu", "--tasks", "seg", "--progress", "none", "--no-png"]) == 0
    monkeypatch.setattr(slicer, "app", SimpleNamespace(testingEnabled=lambda: False), raising=False)
    before = scene_nodes(scene)
    for bad in ("", str(tmp_path / "in")):
        w.ui.caseFolderPathLineEdit.currentPath = bad
        assert w.onLoadCase() is False
    assert len(errors) == 2 and "Choose a case folder" in errors[0] and "summary.json" in errors[1], errors
    assert scene_nodes(scene) == before
    w.ui.caseFolderPathLineEdit.currentPath = str(tmp_path / "out" / "sub-03")
    assert w.onLoadCase() is True
    p = w._parameterNode
    assert p.inputVolume.GetName() == "sub-03" and p.outputSegmentation.IsA("vtkMRMLSegmentationNode")
    assert p.outputTable.IsA("vtkMRMLTableNode") and p.outputTable.GetNumberOfRows() > 0
    assert any("loaded" in line for line in w.ui.logTextEdit.lines)


def finish_model_job(w, timeout=300.0):
    """Poll as the panel's timer does until the model job (a model addition or a fine-tuning) has ended."""
    finish(w, timeout, job="_addJob")


def test_segmentation_module_fine_tunes_on_training_pairs(scene, tmp_path, monkeypatch):
    """The Fine-tune section: Add pair (input volume + selected segmentation) explains what is missing,
    Remove takes the selected pair out, Fine-tune runs the real engine on the panel's model with the steps
    and name of the parameter node, Apply and Fine-tune turn into Cancel meanwhile, and the new model is
    then listed and selected; a second fine-tuning cancelled with the same button adds nothing."""
    from BrainFMSceneLib.finetune_job import FinetuneJob
    from BrainFMSceneLib.registry import list_models
    from fixtures import label_head

    monkeypatch.setattr(slicer, "app", SimpleNamespace(testingEnabled=lambda: False), raising=False)
    shape = (22, 24, 20)
    w, errors = module_widget("BrainFMSegmentation", scene, tmp_path, monkeypatch,
                              blob_head(shape, GEOMETRY_CASES["oblique"]), {"segmentation": 33},
                              **METHOD_COMBOS["BrainFMSegmentation"][1], finetuneSteps=2, finetuneModelName="ventricles")
    p = w._parameterNode
    w._checkCanApply()
    assert not w.ui.finetuneButton.enabled and "training pair" in w.ui.finetuneButton.toolTip
    assert w.onAddFinetunePair() is False and "Select the segmentation of head" in errors[-1]
    lm = add_volume(scene, (label_head(shape) == 4).astype(np.int16), GEOMETRY_CASES["oblique"], "drawn",
                    labelmap=True)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my ventricles")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(lm, seg)
    seg.GetSegmentation().GetNthSegment(0).SetName("Ventricle")
    p.finetuneSegmentation = seg
    assert w.onAddFinetunePair() is True
    assert w.onAddFinetunePair() is False and "already in the list" in errors[-1]
    assert w.ui.finetunePairsListWidget.items == [("head + my ventricles", None)]
    assert p.finetunePairs == [(p.inputVolume, seg)]  # a parameter: saved with the scene
    reopened, _errors = module_widget("BrainFMSegmentation", scene, tmp_path, monkeypatch,
                                      blob_head(shape, GEOMETRY_CASES["oblique"]), {"segmentation": 33})
    reopened._parameterNode = p
    reopened._checkCanApply()
    assert reopened.ui.finetunePairsListWidget.items == [("head + my ventricles", None)]
    assert reopened.ui.finetuneButton.enabled
    w.ui.finetunePairsListWidget.currentRow = 0
    w.onRemoveFinetunePair()
    assert w.ui.finetunePairsListWidget.items == [] and not w.ui.finetuneButton.enabled
    assert w.onAddFinetunePair() is True and w.ui.finetuneButton.enabled and w.ui.finetuneButton.text == "Fine-tune"
    other = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "other")
    p.finetuneSegmentation = other
    assert w.onAddFinetunePair() is True and len(w.ui.finetunePairsListWidget.items) == 2
    scene.RemoveNode(other)  # a node deleted from the scene takes its pair with it
    w._checkCanApply()
    assert w.ui.finetunePairsListWidget.items == [("head + my ventricles", None)]
    assert w.finetunePairs() == [(p.inputVolume, seg)]
    errors.clear()

    p.finetuneDecoder = True  # "Train: decoder too"
    w.onFinetune()
    assert isinstance(w._addJob, FinetuneJob) and w._addJob.running, errors
    assert w._addJob.name == "ventricles" and w._addJob.steps == 2 and w._addJob.model_spec == p.modelId
    assert w._addJob.mode == "encoder"
    assert w.ui.applyButton.text == "Cancel" and w.ui.finetuneButton.text == "Cancel"
    assert "fine-tuning" in w.ui.applyButton.toolTip
    finish_model_job(w)
    assert not errors and "Fine-tuned model 'ventricles' added" in w.ui.progressBar.format, (errors, w.ui.logTextEdit.lines[-5:])
    assert p.modelId == "ventricles" and w.ui.modelComboBox.itemData(w.ui.modelComboBox.currentIndex) == "ventricles"
    assert w.ui.applyButton.text == "Apply" and w.ui.finetuneButton.text == "Fine-tune"
    assert any("Ventricle" in line for line in w.ui.logTextEdit.lines)  # the label of the new model

    p.finetuneModelName, p.finetuneSteps, p.finetuneDecoder = "never-added", 5000, False
    w.onFinetune()
    job = w._addJob
    assert job.mode == "head"
    temp = job.temp_dir
    said = []
    job.runner.progress.connect(lambda f, m: said.append(m))
    deadline = time.monotonic() + 120
    while not said and time.monotonic() < deadline:
        w._onPoll()
        time.sleep(0.05)
    w.onFinetune()  # the same button cancels
    finish_model_job(w)
    assert job.status == "cancelled" and "Cancelled" in w.ui.progressBar.format and not errors
    assert not temp.exists() and "never-added" not in [c.id for c in list_models()]
