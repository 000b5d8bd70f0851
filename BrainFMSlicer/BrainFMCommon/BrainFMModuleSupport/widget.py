"""The widget base of the BrainFM task modules: :class:`BrainFMWidgetBase`.

Each task module's widget derives from it and adds only what is its own (its outputs, the tasks
its settings need, how its results are shown). The base builds the panel from the module's ``.ui``
file on top of the Slicer scripted-module template and runs the common section that every module
has (the widgets of :data:`~BrainFMModuleSupport.ui_contract.COMMON_WIDGETS`):

- the parameter node (saved with the scene) bound to the widgets, the device combo box,
- the model selector with *Get official BrainFM weights…* and *Add model file…*
  (:class:`~BrainFMModuleSupport.model_widget.ModelWidgetMixin`),
- the Apply button: disabled with the reason as tooltip while the input, outputs or model are not
  usable (:mod:`~BrainFMModuleSupport.checks`), Cancel while a run or a model file addition is in
  progress; a ``QTimer`` polls the running :class:`~BrainFMModuleSupport.run.BrainFMRun`,
- the progress bar and log, diagnostics (refresh, copy to the clipboard) and the dependency installer.

Subclasses set ``logicClass`` (a :class:`~BrainFMModuleSupport.logic.BrainFMLogicBase` subclass) and
implement :meth:`~BrainFMWidgetBase.outputNodes` and :meth:`~BrainFMWidgetBase.startRun`::

    class BrainFMBiasFieldWidget(BrainFMWidgetBase):
        logicClass = BrainFMBiasFieldLogic

        def outputNodes(self, p):
            return {"outputCorrectedVolume": p.outputCorrectedVolume, "outputFieldVolume": p.outputFieldVolume}

        def startRun(self, p):
            return self.logic.process(
                p.inputVolume, outputFieldVolume=p.outputFieldVolume, outputCorrectedVolume=p.outputCorrectedVolume,
                device=p.device, quality=p.quality, model=p.modelId or "default",
                waitForCompletion=False, progressCallback=self.onProgress)

Needs the Slicer application (``qt``, ``slicer.ScriptedLoadableModule``). Torch and ``brainfm`` are
never imported here: the engine runs in a child ``PythonSlicer`` process.
"""
import logging
from typing import Callable, Dict, Optional

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from BrainFMSceneLib._errors import BrainFMError
from BrainFMModuleSupport.checks import checkInputVolume, checkOutputNodes
from BrainFMModuleSupport.model_widget import ModelWidgetMixin
from BrainFMModuleSupport.run import BrainFMRun


