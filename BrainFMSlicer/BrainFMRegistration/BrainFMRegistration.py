"""BrainFM Registration: dense registration of a brain scan of any contrast to the atlas.

Console example (Slicer Python console)::

    volume = slicer.util.loadVolume("/data/t1.nii.gz")
    logic = slicer.util.getModuleLogic("BrainFMRegistration")
    run = logic.process(volume, atlasPath="/data/gca.mgz", outputAtlasVolume=None, device="auto")
    transform = run.outputs["outputTransform"]   # grid transform, subject point -> atlas point (RAS mm)
"""
import pathlib
from typing import Annotated, Callable, Optional

import numpy as np
import slicer
import vtk
from slicer import vtkMRMLGridTransformNode, vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule

import BrainFMCommon
import BrainFMModuleSupport.testing
from BrainFMCommon import QUALITY_CHOICES, BrainFMLogicBase, BrainFMRun, BrainFMWidgetBase
from BrainFMSceneLib.volume_files import export_volume_node


def atlasOrNone(path) -> Optional[str]:
    """``None`` for an empty path (``pathlib.Path()`` is ``"."``), else the path as text."""
    text = str(path or "").strip()
    return None if text in ("", ".") else text


class BrainFMRegistration(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("BrainFM Registration")
        self.parent.categories = [_("BrainFM")]
        self.parent.dependencies = ["BrainFMCommon"]
        self.parent.contributors = BrainFMCommon.CONTRIBUTORS
        self.parent.helpText = BrainFMCommon.helpText(
            "Registers a brain MRI of any contrast (or a CT) to the atlas: the network predicts, for every voxel, "
            "its atlas coordinates, or (Map from: Fit to the segmentation) the model's segmentation of the scan is "
            "carried onto its segmentation of the atlas. Outputs a dense grid transform (RAS mm), the atlas warped "
            "onto the input and the input resampled into the atlas.")
        self.parent.acknowledgementText = BrainFMCommon.ACKNOWLEDGEMENT


#: the method combo's entries -> ``regMethod`` of :meth:`BrainFMRegistrationLogic.process`
METHOD_CHOICES = {"Auto": "auto", "Fit to the segmentation": "fit", "Model head": "head"}


@parameterNodeWrapper
class BrainFMRegistrationParameterNode:
    """GUI state of the module; saved with the scene."""

    inputVolume: vtkMRMLScalarVolumeNode
    atlasPath: pathlib.Path
    outputTransform: vtkMRMLGridTransformNode
    outputAtlasVolume: vtkMRMLScalarVolumeNode
    outputResampledVolume: vtkMRMLScalarVolumeNode
    device: str = "auto"
    quality: Annotated[str, Choice(QUALITY_CHOICES)] = QUALITY_CHOICES[0]
    method: Annotated[str, Choice(list(METHOD_CHOICES))] = "Auto"
    oneMillimeterGrid: bool = False  # results on a 1 mm grid instead of the input's (thick slices)
    allowThickSlices: bool = False  # run on slices thicker than 10 mm (refused by default)
    modelId: str = "default"  # model id: default (best available), a store name, bundled or a file path


class BrainFMRegistrationLogic(BrainFMLogicBase):
    """Atlas registration without the GUI (Python console, ``Slicer --python-script``).

    >>> run = BrainFMRegistrationLogic().process(volume, atlasPath="gca.mgz")  # doctest: +SKIP
    >>> run.outputs["outputTransform"].GetTransformFromParent().TransformPoint((0, 0, 0))  # doctest: +SKIP
    """

    OUTPUTS = {"outputTransform": "reg_displacement", "outputAtlasVolume": "atlas_warped",
               "outputResampledVolume": "subject_in_atlas"}
    #: tasks this module can run (its model selector lists the models that can do one of them)
    MODEL_TASKS = ("reg",)

    def getParameterNode(self):
        return BrainFMRegistrationParameterNode(super().getParameterNode())

    def process(self, inputVolume, *, outputTransform=None, outputAtlasVolume=None, outputResampledVolume=None,
                atlasPath=None, device: str = "auto", quality: str = "full", model: str = "default",
                regMethod: str = "auto", outputFrame: str = "input",
                allowThickSlices: bool = False, waitForCompletion: bool = True,
                progressCallback: Optional[Callable[[float, str], None]] = None) -> BrainFMRun:
        """Register ``inputVolume`` to the atlas.

        :param inputVolume: ``vtkMRMLScalarVolumeNode`` (3D, single component). Never modified.
        :param outputTransform: grid transform node (FromParent: subject point -> atlas point, RAS mm);
            None creates one. Put the atlas volume under it to see the atlas on the subject.
        :param outputAtlasVolume: volume node for the atlas warped onto the input grid; None: not produced.
        :param outputResampledVolume: volume node for the input on the atlas grid; None: not produced.
        :param atlasPath: atlas image file; None uses the model's atlas (``BRAINFM_ATLAS`` or the registry;
            when that cannot be downloaded, a fitted registration uses the MNI ICBM152 2009a template).
        :param device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        :param quality: ``"full"`` or ``"fast"`` (less GPU memory).
        :param model: ``"default"`` (the best available model), a name of the model store
            (``brainfm models list``), ``"bundled"`` or a weights file path.
        :param regMethod: ``"auto"`` (default: the model's registration head, or a map fitted to the
            segmentations when the model's measured quality says its head is not reliable), ``"fit"``
            (the map that carries the model's segmentation of the scan onto its segmentation of the
            atlas) or ``"head"``. The run's ``summary.json`` names the method used.
        :param outputFrame: ``"input"`` (results on the input volume's grid) or ``"1mm"`` (on a 1 mm grid
            over the head, finer than a thick-slice input).
        :param allowThickSlices: run on slices thicker than 10 mm, which are refused by default (too little of
            the anatomy survives slices that thick for reliable results).
        :param waitForCompletion: block until done (scripts) or return the running run at once (GUI).
        :param progressCallback: ``callback(fraction, message)``.
        :return: the :class:`BrainFMRun`; ``run.outputs`` maps the parameter names above to nodes.
        """
        return self.run(inputVolume, tasks=("reg",), regMethod=regMethod, outputFrame=outputFrame,
                        allowThickSlices=allowThickSlices,
                        outputs={"outputTransform": outputTransform, "outputAtlasVolume": outputAtlasVolume,
                                 "outputResampledVolume": outputResampledVolume},
                        create=("outputTransform",), atlas=atlasOrNone(atlasPath), device=device, quality=quality,
                        model=model, waitForCompletion=waitForCompletion, progressCallback=progressCallback)


class BrainFMRegistrationWidget(BrainFMWidgetBase):
    logicClass = BrainFMRegistrationLogic

    def outputNodes(self, p):
        return {"outputTransform": p.outputTransform, "outputAtlasVolume": p.outputAtlasVolume,
                "outputResampledVolume": p.outputResampledVolume}

    def startRun(self, p) -> BrainFMRun:
        return self.logic.process(
            p.inputVolume, outputTransform=p.outputTransform, outputAtlasVolume=p.outputAtlasVolume,
            outputResampledVolume=p.outputResampledVolume, atlasPath=atlasOrNone(p.atlasPath), device=p.device,
            quality=p.quality, model=p.modelId or "default", regMethod=METHOD_CHOICES.get(p.method, "auto"),
            **self.gridOptions(p),
            waitForCompletion=False, progressCallback=self.onProgress)

    def showResults(self, run: BrainFMRun) -> None:
        BrainFMWidgetBase.showResults(self, run)
        atlas = run.outputs.get("outputAtlasVolume")
        slicer.util.setSliceViewerLayers(background=run.inputVolume, foreground=atlas,
                                         foregroundOpacity=0.5 if atlas else 0.0, fit=True)


class BrainFMRegistrationTest(BrainFMModuleSupport.testing.BrainFMTestBase):
    """Whole path on CPU with a tiny random-weight model and a synthetic atlas file."""

    heads = {"registration": 3}

    def runTest(self):
        self.runSteps(self.test_registration, self.test_fit_needs_a_segmentation_head,
                      self.test_bad_inputs_leave_scene_unchanged)

    def test_registration(self):
        volume = self.makeInputVolume()
        atlasNode = self.makeInputVolume("testAtlas")
        atlasPath = export_volume_node(atlasNode, pathlib.Path(self.tinyModel()).parent / "atlas.nrrd")
        slicer.mrmlScene.RemoveNode(atlasNode)
        run = BrainFMRegistrationLogic().process(
            volume, outputAtlasVolume=slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "warpedAtlas"),
            atlasPath=atlasPath, device="cpu", model=self.tinyModel())
        self.assertEqual(run.status, "completed", run.error)
        transform = run.outputs["outputTransform"]
        self.assertTrue(transform.IsA("vtkMRMLGridTransformNode"))
        self.assertSameGeometry(run.outputs["outputAtlasVolume"], volume)
        center = np.array(volume.GetImageData().GetDimensions()) / 2.0
        ijkToRas = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(ijkToRas)
        point = np.array(ijkToRas.MultiplyPoint([*center, 1.0])[:3])
        moved = np.array(transform.GetTransformFromParent().TransformPoint(point))
        self.assertTrue(np.isfinite(moved).all())
        self.assertGreater(float(np.linalg.norm(moved - point)), 1e-3, "the transform does not move the point")
        self.delayDisplay(f"Registration moved {point.round(1)} to {moved.round(1)}")

    def test_fit_needs_a_segmentation_head(self):
        """'Fit to the segmentation' with a model that has no segmentation head: the engine refuses and
        says why, and the scene is left as it was."""
        volume = self.makeInputVolume()
        atlasNode = self.makeInputVolume("testAtlas")
        atlasPath = export_volume_node(atlasNode, pathlib.Path(self.tinyModel()).parent / "atlas.nrrd")
        slicer.mrmlScene.RemoveNode(atlasNode)
        before = self.nodeIDs()
        with self.assertRaises(Exception) as ctx:
            BrainFMRegistrationLogic().process(volume, atlasPath=atlasPath, device="cpu", model=self.tinyModel(),
                                               regMethod="fit")
        self.assertIn("no segmentation head", str(ctx.exception))
        self.assertEqual(self.nodeIDs(), before, "a refused run changed the scene")

    def test_bad_inputs_leave_scene_unchanged(self):
        self.checkBadInputs(BrainFMRegistrationLogic(), "outputTransform")
