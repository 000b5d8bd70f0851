"""BrainFM Synthesis: synthesize a T1w, T2w, FLAIR or CT image from a brain scan of any contrast.

Console example (Slicer Python console)::

    volume = slicer.util.loadVolume("/data/flair.nii.gz")
    logic = slicer.util.getModuleLogic("BrainFMSynthesis")
    run = logic.process(volume, contrast="T1w", superResolution=True, device="auto")
    slicer.util.setSliceViewerLayers(background=run.outputs["outputVolume"])
"""
from typing import Annotated, Callable, Optional

import slicer
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule

import BrainFMCommon
import BrainFMModuleSupport.testing
from BrainFMCommon import QUALITY_CHOICES, BrainFMLogicBase, BrainFMRun, BrainFMWidgetBase
from BrainFMSceneLib._errors import InputError

#: contrast choice -> (task name of ``brainfm run``, output key)
CONTRASTS = {"T1w": ("t1", "synth_t1"), "T2w": ("t2", "synth_t2"), "FLAIR": ("flair", "synth_flair"),
             "CT": ("ct", "synth_ct")}
CONTRAST_CHOICES = list(CONTRASTS)
#: the method combo's entries -> ``synthMethod`` of :meth:`BrainFMSynthesisLogic.process`
METHOD_CHOICES = {"Auto": "auto", "Fitted to the scan": "fit", "Model head": "head"}