class BrainFMWidgetBase(ModelWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Template widget + the common section. Subclasses set ``logicClass`` and implement
    :meth:`outputNodes` (role -> node, for the checks) and :meth:`startRun` (returns a BrainFMRun)."""

    logicClass = None
    pollIntervalMs = 200

    def __init__(self, parent=None) -> None:
        # Attributes first: without a parent, ScriptedLoadableModuleWidget.__init__ calls setup() at once.
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run: Optional[BrainFMRun] = None
        self._addJob = None  # BrainFMSceneLib.model_add.AddModelJob while a model file is being added
        self._allModels: list = []  # every ModelChoice (BrainFMSceneLib.registry.list_models)
        self._timer = qt.QTimer()
        self._timer.setInterval(self.pollIntervalMs)
        self._timer.connect("timeout()", self._onPoll)
        ScriptedLoadableModuleWidget.__init__(self, parent)

    # -- template plumbing -------------------------------------------------------------------
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath(f"UI/{self.moduleName}.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = self.logicClass()
        self.logic.logCallback = self.appendLog
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.copyDiagnosticsButton.connect("clicked(bool)", self.onCopyDiagnostics)
        self.ui.refreshDiagnosticsButton.connect("clicked(bool)", self.onRefreshDiagnostics)
        self.ui.installButton.connect("clicked(bool)", self.onInstall)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self._onDeviceChanged)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self._onModelChanged)
        self.ui.getModelButton.connect("clicked(bool)", self.onGetOfficialWeights)
        self.ui.addModelButton.connect("clicked(bool)", lambda checked=False: self.onAddModelFile())
        self._fillDeviceComboBox()
        self.ui.progressBar.setValue(0)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._run is not None and self._run.running:
            self._run.cancel()
        if self._addJob is not None:
            self._addJob.cancel()
        self._timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()  # also lists the models again (one may have been added elsewhere)

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        if self._run is not None and self._run.running:  # its results would land in the next scene
            self._run.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._selectDevice(self._parameterNode.device)
            self._fillModelComboBox()
            self._checkCanApply()

    def _showEmptyPaths(self) -> None:
        """Show an unset ``pathlib.Path`` parameter (``"."``) as an empty field. Called from :meth:`_checkCanApply`,
        as the wrapper's GUI update (an earlier observer of the same event) writes ``"."`` back on every change."""
        for widget in self.ui.__dict__.values():
            if getattr(widget, "className", lambda: "")() == "ctkPathLineEdit" and widget.currentPath in (".", "./"):
                widget.currentPath = ""

    # -- state ---------------------------------------------------------------------------------
    def outputNodes(self, p) -> Dict[str, object]:
        """Role -> selected output node (may be None). Overridden by every task module."""
        return {}

    def startRun(self, p) -> BrainFMRun:
        """Start the module's logic with ``waitForCompletion=False``; overridden by every task module."""
        raise NotImplementedError

    @staticmethod
    def gridOptions(p) -> Dict[str, object]:
        """The logic's grid options from the parameter node's checkboxes under Advanced: ``outputFrame``
        (*Results grid: 1 mm*: ``1mm``, else ``input``) and ``allowThickSlices`` (*Allow slices thicker
        than 10 mm*)."""
        return {"outputFrame": "1mm" if p.oneMillimeterGrid else "input",
                "allowThickSlices": bool(p.allowThickSlices)}

    def requiredTasks(self, p) -> tuple:
        """Tasks the current settings need from the model (default: the module's ``MODEL_TASKS``)."""
        return tuple(self.logic.MODEL_TASKS)

    def showResults(self, run: BrainFMRun) -> None:
        """Write created nodes back into the parameter node (extended by the modules to show them).

        Uses the logic's parameter node: the user may have left the module while the run went on.
        """
        p = self._parameterNode or self.logic.getParameterNode()
        for role, node in run.outputs.items():
            if node is not None and role in p.allParameters:
                setattr(p, role, node)

    def updateWidgets(self, p) -> None:
        """Enable/disable module-specific widgets from the parameter node (optional override)."""

    def _checkCanApply(self, caller=None, event=None) -> None:
        p = self._parameterNode
        running = self._run is not None and self._run.running
        adding = self._addJob is not None and self._addJob.running
        if p is not None:
            self._showEmptyPaths()
            self._showModel(p)
            self.updateWidgets(p)
        self.ui.addModelButton.enabled = not running and not adding
        if adding:
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop adding the model file (nothing is added).")
            self.ui.applyButton.enabled = True
            return
        if running:
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop the running computation (new output nodes are removed).")
            self.ui.applyButton.enabled = True
            return
        self.ui.applyButton.text = _("Apply")
        reason = ""
        try:
            if p is None:
                reason = _("No parameter node.")
            else:
                checkInputVolume(p.inputVolume)
                checkOutputNodes(p.inputVolume, self.outputNodes(p))
                self.logic.checkModel(p.modelId, self.requiredTasks(p), models=self._allModels)
        except BrainFMError as e:
            reason = str(e)
        self.ui.applyButton.enabled = not reason
        self.ui.applyButton.toolTip = reason or _("Run BrainFM on the input volume.")

    # -- device combo (filled at runtime; not bound through SlicerParameterName) -----------------
    def _fillDeviceComboBox(self) -> None:
        combo = self.ui.deviceComboBox
        combo.blockSignals(True)
        combo.clear()
        for label, value in self.logic.deviceChoices():
            combo.addItem(label, value)
        combo.blockSignals(False)

    def _selectDevice(self, device: str) -> None:
        combo = self.ui.deviceComboBox
        index = combo.findData(device or "auto")
        if index < 0:  # e.g. a scene saved on a machine with more GPUs
            combo.addItem(device, device)
            index = combo.count - 1
        combo.blockSignals(True)
        combo.currentIndex = index
        combo.blockSignals(False)

    def _onDeviceChanged(self, index: int) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.device = str(self.ui.deviceComboBox.itemData(index))

    # -- run -------------------------------------------------------------------------------------
    def onApplyButton(self) -> None:
        if self._addJob is not None and self._addJob.running:
            self.appendLog(_("Cancelling..."))
            self._addJob.cancel()
            return
        if self._run is not None and self._run.running:
            self.appendLog(_("Cancelling..."))
            self._run.cancel()
            return
        self.ui.logTextEdit.clear()
        self._setProgress(0.0, _("Starting"))

        def start() -> None:
            self.logic.setupPythonRequirements(interactive=True)
            self._run = self.startRun(self._parameterNode)
            self._timer.start()

        self.runWithErrorDisplay(_("BrainFM could not start."), start)
        if self._run is None:
            self._setProgress(0.0, _("Not started"))
        self._checkCanApply()

    def _onPoll(self) -> None:
        if self._addJob is not None:
            self._pollAddJob()
            return
        run = self._run
        if run is None:
            self._timer.stop()
            return
        if run.poll():
            return
        self._timer.stop()
        self._run = None
        if run.status == "completed":
            done = _("Done in {seconds:.1f} s").format(seconds=run.elapsedSeconds)
            if run.warnings:  # said where the user looks; each one is in the log below
                n = len(run.warnings)
                done += " " + (_("(1 warning: see the log)") if n == 1 else _("({n} warnings: see the log)").format(n=n))
            self._setProgress(1.0, done)
            self.showResults(run)
        elif run.status == "cancelled":
            self._setProgress(0.0, _("Cancelled"))
        else:
            self._setProgress(0.0, _("Failed"))
            slicer.util.errorDisplay(str(run.error), detailedText=run.logText())
        self._checkCanApply()

    def _setProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.setValue(int(round(100 * max(0.0, min(1.0, fraction)))))
        self.ui.progressBar.setFormat(f"%p%  {message}" if message else "%p%")

    def onProgress(self, fraction: float, message: str) -> None:
        """Progress callback given to the logic (called on the main thread by ``run.poll``)."""
        self._setProgress(fraction, message)

    def appendLog(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(str(text))

    def runWithErrorDisplay(self, message: str, func: Callable[[], None], *, waitCursor: bool = False) -> bool:
        """Call ``func``; if it raises, show ``message`` and the error, log it and return False.

        ``slicer.util.tryWithErrorDisplay`` shows the error and then *re-raises* it, so code after
        its ``with`` block would not run; this wrapper lets the caller restore the GUI state.
        """
        try:
            with slicer.util.tryWithErrorDisplay(message, waitCursor=waitCursor):
                func()
            return True
        except Exception as e:  # noqa: BLE001 - already shown to the user by tryWithErrorDisplay
            logging.error(f"{message} {e}")
            self.appendLog(f"{message} {e}")
            return False

    # -- diagnostics / install ---------------------------------------------------------------------
    def onRefreshDiagnostics(self) -> bool:
        return self.runWithErrorDisplay(
            _("Collecting diagnostics failed."), waitCursor=True,
            func=lambda: self.ui.diagnosticsTextEdit.setPlainText(
                self.logic.diagnosticsText(modelId=self._parameterNode.modelId if self._parameterNode else None)))

    def onCopyDiagnostics(self) -> None:
        if not self.ui.diagnosticsTextEdit.toPlainText() and not self.onRefreshDiagnostics():
            return
        qt.QApplication.clipboard().setText(self.ui.diagnosticsTextEdit.toPlainText())
        slicer.util.showStatusMessage(_("BrainFM diagnostics copied to the clipboard."), 3000)

    def onInstall(self) -> None:
        def install() -> None:
            self.logic.setupPythonRequirements(interactive=True, force=True)
            self._fillDeviceComboBox()
            if self._parameterNode:
                self._selectDevice(self._parameterNode.device)

        self.runWithErrorDisplay(_("Installing the BrainFM dependencies failed."), install)
