"""The model selector of the modules on slicer-core (Qt stubbed): the store's models, task filtering
by heads, the no-model state before Apply, *Get official BrainFM weights…*, *Add model file…* (a real
``brainfm models add`` child process), ids in parameter nodes, and ``BrainFMSceneLib.registry.list_models``."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core wheel not installed")
torch = pytest.importorskip("torch")

import slicer_app_stubs  # noqa: E402

slicer_app_stubs.install()

import BrainFMBiasField  # noqa: E402
import BrainFMSegmentation  # noqa: E402
import BrainFMSynthesis  # noqa: E402
import ckpt_factory  # noqa: E402
from BrainFMSceneLib._errors import InputError, ModelNotAvailableError  # noqa: E402
from BrainFMSceneLib.registry import NOT_INSTALLED_MESSAGE, OFFICIAL_PAGE, list_models, sha256_file  # noqa: E402
from BrainFMSceneLib.volume_nodes import add_volume  # noqa: E402
from BrainFMModuleSupport.models import migrateModelParameters  # noqa: E402
from fake_widgets import FakeParameters, FakeWidget  # noqa: E402
from fixtures import GEOMETRY_CASES, blob_head  # noqa: E402
from slicer_static_helpers import UiFile, module_ui  # noqa: E402


@pytest.fixture()
def home(tmp_path, monkeypatch):
    from brainfm.models import registry

    monkeypatch.setenv("BRAINFM_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(registry, "BUNDLED_DIR", tmp_path / "no_bundled_model")
    return tmp_path / "home"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    ckpt_factory.write_official(d / "brainfm_pretrained.pth")
    ckpt_factory.write_native(d / "t1t2", heads={"T1": 1, "T2": 1}, info={
        "name": "t1t2-model", "quality": {"level": "preview", "real_t1_dice17": 0.71}})
    ckpt_factory.write_native(d / "segonly", heads={"segmentation": 33}, info={"name": "seg-model"})
    return d


def make_widget(module, scene, **params):
    mod = {"BrainFMBiasField": BrainFMBiasField, "BrainFMSynthesis": BrainFMSynthesis,
           "BrainFMSegmentation": BrainFMSegmentation}[module]
    w = getattr(mod, f"{module}Widget")()
    w.ui = type("Ui", (), {})()
    for name, u in UiFile(module_ui(module)).widgets.items():
        setattr(w.ui, name, FakeWidget(u.cls))
    w.logic = getattr(mod, f"{module}Logic")()
    w.logic.logCallback = w.appendLog
    vol = blob_head((22, 24, 20), GEOMETRY_CASES["ras"])
    base = dict(inputVolume=add_volume(scene, vol.data, vol.affine, "head"), device="cpu", quality="Full",
                modelId="default")
    w._parameterNode = FakeParameters(**{**base, **params})
    return w


def add(path, **kw):
    from brainfm.models import store

    return store.add_model(path, **kw)


def test_list_models_default_first_store_then_filtering(home, weights):
    first = list_models()
    assert [c.id for c in first] == ["default"] and not first[0].available
    assert OFFICIAL_PAGE in first[0].message and "brainfm models add" in first[0].message
    add(weights / "t1t2.safetensors")
    add(weights / "brainfm_pretrained.pth")
    choices = list_models()
    assert [c.id for c in choices] == ["default", "t1t2-model", "official"]
    default, t1t2, official = choices
    assert default.available and default.path == official.path and default.tasks == official.tasks
    assert official.is_default and not t1t2.is_default and official.label_scheme == "brainfm56"
    assert t1t2.title == "t1t2-model (native, preview (merged-17 Dice 0.710 on a real T1))"
    assert "brainfm-official" in official.details() and "9 heads" in official.details()
    assert "labels brainfm56" in official.details() and "1 mm voxels" in official.details()
    assert [c.id for c in list_models(tasks=["seg"])] == ["default", "official"]  # heads decide
    assert t1t2.supports(["t1", "t2"]) and not t1t2.supports(["seg"])


def test_list_models_without_brainfm_says_it_is_not_installed(tmp_path):
    lib = Path(__file__).resolve().parents[3] / "BrainFMSlicer" / "BrainFMCommon"
    code = (f"import sys; sys.modules['brainfm'] = None; sys.path.insert(0, {str(lib)!r})\n"
            "from BrainFMSceneLib.registry import list_models\n"
            "c = list_models(); print(len(c), c[0].id, c[0].available, c[0].message)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"1 default False {NOT_INSTALLED_MESSAGE}"


def test_list_models_imports_no_torch(home):
    lib = Path(__file__).resolve().parents[3] / "BrainFMSlicer" / "BrainFMCommon"
    code = (f"import sys; sys.path.insert(0, {str(lib)!r})\n"
            "from BrainFMSceneLib.registry import list_models\n"
            "list_models(); print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_both_sha256_implementations_agree(tmp_path):
    from brainfm.models.hashing import sha256_file as engine_sha256

    for size in (0, 1, (1 << 20) + 7, (1 << 22) + 1):  # around both chunk sizes
        p = tmp_path / f"f{size}"
        p.write_bytes(np.random.default_rng(size).bytes(size))
        assert sha256_file(p) == engine_sha256(p)


def test_logic_refuses_before_anything_starts_without_a_model(home, scene):
    logic = BrainFMBiasField.BrainFMBiasFieldLogic()
    vol = blob_head((22, 24, 20), GEOMETRY_CASES["ras"])
    volume = add_volume(scene, vol.data, vol.affine, "head")
    count = scene.GetNumberOfNodes()
    with pytest.raises(ModelNotAvailableError, match="No BrainFM model is available yet"):
        logic.process(volume, device="cpu")
    assert scene.GetNumberOfNodes() == count


def test_logic_task_check_and_choices_follow_the_heads(home, weights):
    add(weights / "t1t2.safetensors")
    add(weights / "segonly.safetensors")
    seg = BrainFMSegmentation.BrainFMSegmentationLogic()
    assert [c.id for c in seg.modelChoices()] == ["default", "seg-model"]
    assert seg.checkModel("seg-model", ["seg"]).id == "seg-model"
    with pytest.raises(InputError, match="cannot do segmentation.*it can do: T1w synthesis, T2w synthesis"):
        seg.checkModel("t1t2-model", ["seg"])
    with pytest.raises(ModelNotAvailableError, match="Models in your store"):
        seg.checkModel("default", ["seg"])  # no official model and no bundled one: no default
    assert seg.checkModel("/some/file.pth", ["seg"]) is None  # files are checked by the engine
    synth = BrainFMSynthesis.BrainFMSynthesisLogic()
    assert [c.id for c in synth.modelChoices()] == ["default", "t1t2-model"]


def test_parameter_node_of_an_earlier_version_gets_a_model_id(scene, tmp_path):
    node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    node.SetParameter("modelChoice", "Bundled default")
    migrateModelParameters(node)
    assert node.GetParameter("modelId") == "default"
    other = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    other.SetParameter("modelChoice", "Custom weights file")
    other.SetParameter("modelPath", str(tmp_path / "mine.pth"))
    migrateModelParameters(other)
    assert other.GetParameter("modelId") == str(tmp_path / "mine.pth")
    other.SetParameter("modelId", "official")
    migrateModelParameters(other)  # a current node is left alone
    assert other.GetParameter("modelId") == "official"


def test_selector_lists_ids_and_filters_tasks_by_heads(home, weights, scene):
    add(weights / "t1t2.safetensors")
    add(weights / "segonly.safetensors")
    w = make_widget("BrainFMSynthesis", scene, contrast="CT", superResolution=True, outputVolume=None,
                    outputSuperResolution=None, modelId="t1t2-model")
    w._fillModelComboBox()
    assert [d for _, d in w.ui.modelComboBox.items] == ["default", "t1t2-model"]  # ids as item data
    assert w.ui.modelComboBox.items[w.ui.modelComboBox.currentIndex][1] == "t1t2-model"
    w.ui.contrastComboBox.items = [(c, None) for c in BrainFMSynthesis.CONTRAST_CHOICES]  # as connectGui fills it
    w._checkCanApply()
    p = w._parameterNode
    assert w.ui.contrastComboBox.shownTexts() == ["T1w", "T2w"] and p.contrast == "T1w"
    assert not w.ui.superResolutionCheckBox.enabled and p.superResolution is False
    assert w.ui.applyButton.enabled, w.ui.applyButton.toolTip
    assert "native" in w.ui.modelInfoLabel.text and "preview" in w.ui.modelInfoLabel.text
    w._onModelChanged(0)
    assert p.modelId == "default"
    w._checkCanApply()
    assert not w.ui.applyButton.enabled and "Models in your store" in w.ui.applyButton.toolTip
    p.modelId = "seg-model"  # e.g. from a saved scene: not offered here, and said why
    w._fillModelComboBox()
    w._checkCanApply()
    assert w.ui.modelComboBox.items[-1] == ("seg-model (native)", "seg-model")
    assert not w.ui.applyButton.enabled and "cannot do" in w.ui.applyButton.toolTip


def test_get_official_weights_opens_the_authors_page(home, scene, monkeypatch):
    import qt

    opened = []
    monkeypatch.setattr(qt, "QUrl", lambda url: ("QUrl", url), raising=False)
    monkeypatch.setattr(qt, "QDesktopServices", type("D", (), {"openUrl": staticmethod(opened.append)}),
                        raising=False)
    w = make_widget("BrainFMBiasField", scene, outputCorrectedVolume=None, outputFieldVolume=None)
    w.onGetOfficialWeights()
    assert opened == [("QUrl", "https://github.com/jhuldr/BrainFM#downloads")]


@pytest.mark.slow
def test_add_model_file_runs_off_the_gui_thread_and_becomes_the_default(home, weights, scene, monkeypatch):
    import qt

    w = make_widget("BrainFMBiasField", scene, outputCorrectedVolume=None, outputFieldVolume=None)
    w._timer = type("T", (), {"start": lambda self: None, "stop": lambda self: None})()
    w.logic._requirementsOk = True  # brainfm and torch are installed here
    w._fillModelComboBox()
    w._checkCanApply()
    assert not w.ui.applyButton.enabled and "No BrainFM model" in w.ui.modelInfoLabel.text
    chosen = str(weights / "brainfm_pretrained.pth")
    monkeypatch.setattr(qt, "QFileDialog", type("F", (), {"getOpenFileName": staticmethod(lambda *a: chosen)}),
                        raising=False)
    monkeypatch.setattr(slicer.util, "mainWindow", lambda: None, raising=False)
    w.onAddModelFile()  # asks for the file, starts the child and returns at once
    assert w._addJob is not None and w._addJob.running
    assert w.ui.applyButton.text == "Cancel" and not w.ui.addModelButton.enabled
    deadline = time.monotonic() + 300
    while w._addJob is not None:
        assert time.monotonic() < deadline
        w._onPoll()
        time.sleep(0.05)
    assert "Added model 'official'" in w.ui.progressBar.format and w.ui.progressBar.value == 100
    assert [d for _, d in w.ui.modelComboBox.items] == ["default", "official"]
    assert w._parameterNode.modelId == "default"  # the best available model is now the official one
    assert "brainfm-official" in w.ui.modelInfoLabel.text
    assert w.ui.applyButton.enabled and w.ui.applyButton.text == "Apply"
    assert (weights / "brainfm_pretrained.pth").is_file()  # the user's file stays


@pytest.mark.slow
def test_add_model_file_failure_and_cancel(home, weights, tmp_path):
    logic = BrainFMBiasField.BrainFMBiasFieldLogic()
    logic._requirementsOk = True
    bad = tmp_path / "evil.pth"
    ckpt_factory.write_forbidden_pickle(bad)
    job = logic.addModelFile(str(bad), waitForCompletion=False)
    job.wait(timeout=300)
    assert job.status == "failed" and "refused: " in str(job.error) and "executable objects" in str(job.error)
    with pytest.raises(InputError, match="Model file not found"):
        logic.addModelFile(str(tmp_path / "missing.pth"))
    job = logic.addModelFile(str(weights / "brainfm_pretrained.pth"), waitForCompletion=False)
    job.cancel()
    job.wait(timeout=300)
    assert job.status in ("cancelled", "completed")
    if job.status == "cancelled":
        assert list_models()[0].available is False  # nothing was added
    seen = []
    done = logic.addModelFile(str(weights / "brainfm_pretrained.pth"), progressCallback=lambda f, m: seen.append(f))
    assert done.model.id == "official" and seen and seen[-1] == 1.0