class BrainFMSynthesis(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("BrainFM Synthesis")
        self.parent.categories = [_("BrainFM")]
        self.parent.dependencies = ["BrainFMCommon"]
        self.parent.contributors = BrainFMCommon.CONTRIBUTORS
        self.parent.helpText = BrainFMCommon.helpText(
            "Synthesizes a T1-weighted, T2-weighted, FLAIR or CT image (Hounsfield units) of the same head "
            "from an MRI of any contrast or a CT, on the input grid; optionally a 1 mm super-resolved "
            "version of thick-slice inputs. Image from: Fitted to the scan keeps the model's contrast for each "
            "tissue and takes the detail from the scan itself.")
        self.parent.acknowledgementText = BrainFMCommon.ACKNOWLEDGEMENT


@parameterNodeWrapper
class BrainFMSynthesisParameterNode:
    """GUI state of the module; saved with the scene."""

    inputVolume: vtkMRMLScalarVolumeNode
    contrast: Annotated[str, Choice(CONTRAST_CHOICES)] = CONTRAST_CHOICES[0]
    superResolution: bool = False
    outputVolume: vtkMRMLScalarVolumeNode
    outputSuperResolution: vtkMRMLScalarVolumeNode
    device: str = "auto"
    quality: Annotated[str, Choice(QUALITY_CHOICES)] = QUALITY_CHOICES[0]
    method: Annotated[str, Choice(list(METHOD_CHOICES))] = "Auto"
    oneMillimeterGrid: bool = False  # results on a 1 mm grid instead of the input's (thick slices)
    allowThickSlices: bool = False  # run on slices thicker than 10 mm (refused by default)
    modelId: str = "default"  # model id: default (best available), a store name, bundled or a file path


class BrainFMSynthesisLogic(BrainFMLogicBase):
    """Contrast synthesis without the GUI (Python console, ``Slicer --python-script``).

    >>> run = BrainFMSynthesisLogic().process(volume, contrast="CT")  # doctest: +SKIP
    >>> run.outputs["outputVolume"].GetAttribute("BrainFM.Units")  # doctest: +SKIP
    'HU'
    """

    OUTPUTS = {"outputVolume": "synth_t1", "outputSuperResolution": "superres"}
    #: tasks this module can run (its model selector lists the models that can do one of them)
    MODEL_TASKS = ("t1", "t2", "flair", "ct", "sr")

    def getParameterNode(self):
        return BrainFMSynthesisParameterNode(super().getParameterNode())

    def process(self, inputVolume, *, contrast: str = "T1w", superResolution: bool = False, outputVolume=None,
                outputSuperResolution=None, device: str = "auto", quality: str = "full", model: str = "default",
                synthMethod: str = "auto", outputFrame: str = "input",
                allowThickSlices: bool = False, waitForCompletion: bool = True,
                progressCallback: Optional[Callable[[float, str], None]] = None) -> BrainFMRun:
        """Synthesize ``contrast`` from ``inputVolume`` on the input grid (or on a 1 mm grid).

        :param inputVolume: ``vtkMRMLScalarVolumeNode`` (3D, single component). Never modified.
        :param contrast: ``"T1w"``, ``"T2w"``, ``"FLAIR"`` (intensities in [0, 1]) or ``"CT"`` (HU).
        :param superResolution: also compute the super-resolved input (``outputSuperResolution``).
        :param outputVolume: volume node to fill; None creates a new one.
        :param outputSuperResolution: volume node for the super-resolved input; None creates one
            when ``superResolution`` is True.
        :param device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        :param quality: ``"full"`` or ``"fast"`` (less GPU memory).
        :param model: ``"default"`` (the best available model), a name of the model store
            (``brainfm models list``), ``"bundled"`` or a weights file path.
        :param synthMethod: ``"auto"`` (default: fitted to the scan whenever the model's labels are refined
            to the scan, as they are for models on a grid coarser than 1 mm), ``"fit"`` (the model's contrast
            for each tissue, the scan's own detail; needs a segmentation head) or ``"head"`` (the model's
            image). Super-resolution always comes from the model. The run's ``summary.json`` and log name
            the method used.
        :param outputFrame: ``"input"`` (the images on the input volume's grid) or ``"1mm"`` (on a 1 mm grid
            over the head: a 1 mm synthetic image from a thick-slice scan).
        :param allowThickSlices: run on slices thicker than 10 mm, which are refused by default (too little of
            the anatomy survives slices that thick for reliable results).
        :param waitForCompletion: block until done (scripts) or return the running run at once (GUI).
        :param progressCallback: ``callback(fraction, message)``.
        :return: the :class:`BrainFMRun`; ``run.outputs`` maps the parameter names above to nodes.
        """
        if contrast not in CONTRASTS:
            raise InputError(f"Unknown contrast {contrast!r}; choose one of {', '.join(CONTRAST_CHOICES)}.")
        task, key = CONTRASTS[contrast]
        outputs = {"outputVolume": outputVolume}
        if superResolution:
            outputs["outputSuperResolution"] = outputSuperResolution
        return self.run(inputVolume, tasks=(task, "sr") if superResolution else (task,), outputs=outputs,
                        create=("outputVolume", "outputSuperResolution"),
                        keys={"outputVolume": key, "outputSuperResolution": "superres"},
                        device=device, quality=quality, model=model, synthMethod=synthMethod, outputFrame=outputFrame,
                        allowThickSlices=allowThickSlices,
                        waitForCompletion=waitForCompletion, progressCallback=progressCallback)


class BrainFMSynthesisWidget(BrainFMWidgetBase):
    logicClass = BrainFMSynthesisLogic

    def outputNodes(self, p):
        return {"outputVolume": p.outputVolume,
                "outputSuperResolution": p.outputSuperResolution if p.superResolution else None}

    def requiredTasks(self, p) -> tuple:
        task = CONTRASTS.get(p.contrast, ("t1", ""))[0]
        return (task, "sr") if p.superResolution else (task,)

    def updateWidgets(self, p) -> None:
        # offer only the contrasts (and super-resolution) the selected model has heads for
        model = self.currentModel()
        tasks = set(model.tasks) if model is not None and model.tasks else set(self.logic.MODEL_TASKS)
        shown = self.showSupportedChoices(self.ui.contrastComboBox,
                                          [c for c, (task, _key) in CONTRASTS.items() if task in tasks])
        if shown and p.contrast not in shown:
            p.contrast = shown[0]
        self.ui.superResolutionCheckBox.enabled = "sr" in tasks
        if p.superResolution and "sr" not in tasks:
            p.superResolution = False
        self.ui.outputSuperResolutionSelector.enabled = p.superResolution

    def startRun(self, p) -> BrainFMRun:
        return self.logic.process(
            p.inputVolume, contrast=p.contrast, superResolution=p.superResolution, outputVolume=p.outputVolume,
            outputSuperResolution=p.outputSuperResolution, device=p.device, quality=p.quality,
            model=p.modelId or "default", synthMethod=METHOD_CHOICES.get(p.method, "auto"),
            **self.gridOptions(p),
            waitForCompletion=False, progressCallback=self.onProgress)

    def showResults(self, run: BrainFMRun) -> None:
        BrainFMWidgetBase.showResults(self, run)
        slicer.util.setSliceViewerLayers(background=run.outputs.get("outputVolume"),
                                         foreground=run.inputVolume, foregroundOpacity=0.0,
                                         fit=True)


class BrainFMSynthesisTest(BrainFMModuleSupport.testing.BrainFMTestBase):
    """Whole path on CPU with a tiny random-weight model: export, child process, import."""

    heads = {"T1": 1, "T2": 1, "FLAIR": 1, "CT": 1, "high_res_residual": 1}

    def runTest(self):
        self.runSteps(self.test_synthesis, self.test_bad_inputs_leave_scene_unchanged)

    def test_synthesis(self):
        volume = self.makeInputVolume()
        existing = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "existingOutput")
        run = BrainFMSynthesisLogic().process(volume, contrast="T2w", superResolution=True, outputVolume=existing,
                                              device="cpu", model=self.tinyModel())
        self.assertEqual(run.status, "completed", run.error)
        self.assertIs(run.outputs["outputVolume"], existing)  # filled in place, not replaced
        self.assertSameGeometry(existing, volume)
        self.assertSameGeometry(run.outputs["outputSuperResolution"], volume)
        values = slicer.util.arrayFromVolume(existing)
        self.assertTrue((values == values).all(), "NaN in the synthesized image")
        self.assertGreater(float(values.max() - values.min()), 0.0)
        with self.assertRaises(InputError):
            BrainFMSynthesisLogic().process(volume, contrast="PD")

    def test_bad_inputs_leave_scene_unchanged(self):
        self.checkBadInputs(BrainFMSynthesisLogic(), "outputVolume")
