"""BrainFM Segmentation: whole-brain anatomical segmentation of any brain MRI or CT.

Console example (Slicer Python console)::

    volume = slicer.util.loadVolume("/data/t2.nii.gz")
    logic = slicer.util.getModuleLogic("BrainFMSegmentation")
    result = logic.process(volume, device="auto", quality="full")
    print(result.outputs["outputSegmentation"].GetName(), result.elapsedSeconds)

Fine-tuning on scans and segmentations of the scene (the new model is added to the model store)::

    job = logic.finetune([(volume, segmentation)], steps=500, name="my-labels")
    print(job.model.id)
"""
from typing import Annotated, Callable, Optional

import slicer
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule

import BrainFMCommon
from BrainFMCommon import (FINETUNE_STEPS, QUALITY_CHOICES, BrainFMLogicBase, BrainFMRun, BrainFMWidgetBase,
                           FinetuneLogicMixin, FinetuneWidgetMixin, InputError)
import BrainFMModuleSupport.testing


#: the method combo's entries -> ``segMethod`` of :meth:`BrainFMSegmentationLogic.process`
METHOD_CHOICES = {"Auto": "auto", "Refined to the scan": "fit", "Model head": "head"}


class BrainFMSegmentation(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("BrainFM Segmentation")
        self.parent.categories = [_("BrainFM")]
        self.parent.dependencies = ["BrainFMCommon"]
        self.parent.contributors = BrainFMCommon.CONTRIBUTORS
        self.parent.helpText = BrainFMCommon.helpText(
            "Segments the brain anatomy (FreeSurfer structures: cortex, white matter, deep grey matter, "
            "ventricles, cerebellum, brainstem, CSF) of an MRI of any contrast or a CT, and measures "
            "the structure volumes. Labels from: Refined to the scan fits one intensity model per tissue to the scan, "
            "with the model's probabilities as the prior, so the outlines follow the scan's own edges. "
            "Fine-tune: pairs of a scan and its segmentation (BrainFM's, possibly corrected, or labels of your own) "
            "teach the selected model your labels; the new model is added to your model store and offered in "
            "every BrainFM module.")
        self.parent.acknowledgementText = BrainFMCommon.ACKNOWLEDGEMENT


@parameterNodeWrapper
class BrainFMSegmentationParameterNode:
    """GUI state of the module; saved with the scene."""

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    outputLabelmap: vtkMRMLLabelMapVolumeNode
    outputTable: vtkMRMLTableNode
    device: str = "auto"
    quality: Annotated[str, Choice(QUALITY_CHOICES)] = QUALITY_CHOICES[0]
    method: Annotated[str, Choice(list(METHOD_CHOICES))] = "Auto"
    oneMillimeterGrid: bool = False  # results on a 1 mm grid instead of the input's (thick slices)
    allowThickSlices: bool = False  # run on slices thicker than 10 mm (refused by default)
    modelId: str = "default"  # model id: default (best available), a store name, bundled or a file path
    finetuneSegmentation: vtkMRMLSegmentationNode  # labels of the input volume, for the next training pair
    finetunePairs: list[tuple[vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode]]  # (scan, its labels) to train on
    finetuneSteps: int = FINETUNE_STEPS
    finetuneModelName: str = ""  # empty: finetuned-<date>-<time>
    finetuneDecoder: bool = False  # train the decoder too (mode encoder): better, much slower on a CPU


class BrainFMSegmentationLogic(FinetuneLogicMixin, BrainFMLogicBase):
    """Segmentation without the GUI (Python console, ``Slicer --python-script``).

    >>> logic = BrainFMSegmentationLogic()  # doctest: +SKIP
    >>> result = logic.process(volume, outputLabelmap=labelNode)  # doctest: +SKIP
    >>> result.outputs["outputSegmentation"].GetSegmentation().GetNumberOfSegments() > 0  # doctest: +SKIP
    True
    """

    #: output role -> output key of ``brainfm run`` (see BrainFMSceneLib.results)
    OUTPUTS = {"outputSegmentation": "seg", "outputLabelmap": "seg_labelmap", "outputTable": "seg_volumes"}
    #: tasks this module can run (its model selector lists the models that can do one of them)
    MODEL_TASKS = ("seg",)

    def getParameterNode(self):
        return BrainFMSegmentationParameterNode(super().getParameterNode())

    def process(self, inputVolume, *, outputSegmentation=None, outputLabelmap=None, outputTable=None,
                device: str = "auto", quality: str = "full", model: str = "default",
                segMethod: str = "auto", outputFrame: str = "input",
                allowThickSlices: bool = False, waitForCompletion: bool = True,
                progressCallback: Optional[Callable[[float, str], None]] = None) -> BrainFMRun:
        """Segment ``inputVolume`` (an MRI of any contrast, or a CT) into FreeSurfer structures.

        :param inputVolume: ``vtkMRMLScalarVolumeNode`` (3D, single component). Never modified.
        :param outputSegmentation: segmentation node to fill; None creates a new one.
        :param outputLabelmap: label map node to fill with FreeSurfer numbers; None: not produced.
        :param outputTable: table node for the structure volumes (mm3); None: not produced.
        :param device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        :param quality: ``"full"`` or ``"fast"`` (less GPU memory).
        :param model: ``"default"`` (the best available model), a name of the model store
            (``brainfm models list``), ``"bundled"`` or a weights file path.
        :param segMethod: ``"auto"`` (default: the model's labels refined to the scan's intensities for
            models that work on a grid coarser than 1 mm, except on CT), ``"fit"`` (refined: one Gaussian
            per tissue fitted to the scan, with the model's probabilities as the prior) or ``"head"`` (the
            model's labels). The run's ``summary.json`` and log name the method used.
        :param outputFrame: ``"input"`` (the labels on the input volume's grid) or ``"1mm"`` (on a 1 mm grid
            over the head: finer outlines for thick-slice scans; the structure volumes are measured there).
        :param allowThickSlices: run on slices thicker than 10 mm, which are refused by default (too little of
            the anatomy survives slices that thick for reliable results).
        :param waitForCompletion: block until done (scripts) or return the running run at once (GUI).
        :param progressCallback: ``callback(fraction, message)``.
        :return: the :class:`BrainFMRun`; ``run.outputs`` maps the parameter names above to nodes.
        """
        return self.run(inputVolume, tasks=("seg",), segMethod=segMethod, outputFrame=outputFrame,
                        allowThickSlices=allowThickSlices,
                        outputs={"outputSegmentation": outputSegmentation, "outputLabelmap": outputLabelmap,
                                 "outputTable": outputTable},
                        create=("outputSegmentation",), device=device, quality=quality, model=model,
                        waitForCompletion=waitForCompletion, progressCallback=progressCallback)


class BrainFMSegmentationWidget(FinetuneWidgetMixin, BrainFMWidgetBase):
    """The panel: segmentation (the common Apply section), *Batch case* + Load, and the *Fine-tune* section
    (training pairs of the input volume and a segmentation; the job runs like a model addition: progress bar,
    Apply and Fine-tune turn into Cancel, the model selector shows the new model when it is done)."""

    logicClass = BrainFMSegmentationLogic

    def outputNodes(self, p):
        return {"outputSegmentation": p.outputSegmentation, "outputLabelmap": p.outputLabelmap,
                "outputTable": p.outputTable}

    def updateWidgets(self, p) -> None:
        # keep the 3D button on the selected segmentation (the selector can change it at any time)
        self.ui.segmentationShow3DButton.setSegmentationNode(p.outputSegmentation)

    def startRun(self, p) -> BrainFMRun:
        return self.logic.process(
            p.inputVolume, outputSegmentation=p.outputSegmentation, outputLabelmap=p.outputLabelmap,
            outputTable=p.outputTable, device=p.device, quality=p.quality,
            model=p.modelId or "default", segMethod=METHOD_CHOICES.get(p.method, "auto"),
            **self.gridOptions(p),
            waitForCompletion=False, progressCallback=self.onProgress)

    def setup(self) -> None:
        BrainFMWidgetBase.setup(self)
        self.ui.loadCaseButton.connect("clicked(bool)", lambda _checked=False: self.onLoadCase())
        self.setupFinetune()

    def onLoadCase(self) -> bool:
        """Load the case folder of the *Batch case* field (:meth:`BrainFMLogicBase.loadResults`) and show it
        as a run's results are shown: the scan in the views, the segmentation over it, the nodes selected."""
        folder = str(self.ui.caseFolderPathLineEdit.currentPath or "").strip()

        def load() -> None:
            if not folder:
                raise InputError("Choose a case folder of a brainfm batch first (out/<case>).")
            case = self.logic.loadResults(folder)
            p = self._parameterNode or self.logic.getParameterNode()
            p.inputVolume = case.input_node
            nodes = case.results.nodes
            if nodes.get("seg") is not None:
                p.outputSegmentation = nodes["seg"]
            if nodes.get("seg_volumes") is not None:
                p.outputTable = nodes["seg_volumes"]
            self._show(case.input_node, nodes.get("seg"))

        return self.runWithErrorDisplay(_("Could not load the case."), load)

    def showResults(self, run: BrainFMRun) -> None:
        BrainFMWidgetBase.showResults(self, run)
        self._show(run.inputVolume, run.outputs.get("outputSegmentation"))

    def _show(self, volume, segmentation) -> None:
        """The scan in the slice views, its segmentation (or none) behind the 3D button."""
        self.ui.segmentationShow3DButton.setSegmentationNode(segmentation)
        slicer.util.setSliceViewerLayers(background=volume, fit=True)


class BrainFMSegmentationTest(BrainFMModuleSupport.testing.BrainFMTestBase):
    """Whole path on CPU with a tiny random-weight model: export, child process, import."""

    heads = {"segmentation": 33}

    def runTest(self):
        self.runSteps(self.test_segmentation,
                      self.test_bad_inputs_leave_scene_unchanged,
                      self.test_cancel_leaves_scene_unchanged,
                      self.test_finetune_adds_a_model)

    def test_segmentation(self):
        volume = self.makeInputVolume()
        labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "existingLabels")
        table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "existingTable")
        run = BrainFMSegmentationLogic().process(volume, outputLabelmap=labelmap, outputTable=table,
                                                 device="cpu", model=self.tinyModel())
        self.assertEqual(run.status, "completed", run.error)
        segmentation = run.outputs["outputSegmentation"]
        self.assertIsNotNone(segmentation)
        self.assertIs(run.outputs["outputLabelmap"], labelmap)  # existing node filled, not replaced
        self.assertSameGeometry(labelmap, volume)
        names = [segmentation.GetSegmentation().GetNthSegment(i).GetName()
                 for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
        self.assertTrue(names, "no segment was created")
        self.assertTrue(all(not n.startswith("Segment_") for n in names), names)  # names from the label table
        self.assertGreater(table.GetNumberOfRows(), 0)
        self.delayDisplay(f"Segmentation: {len(names)} segments, e.g. {names[:3]}")

    def test_bad_inputs_leave_scene_unchanged(self):
        self.checkBadInputs(BrainFMSegmentationLogic(), "outputSegmentation")

    def test_cancel_leaves_scene_unchanged(self):
        self.checkCancel(BrainFMSegmentationLogic())

    def test_finetune_adds_a_model(self):
        self.checkFinetune(BrainFMSegmentationLogic())
