"""Helpers of the in-Slicer self-tests of the BrainFM modules (``<Module>Test`` classes).

Each module test builds a tiny random-weight native checkpoint (``brainfm.models``, a few
seconds on CPU), a small synthetic head volume with an oblique grid, runs the whole path
(export, child ``PythonSlicer -m brainfm run``, import) with ``waitForCompletion=True`` on the
CPU and checks the output nodes. Without the ``brainfm`` package in Slicer's Python the tests
are skipped with a message (install it from a module's Advanced > Install button first).
"""
import math
import os
import shutil
import tempfile
import unittest
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

from BrainFMSceneLib._errors import CancelledError, InputError

#: small oblique grid: 1.2 x 1.0 x 1.1 mm voxels rotated 15 degrees about S
_ANGLE = math.radians(15.0)
TEST_IJK_TO_RAS = np.array([
    [1.2 * math.cos(_ANGLE), -1.0 * math.sin(_ANGLE), 0.0, -18.0],
    [1.2 * math.sin(_ANGLE), 1.0 * math.cos(_ANGLE), 0.0, -20.0],
    [0.0, 0.0, 1.1, -14.0],
    [0.0, 0.0, 0.0, 1.0],
])


def blobHead(shape=(28, 32, 26), seed: int = 0) -> np.ndarray:
    """Smooth head-like image ``[i, j, k]``: ellipsoid brain, bright core, dark ventricles."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt((x / 0.8) ** 2 + (y / 0.85) ** 2 + (z / 0.75) ** 2)
    img = np.where(r < 1.0, 60.0, 0.0) + np.where(r < 0.7, 50.0, 0.0) - np.where(r < 0.2, 80.0, 0.0)
    return (np.clip(img, 0, None) + rng.normal(0, 2, shape) * (r < 1.0)).astype(np.float32)


class BrainFMTestBase(ScriptedLoadableModuleTest):
    """Base of the module tests. Subclasses set ``heads`` (head name -> channels) of the tiny model."""

    heads: Dict[str, int] = {}
    _modelDir: Optional[Path] = None

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runSteps(self, *steps: Callable[[], None]) -> None:
        """Run test methods as unittest would, for the ``runTest()`` entry point.

        Slicer's Reload-and-Test button and ``slicer.selfTests`` call ``<Module>Test().runTest()``
        directly, outside a unittest runner: nothing calls ``setUp`` per test or ``tearDownClass``, and a
        ``unittest.SkipTest`` would surface as a failure. Here each step gets ``setUp``, a skip (no
        brainfm/torch in Slicer's Python) is reported and the temporary model folder is removed.
        """
        try:
            for step in steps:
                self.setUp()
                try:
                    step()
                except unittest.SkipTest as e:
                    self.delayDisplay(f"Skipped {getattr(step, '__name__', step)}: {e}")
        finally:
            type(self).tearDownClass()

    @classmethod
    def tearDownClass(cls):
        if cls._modelDir is not None:
            shutil.rmtree(cls._modelDir, ignore_errors=True)
            cls._modelDir = None

    # -- fixtures ----------------------------------------------------------------------------------
    def makeInputVolume(self, name: str = "testHead"):
        """A scalar volume node with :func:`blobHead` voxels on the oblique :data:`TEST_IJK_TO_RAS` grid."""
        array_kji = np.ascontiguousarray(blobHead().transpose(2, 1, 0))
        return slicer.util.addVolumeFromArray(array_kji, ijkToRAS=TEST_IJK_TO_RAS, name=name)

    def tinyModel(self) -> str:
        """Path of a tiny random-weight native model with this test's heads (built once per class)."""
        cls = type(self)
        if cls._modelDir is None:
            try:
                import torch
                from brainfm.models import BrainFMNet, ModelConfig, save_native
            except ImportError as e:
                self.skipTest(f"brainfm/torch not installed in Slicer's Python ({e}); use Advanced > Install.")
            torch.manual_seed(0)
            net = BrainFMNet(ModelConfig(f_maps=4, num_levels=3, num_groups=2, heads=dict(self.heads)))
            cls._modelDir = Path(tempfile.mkdtemp(prefix="BrainFMTest-"))
            save_native(net, cls._modelDir / "tiny.safetensors", info={"name": "tiny-test", "version": "0"})
        return str(cls._modelDir / "tiny.safetensors")

    # -- checks --------------------------------------------------------------------------------------
    def assertSameGeometry(self, node, reference, tol: float = 1e-4):
        """Same voxel grid in world coordinates (IJK->RAS matrix and dimensions)."""
        self.assertIsNotNone(node.GetImageData(), f"{node.GetName()} has no voxels")
        self.assertEqual(node.GetImageData().GetDimensions(), reference.GetImageData().GetDimensions())
        a, b = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(a)
        reference.GetIJKToRASMatrix(b)
        np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(a), slicer.util.arrayFromVTKMatrix(b), atol=tol)

    def nodeIDs(self):
        scene = slicer.mrmlScene
        return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}

    def checkBadInputs(self, logic, outputRole: str):
        """Label map / vector / output==input inputs raise InputError and add no node to the scene."""
        volume = self.makeInputVolume("bad-input-source")
        label = slicer.util.addVolumeFromArray(np.ones((6, 6, 6), np.int16), name="labels",
                                               nodeClassName="vtkMRMLLabelMapVolumeNode")
        rgb = slicer.util.addVolumeFromArray(np.ones((6, 6, 6, 3), np.uint8), name="rgb",
                                             nodeClassName="vtkMRMLVectorVolumeNode")
        before = self.nodeIDs()
        for bad, kwargs, words in ((None, {}, "No input"), (label, {}, "label map"), (rgb, {}, "components"),
                                   (volume, {outputRole: volume}, "never overwrites")):
            with self.assertRaises(InputError) as ctx:
                logic.process(bad, device="cpu", **kwargs)
            self.assertIn(words, str(ctx.exception))
        self.assertEqual(self.nodeIDs(), before, "a rejected run changed the scene")

    def checkCancel(self, logic):
        """A run cancelled right after its start ends as 'cancelled' and creates no node."""
        volume = self.makeInputVolume("cancel-source")
        before = self.nodeIDs()
        run = logic.process(volume, device="cpu", model=self.tinyModel(), waitForCompletion=False)
        run.cancel()
        run.wait()
        self.assertEqual(run.status, "cancelled", run.error)
        self.assertIsInstance(run.error, CancelledError)
        self.assertEqual(self.nodeIDs(), before, "a cancelled run left nodes in the scene")

    def checkFinetune(self, logic):
        """Fine-tuning on a pair with a label of the user's own adds a model to a private model store (the
        user's store is not touched), adds no node to the scene and leaves the pair's nodes as they were."""
        model = self.tinyModel()  # first: skips without brainfm in Slicer's Python
        volume = self.makeInputVolume("finetune-scan")
        shell = (slicer.util.arrayFromVolume(volume) > 80).astype(np.int16)  # the bright shell of the test head
        labelmap = slicer.util.addVolumeFromArray(shell, ijkToRAS=TEST_IJK_TO_RAS, name="finetune-labels",
                                                  nodeClassName="vtkMRMLLabelMapVolumeNode")
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "finetune-segmentation")
        self.assertTrue(slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap,
                                                                                                  segmentation))
        segmentation.GetSegmentation().GetNthSegment(0).SetName("Shell")  # a label of the user's own
        voxels = slicer.util.arrayFromVolume(volume).copy()
        before = self.nodeIDs()
        store = tempfile.mkdtemp(prefix="BrainFMTest-store-")
        startup = logic._childEnvironment
        logic._childEnvironment = lambda: {**(startup() or os.environ), "BRAINFM_HOME": store}
        previous = os.environ.get("BRAINFM_HOME")
        os.environ["BRAINFM_HOME"] = store  # the store this process lists: the children's
        try:
            job = logic.finetune([(volume, segmentation)], model=model, steps=2, name="selftest-shell",
                                 device="cpu")
            self.assertEqual(job.status, "completed", job.error)
            self.assertEqual(job.model.id, "selftest-shell")
            self.assertTrue(any(f.suffix == ".safetensors" for f in Path(store).rglob("*")), "no weights in the store")
        finally:
            if previous is None:
                os.environ.pop("BRAINFM_HOME", None)
            else:
                os.environ["BRAINFM_HOME"] = previous
            shutil.rmtree(store, ignore_errors=True)
        self.assertEqual(self.nodeIDs(), before, "fine-tuning changed the scene")
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), voxels)
        self.assertEqual(segmentation.GetSegmentation().GetNumberOfSegments(), 1)
        self.delayDisplay("Fine-tuning: model 'selftest-shell' added to a private model store")
