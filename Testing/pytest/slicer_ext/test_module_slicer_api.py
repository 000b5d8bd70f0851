"""The module classes against stand-ins that behave like the real Slicer API (no Slicer app needed).

``slicer_app_stubs`` reproduces the class-time checks of ``@parameterNodeWrapper`` (serializer per
field type, ``Choice`` validation of defaults, reserved names) so that importing the module files on
slicer-core fails where Slicer would fail when it loads them; ``BrainFMTestBase.runSteps`` is run the
way Slicer's Reload-and-Test button runs a module test (``<Module>Test().runTest()``, no unittest runner).
"""
from __future__ import annotations

import importlib
import pathlib
from typing import Annotated

import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core wheel not installed")

import slicer_app_stubs  # noqa: E402

slicer_app_stubs.install()

from slicer_static_helpers import TASK_MODULES  # noqa: E402

Choice = slicer_app_stubs.Choice  # module level: annotations here are strings evaluated in these globals


@pytest.mark.parametrize("module", TASK_MODULES)
def test_parameter_node_classes_pass_the_wrapper_checks(module):
    mod = importlib.import_module(module)  # the decorator runs at import, as in Slicer
    cls = getattr(mod, f"{module}ParameterNode")
    assert cls._is_parameter_node_wrapper
    fields = cls.allParameters
    assert {"inputVolume", "device", "quality", "modelId"} <= set(fields)
    assert not {"modelChoice", "modelPath"} & set(fields)  # ids, never display texts
    assert cls.quality in mod.QUALITY_CHOICES and cls.modelId == "default" and fields["modelId"] is str
    assert set(getattr(mod, f"{module}Logic").MODEL_TASKS) <= {"t1", "t2", "flair", "ct", "sr", "seg", "dist",
                                                              "bias", "reg"}


def test_stub_wrapper_refuses_what_slicer_refuses():
    wrapper = slicer_app_stubs.parameterNodeWrapper

    class BadDefault:
        quality: Annotated[str, Choice(["Full", "Fast"])] = "full"

    with pytest.raises(ValueError, match="must be in one of"):
        wrapper(BadDefault)

    class BadType:
        ratio: complex

    with pytest.raises(TypeError, match="serializer"):
        wrapper(BadType)

    class Reserved:
        path: pathlib.Path

        def default(self):  # the real wrapper adds its own ``default``
            return None

    with pytest.raises(ValueError, match="reserved name 'default'"):
        wrapper(Reserved)


def test_run_steps_reports_skips_sets_up_each_step_and_cleans_up(scene, tmp_path, monkeypatch):
    from BrainFMModuleSupport.testing import BrainFMTestBase

    calls = []
    model_dir = tmp_path / "model"
    model_dir.mkdir()

    class Probe(BrainFMTestBase):
        def setUp(self):
            calls.append("setUp")

        def delayDisplay(self, message, *args, **kwargs):
            calls.append(message)

        def test_a(self):
            calls.append("a")
            type(self)._modelDir = model_dir

        def test_skipped(self):
            self.skipTest("no brainfm in Slicer's Python")

        def runTest(self):
            self.runSteps(self.test_a, self.test_skipped)

    Probe().runTest()  # what ScriptedLoadableModule.runTest does: no unittest runner around it
    assert calls[:3] == ["setUp", "a", "setUp"]
    assert calls[3].startswith("Skipped test_skipped") and "no brainfm" in calls[3]
    assert not model_dir.exists() and Probe._modelDir is None  # tearDownClass ran

    class Failing(Probe):
        def test_a(self):
            raise AssertionError("real failure")

    with pytest.raises(AssertionError, match="real failure"):  # failures still fail
        Failing().runTest()


def test_pip_and_torch_installers_raise_install_errors(monkeypatch):
    """Slicer's pip_install / PyTorchUtils raise CalledProcessError or ImportError; the runners turn
    them into the InstallError (a BrainFMError) that InstallLogic and the GUI expect."""
    import subprocess
    import sys
    import types

    from BrainFMSceneLib.install import InstallError
    from BrainFMModuleSupport import logic

    seen = []

    def failing_pip(requirements):  # the 5.8 signature: pip_install(requirements)
        seen.append(requirements)
        raise subprocess.CalledProcessError(1, ["PythonSlicer", "-m", "pip", "install", *requirements])

    monkeypatch.setattr(slicer.util, "pip_install", failing_pip)
    with pytest.raises(InstallError, match="exit code 1"):
        logic._pipInstall(["install", "nibabel>=5"])
    assert seen == [["nibabel>=5"]]

    calls, outcome = [], {}

    class PyTorchUtilsLogic:  # fepegar/SlicerPyTorch: installTorch(askConfirmation, forceComputationBackend, ...)
        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
            calls.append(("torch" + torchVersionRequirement, askConfirmation))
            if "error" in outcome:
                raise outcome["error"]

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    logic._installTorch(">=2.1")
    assert calls == [("torch>=2.1", False)]
    outcome["error"] = subprocess.CalledProcessError(2, ["ltt"])
    with pytest.raises(InstallError, match="exit code 2"):
        logic._installTorch(">=2.1")
    outcome["error"] = OSError("DLL load failed")
    with pytest.raises(InstallError) as info:
        logic._installTorch(">=2.1")
    assert info.value.restart_required
