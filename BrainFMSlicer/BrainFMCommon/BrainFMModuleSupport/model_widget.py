"""The model selector of the BrainFM module panels (part of ``BrainFMWidgetBase``).

The combo box lists the best-available entry and the models of the store that can do one of the
module's tasks (text: title; item data: the model **id**, which the parameter node stores as
``modelId``). The label under it shows the selected model's format, size, heads, label scheme,
voxel size and quality, or, when there is no model, the message saying how to get one, before
Apply. *Get official BrainFM weights…* opens the authors' download page; *Add model file…* asks
for a file and runs ``brainfm models add`` in a child process (progress in the panel's progress
bar, Apply turns into Cancel meanwhile), then selects the new model.
"""
import logging
from typing import Any, Iterable, List, Optional

try:
    from slicer.i18n import tr as _
except ImportError:  # pragma: no cover - outside the Slicer application
    def _(text: str) -> str:
        return text

from BrainFMSceneLib.registry import OFFICIAL_PAGE, choice_for

FILE_FILTER = "BrainFM weights (*.pth *.pt *.safetensors);;All files (*)"


class ModelWidgetMixin:
    """Model selector behaviour; expects ``self.ui`` (``modelComboBox``, ``modelInfoLabel``,
    ``getModelButton``, ``addModelButton``, ``progressBar``), ``self.logic``, ``self._parameterNode``,
    ``self._timer`` and the base widget's ``_setProgress``/``appendLog``/``runWithErrorDisplay``."""

    # -- list ------------------------------------------------------------------------------------
    def _fillModelComboBox(self) -> None:
        """Read the model store again and fill the selector; keeps the parameter node's model id."""
        try:
            self._allModels = self.logic.allModels()
        except Exception as exc:  # noqa: BLE001 - a broken store file must not break the panel
            logging.error(f"BrainFM: cannot list the models: {exc}")
            self.appendLog(f"Cannot list the models: {exc}")
            self._allModels = []
        combo = self.ui.modelComboBox
        combo.blockSignals(True)
        combo.clear()
        for choice in self.logic.modelChoices(models=self._allModels):
            combo.addItem(choice.title, choice.id)
        p = self._parameterNode
        wanted = (p.modelId if p is not None else "") or "default"
        index = combo.findData(wanted)
        if index < 0:  # a file path, or a model removed from the store / unable to do this task
            combo.addItem(choice_for(wanted, self._allModels).title, wanted)
            index = combo.count - 1
        combo.currentIndex = index
        combo.blockSignals(False)

    def _onModelChanged(self, index: int) -> None:
        if self._parameterNode is not None and index >= 0:
            self._parameterNode.modelId = str(self.ui.modelComboBox.itemData(index))

    def currentModel(self) -> Optional[Any]:
        """The ``ModelChoice`` of the parameter node's model id (None without a parameter node)."""
        p = self._parameterNode
        return None if p is None else choice_for(p.modelId or "default", self._allModels)

    def _showModel(self, p) -> None:
        choice = self.currentModel()
        self.ui.modelInfoLabel.text = choice.details() if choice is not None else ""

    def showSupportedChoices(self, combo, supported: Iterable[str]) -> List[str]:
        """Show only the items of ``combo`` whose text is in ``supported``; returns the shown texts."""
        supported = set(supported)
        shown = []
        view, model = combo.view(), combo.model()
        for i in range(combo.count):
            text = combo.itemText(i)
            hide = text not in supported
            view.setRowHidden(i, hide)
            item = model.item(i) if hasattr(model, "item") else None
            if item is not None:
                item.setEnabled(not hide)
            if not hide:
                shown.append(text)
        return shown

    # -- get / add ---------------------------------------------------------------------------------
    def onGetOfficialWeights(self) -> None:
        """Open the authors' download page of the official BrainFM weights in the web browser."""
        import qt

        qt.QDesktopServices.openUrl(qt.QUrl(OFFICIAL_PAGE))
        self.appendLog(_("Opened {url}: download brainfm_pretrained.pth, then click 'Add model file...'.")
                       .format(url=OFFICIAL_PAGE))

    def onAddModelFile(self, path: Optional[str] = None) -> None:
        """Ask for a weights file (unless ``path`` is given) and add it to the model store."""
        if path is None:
            import qt
            import slicer

            path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Add a BrainFM model file"), "",
                                                  _(FILE_FILTER))
        if not path:
            return
        self.ui.logTextEdit.clear()
        self._setProgress(0.0, _("Adding the model file"))

        def start() -> None:
            self.logic.setupPythonRequirements(interactive=True)
            self._addJob = self.logic.addModelFile(str(path), waitForCompletion=False,
                                                   progressCallback=self.onProgress)
            self._timer.start()

        if not self.runWithErrorDisplay(_("The model file could not be added."), start):
            self._setProgress(0.0, _("Not added"))
        self._checkCanApply()

    def _pollAddJob(self) -> None:
        job = self._addJob
        if job.poll():
            return
        self._addJob = None
        self._timer.stop()
        done, failed = self._modelJobMessages(job)
        if job.status == "completed":
            self._setProgress(1.0, done.format(name=job.model.id))
            self._fillModelComboBox()
            self._selectAddedModel(job.model)
        elif job.status == "cancelled":
            self._setProgress(0.0, _("Cancelled"))
        else:
            import slicer

            self._setProgress(0.0, failed)
            slicer.util.errorDisplay(str(job.error), detailedText="\n".join(job.result.log if job.result else []))
        self._checkCanApply()

    def _modelJobMessages(self, job) -> "tuple[str, str]":
        """What the progress line says when the model job ``job`` completed (``{name}``: the new model)
        or failed."""
        return _("Added model '{name}'"), _("Not added")

    def _selectAddedModel(self, model) -> None:
        """Select a newly added model unless the best-available entry already stands for it."""
        p = self._parameterNode
        if p is None:
            return
        best = next((c for c in self._allModels if c.kind == "default"), None)
        becameDefault = best is not None and best.available and best.path == model.path
        if p.modelId in ("", "default") and becameDefault:
            return
        if self.ui.modelComboBox.findData(model.id) >= 0:
            p.modelId = model.id
            self.ui.modelComboBox.currentIndex = self.ui.modelComboBox.findData(model.id)
