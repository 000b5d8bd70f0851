"""The *Fine-tune* section of a module panel: :class:`FinetuneWidgetMixin` (before ``BrainFMWidgetBase``).

The section pairs the panel's input volume with the segmentation of ``finetuneSegmentationSelector``
(*Add pair*; the list ``finetunePairsListWidget``, *Remove*; the pairs are the parameter ``finetunePairs``, so
they are saved with the scene), and *Fine-tune* runs the logic's
``finetune()`` with the steps, model name and mode of the parameter node (``finetuneSteps``,
``finetuneModelName``, ``finetuneDecoder``: mode ``encoder`` instead of ``head``) and the panel's model as
the base. The job runs like a model file addition
(``self._addJob``): the progress bar shows it, Apply and *Fine-tune* turn into Cancel, and when it
completes the model selector is filled again with the new model selected.
"""
from typing import Any, List, Tuple

try:
    from slicer.i18n import tr as _
except ImportError:  # pragma: no cover - outside the Slicer application
    def _(text: str) -> str:
        return text

from BrainFMSceneLib._errors import InputError
from BrainFMSceneLib.finetune_job import FinetuneJob


class FinetuneWidgetMixin:
    """Fine-tune section behaviour; expects the ``BrainFMWidgetBase`` attributes, the widgets
    ``finetuneAddPairButton``, ``finetunePairsListWidget``, ``finetuneRemovePairButton``, ``finetuneButton``
    and the parameter ``finetunePairs`` (``list[tuple[vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode]]``:
    the pairs are saved with the scene)."""

    def __init__(self, parent=None) -> None:
        self._shownFinetunePairs: List[str] = []  # the list widget's lines, to refill it only on a change
        super().__init__(parent)

    def setupFinetune(self) -> None:
        """Connect the section's buttons (call from ``setup()``)."""
        self.ui.finetuneAddPairButton.connect("clicked(bool)", lambda _checked=False: self.onAddFinetunePair())
        self.ui.finetuneRemovePairButton.connect("clicked(bool)", lambda _checked=False: self.onRemoveFinetunePair())
        self.ui.finetuneButton.connect("clicked(bool)", lambda _checked=False: self.onFinetune())

    def _finetuning(self) -> bool:
        return isinstance(self._addJob, FinetuneJob) and self._addJob.running

    # -- pairs -------------------------------------------------------------------------------------
    def finetunePairs(self) -> List[Tuple[Any, Any]]:
        """The training pairs (volume, segmentation) of the parameter node whose nodes are both in the scene."""
        p = self._parameterNode
        pairs = [tuple(pair) for pair in (p.finetunePairs if p is not None else [])]
        return [(v, s) for v, s in pairs
                if v is not None and s is not None and v.GetScene() is not None and s.GetScene() is not None]

    def onAddFinetunePair(self) -> bool:
        """Add (input volume, selected segmentation) to the training pairs; False (error shown) if not added."""

        def add() -> None:
            p = self._parameterNode
            volume, segmentation = (p.inputVolume, p.finetuneSegmentation) if p is not None else (None, None)
            if volume is None:
                raise InputError(_("Select the scan as the input volume (Inputs) first."))
            if segmentation is None:
                raise InputError(_("Select the segmentation of {volume} first.").format(volume=volume.GetName()))
            pairs = self.finetunePairs()
            if any(v is volume and s is segmentation for v, s in pairs):
                raise InputError(_("This pair is already in the list."))
            p.finetunePairs = pairs + [(volume, segmentation)]  # pairs of deleted nodes leave with this write
            self._checkCanApply()

        return self.runWithErrorDisplay(_("Could not add the training pair."), add)

    def onRemoveFinetunePair(self) -> None:
        """Remove the selected training pair."""
        row = self.ui.finetunePairsListWidget.currentRow
        pairs = self.finetunePairs()
        if 0 <= row < len(pairs):
            del pairs[row]
            self._parameterNode.finetunePairs = pairs
            self._checkCanApply()

    def _listFinetunePairs(self) -> List[Tuple[Any, Any]]:
        """Fill the list widget from the parameter node (only when its lines change: a refill loses the
        selected row); returns the pairs listed."""
        pairs = self.finetunePairs()
        lines = [f"{volume.GetName()} + {segmentation.GetName()}" for volume, segmentation in pairs]
        if lines != self._shownFinetunePairs:
            widget = self.ui.finetunePairsListWidget
            widget.clear()
            for line in lines:
                widget.addItem(line)
            self._shownFinetunePairs = lines
        return pairs

    # -- run ---------------------------------------------------------------------------------------
    def onFinetune(self) -> None:
        """Start fine-tuning on the training pairs (or cancel the running fine-tuning)."""
        if self._finetuning():
            self.appendLog(_("Cancelling..."))
            self._addJob.cancel()
            return
        p = self._parameterNode
        self.ui.logTextEdit.clear()
        self._setProgress(0.0, _("Fine-tuning"))

        def start() -> None:
            self._checkCanApply()
            self.logic.setupPythonRequirements(interactive=True)
            self._addJob = self.logic.finetune(
                self.finetunePairs(), model=p.modelId or "default", steps=int(p.finetuneSteps),
                name=(p.finetuneModelName or "").strip() or None, mode="encoder" if p.finetuneDecoder else "head",
                device=p.device, waitForCompletion=False,
                progressCallback=self.onProgress)
            self._timer.start()

        if not self.runWithErrorDisplay(_("Fine-tuning could not start."), start):
            self._setProgress(0.0, _("Not started"))
        self._checkCanApply()

    def _modelJobMessages(self, job) -> "tuple[str, str]":
        if isinstance(job, FinetuneJob):
            return _("Fine-tuned model '{name}' added"), _("Fine-tuning failed")
        return super()._modelJobMessages(job)

    def _checkCanApply(self, caller=None, event=None) -> None:
        super()._checkCanApply(caller, event)
        pairs = self._listFinetunePairs()  # a loaded scene brings its pairs; a deleted node takes its pair
        button = self.ui.finetuneButton
        self.ui.finetuneRemovePairButton.enabled = bool(pairs) and not self._finetuning()
        if self._finetuning():
            stop = _("Stop the fine-tuning (no model is added).")
            self.ui.applyButton.toolTip = button.toolTip = stop
            button.text, button.enabled = _("Cancel"), True
            return
        button.text = _("Fine-tune")
        busy = (self._run is not None and self._run.running) or (self._addJob is not None and self._addJob.running)
        reason = _("Wait for the running computation to end.") if busy else (
            "" if pairs else _("Add at least one training pair (a scan and its segmentation)."))
        button.enabled = not reason
        button.toolTip = reason or _("Fine-tune the selected model on the training pairs and add it to your model store.")
