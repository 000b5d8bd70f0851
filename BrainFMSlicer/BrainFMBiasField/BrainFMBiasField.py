"""BrainFM Bias Field: estimate and remove the MRI intensity inhomogeneity (bias field).

Console example (Slicer Python console)::

    volume = slicer.util.loadVolume("/data/t1.nii.gz")
    logic = slicer.util.getModuleLogic("BrainFMBiasField")
    run = logic.process(volume, device="auto")
    corrected, field = run.outputs["outputCorrectedVolume"], run.outputs["outputFieldVolume"]
"""
from typing import Annotated, Callable, Optional

import numpy as np
import slicer
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule

import BrainFMCommon
import BrainFMModuleSupport.testing
from BrainFMCommon import QUALITY_CHOICES, BrainFMLogicBase, BrainFMRun, BrainFMWidgetBase


class BrainFMBiasField(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("BrainFM Bias Field")
        self.parent.categories = [_("BrainFM")]
        self.parent.dependencies = ["BrainFMCommon"]
        self.parent.contributors = BrainFMCommon.CONTRIBUTORS
        self.parent.helpText = BrainFMCommon.helpText(
            "Estimates the smooth multiplicative intensity inhomogeneity (bias field) of a brain MRI of any "
            "contrast and returns the field and the corrected image, both on the input grid.")
        self.parent.acknowledgementText = BrainFMCommon.ACKNOWLEDGEMENT


#: the method combo's entries -> ``biasMethod`` of :meth:`BrainFMBiasFieldLogic.process`
METHOD_CHOICES = {"Auto": "auto", "Fit to the segmentation": "fit", "Model head": "head"}


@parameterNodeWrapper
class BrainFMBiasFieldParameterNode:
    """GUI state of the module; saved with the scene."""

    inputVolume: vtkMRMLScalarVolumeNode
    outputCorrectedVolume: vtkMRMLScalarVolumeNode
    outputFieldVolume: vtkMRMLScalarVolumeNode
    device: str = "auto"
    quality: Annotated[str, Choice(QUALITY_CHOICES)] = QUALITY_CHOICES[0]
    method: Annotated[str, Choice(list(METHOD_CHOICES))] = "Auto"
    oneMillimeterGrid: bool = False  # results on a 1 mm grid instead of the input's (thick slices)
    allowThickSlices: bool = False  # run on slices thicker than 10 mm (refused by default)
    modelId: str = "default"  # model id: default (best available), a store name, bundled or a file path


class BrainFMBiasFieldLogic(BrainFMLogicBase):
    """Bias-field estimation without the GUI (Python console, ``Slicer --python-script``).

    >>> run = BrainFMBiasFieldLogic().process(volume, device="cpu")  # doctest: +SKIP
    >>> sorted(run.outputs)  # doctest: +SKIP
    ['outputCorrectedVolume', 'outputFieldVolume']
    """

    OUTPUTS = {"outputCorrectedVolume": "bias_corrected", "outputFieldVolume": "bias_field"}
    #: tasks this module can run (its model selector lists the models that can do one of them)
    MODEL_TASKS = ("bias",)

    def getParameterNode(self):
        return BrainFMBiasFieldParameterNode(super().getParameterNode())

    def process(self, inputVolume, *, outputFieldVolume=None, outputCorrectedVolume=None, device: str = "auto",
                quality: str = "full", model: str = "default", biasMethod: str = "auto", outputFrame: str = "input",
                allowThickSlices: bool = False, waitForCompletion: bool = True,
                progressCallback: Optional[Callable[[float, str], None]] = None) -> BrainFMRun:
        """Estimate the bias field of ``inputVolume`` and divide it out.

        :param inputVolume: ``vtkMRMLScalarVolumeNode`` (3D, single component). Never modified.
        :param outputFieldVolume: volume node for the multiplicative field (1 = no bias); None creates one.
        :param outputCorrectedVolume: volume node for input / field; None creates one.
        :param device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        :param quality: ``"full"`` or ``"fast"`` (less GPU memory).
        :param model: ``"default"`` (the best available model), a name of the model store
            (``brainfm models list``), ``"bundled"`` or a weights file path.
        :param biasMethod: ``"auto"`` (default: the model's bias-field head, or a field fitted to its
            segmentation when the model's measured quality says its head is not reliable), ``"fit"``
            (a smooth field that makes the tissue classes of the model's segmentation uniform) or
            ``"head"``. The run's ``summary.json`` names the method used.
        :param outputFrame: ``"input"`` (results on the input volume's grid) or ``"1mm"`` (on a 1 mm grid
            over the head, finer than a thick-slice input).
        :param allowThickSlices: run on slices thicker than 10 mm, which are refused by default (too little of
            the anatomy survives slices that thick for reliable results).
        :param waitForCompletion: block until done (scripts) or return the running run at once (GUI).
        :param progressCallback: ``callback(fraction, message)``.
        :return: the :class:`BrainFMRun`; ``run.outputs`` maps the parameter names above to nodes.
        """
        return self.run(inputVolume, tasks=("bias",), biasMethod=biasMethod, outputFrame=outputFrame,
                        allowThickSlices=allowThickSlices,
                        outputs={"outputCorrectedVolume": outputCorrectedVolume,
                                 "outputFieldVolume": outputFieldVolume},
                        create=("outputCorrectedVolume", "outputFieldVolume"), device=device, quality=quality,
                        model=model, waitForCompletion=waitForCompletion, progressCallback=progressCallback)


class BrainFMBiasFieldWidget(BrainFMWidgetBase):
    logicClass = BrainFMBiasFieldLogic

    def outputNodes(self, p):
        return {"outputCorrectedVolume": p.outputCorrectedVolume, "outputFieldVolume": p.outputFieldVolume}

    def startRun(self, p) -> BrainFMRun:
        return self.logic.process(
            p.inputVolume, outputFieldVolume=p.outputFieldVolume, outputCorrectedVolume=p.outputCorrectedVolume,
            device=p.device, quality=p.quality, model=p.modelId or "default",
            biasMethod=METHOD_CHOICES.get(p.method, "auto"), **self.gridOptions(p),
            waitForCompletion=False, progressCallback=self.onProgress)

    def showResults(self, run: BrainFMRun) -> None:
        BrainFMWidgetBase.showResults(self, run)
        slicer.util.setSliceViewerLayers(background=run.outputs.get("outputCorrectedVolume"),
                                         foreground=run.outputs.get("outputFieldVolume"), foregroundOpacity=0.0,
                                         fit=True)


class BrainFMBiasFieldTest(BrainFMModuleSupport.testing.BrainFMTestBase):
    """Whole path on CPU with a tiny random-weight model: export, child process, import."""

    heads = {"bias_field_log": 1}

    def runTest(self):
        self.runSteps(self.test_bias_field, self.test_bad_inputs_leave_scene_unchanged)

    def test_bias_field(self):
        volume = self.makeInputVolume()
        original = slicer.util.arrayFromVolume(volume).copy()
        run = BrainFMBiasFieldLogic().process(volume, device="cpu", model=self.tinyModel())
        self.assertEqual(run.status, "completed", run.error)
        field, corrected = run.outputs["outputFieldVolume"], run.outputs["outputCorrectedVolume"]
        for node in (field, corrected):
            self.assertSameGeometry(node, volume)
        self.assertTrue((slicer.util.arrayFromVolume(volume) == original).all(), "the input was modified")
        f, c = slicer.util.arrayFromVolume(field), slicer.util.arrayFromVolume(corrected)
        self.assertGreater(float(f.min()), 0.0, "a multiplicative bias field must be positive")
        changed = c != original  # the corrected voxels (inside the head) are input / field, voxel by voxel
        self.assertGreater(int(changed.sum()), 0)
        np.testing.assert_allclose(c[changed] * f[changed], original[changed], rtol=1e-3, atol=1e-3)

    def test_bad_inputs_leave_scene_unchanged(self):
        self.checkBadInputs(BrainFMBiasFieldLogic(), "outputCorrectedVolume")
