"""BrainFMCommon: hidden module that ships what the four BrainFM task modules share.

Its folder holds two libraries, one per layer:

- ``BrainFMSceneLib/``: the Qt-free scene library (MRML exchange with exact geometry, the
  ``brainfm run`` child process, model choices, dependency installer, diagnostics, label tables);
  it also runs without the Slicer application, on the MRML scene of the ``slicer-core`` wheel;
- ``BrainFMModuleSupport/``: what the task modules build on inside the Slicer application:
  the logic base (``logic.py``, ``run.py``, ``models.py``, ``finetune.py``), the checks (``checks.py``),
  the widget base (``widget.py``, ``model_widget.py``, ``finetune_widget.py``), the texts (``texts.py``), the widgets and parameters
  every module provides (``ui_contract.py``) and the self-test helpers (``testing.py``).

This file is the module itself (hidden from the module list), its self-test, and the names the task
modules import from it. ``BrainFMLib`` and ``BrainFMModuleLib`` are the former names of the two
libraries, kept as aliases for scripts of earlier versions.

Torch and ``brainfm`` are never imported here at module level: the engine runs in a child
``PythonSlicer`` process. The parameter-node classes live in the task modules; annotations are
evaluated eagerly there (no ``from __future__ import annotations``) because ``parameterNodeWrapper``
reads them with ``typing.get_type_hints``.
"""
import slicer
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest

# Re-exported for the task modules and for scripts (``from BrainFMCommon import ...``).
from BrainFMSceneLib._errors import BrainFMError, InputError  # noqa: F401
from BrainFMSceneLib.finetune_job import FinetuneJob  # noqa: F401
from BrainFMModuleSupport.finetune import FINETUNE_STEPS, FinetuneLogicMixin  # noqa: F401
from BrainFMModuleSupport.finetune_widget import FinetuneWidgetMixin  # noqa: F401
from BrainFMSceneLib.model_add import AddModelJob  # noqa: F401
from BrainFMModuleSupport import BrainFMLogicBase, BrainFMRun  # noqa: F401
from BrainFMModuleSupport.checks import (  # noqa: F401
    MODEL_CHOICES,
    MODEL_CUSTOM,
    MODEL_DEFAULT,
    MODEL_OFFICIAL,
    QUALITY_CHOICES,
    checkInputVolume,
    checkOutputNodes,
    modelSpec,
)
from BrainFMModuleSupport.model_widget import ModelWidgetMixin  # noqa: F401
from BrainFMModuleSupport.models import DEFAULT_MODEL_ID  # noqa: F401
from BrainFMModuleSupport.texts import ACKNOWLEDGEMENT, CONTRIBUTORS, helpText  # noqa: F401
from BrainFMModuleSupport.ui_contract import COMMON_PARAMETERS, COMMON_WIDGETS  # noqa: F401
from BrainFMModuleSupport.widget import BrainFMWidgetBase  # noqa: F401

__all__ = [
    "ACKNOWLEDGEMENT", "COMMON_PARAMETERS", "COMMON_WIDGETS", "CONTRIBUTORS", "DEFAULT_MODEL_ID", "FINETUNE_STEPS",
    "MODEL_CHOICES", "MODEL_CUSTOM", "MODEL_DEFAULT", "MODEL_OFFICIAL", "QUALITY_CHOICES", "AddModelJob",
    "BrainFMCommon", "BrainFMCommonTest", "BrainFMError", "BrainFMLogicBase", "BrainFMRun", "BrainFMWidgetBase",
    "FinetuneJob", "FinetuneLogicMixin", "FinetuneWidgetMixin", "InputError", "ModelWidgetMixin",
    "checkInputVolume", "checkOutputNodes", "helpText", "modelSpec",
]


class BrainFMCommon(ScriptedLoadableModule):
    """Hidden module: shared code of the BrainFM extension (``BrainFMSceneLib``, ``BrainFMModuleSupport``)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("BrainFM Common")
        self.parent.categories = [_("BrainFM")]
        self.parent.dependencies = []
        self.parent.contributors = CONTRIBUTORS
        self.parent.helpText = _("Code shared by the BrainFM modules (not shown in the module list).")
        self.parent.acknowledgementText = ACKNOWLEDGEMENT
        self.parent.hidden = True


class BrainFMCommonTest(ScriptedLoadableModuleTest):
    """Checks of the shared input/output validation on real MRML nodes (no torch needed)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_checks()

    def test_checks(self):
        import numpy as np

        scalar = slicer.util.addVolumeFromArray(np.ones((4, 5, 6), np.float32), name="scalar")
        checkInputVolume(scalar)
        label = slicer.util.addVolumeFromArray(np.ones((4, 5, 6), np.int16), name="label",
                                               nodeClassName="vtkMRMLLabelMapVolumeNode")
        rgb = slicer.util.addVolumeFromArray(np.ones((4, 5, 6, 3), np.uint8), name="rgb",
                                             nodeClassName="vtkMRMLVectorVolumeNode")
        for bad, words in ((None, "No input"), (label, "label map"), (rgb, "components")):
            with self.assertRaises(InputError) as ctx:
                checkInputVolume(bad)
            self.assertIn(words, str(ctx.exception))
        with self.assertRaises(InputError):
            checkOutputNodes(scalar, {"output": scalar})
        other = slicer.util.addVolumeFromArray(np.ones((4, 5, 6), np.float32), name="other")
        with self.assertRaises(InputError):
            checkOutputNodes(scalar, {"a": other, "b": other})
        checkOutputNodes(scalar, {"a": other, "b": None})
        self.assertEqual(modelSpec(MODEL_DEFAULT), "default")
        with self.assertRaises(InputError):
            modelSpec(MODEL_CUSTOM, "/nonexistent/weights.pth")
        self.delayDisplay("BrainFMCommon checks passed")
