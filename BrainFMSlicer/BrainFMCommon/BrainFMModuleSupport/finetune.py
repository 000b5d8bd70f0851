"""Fine-tuning from the module logic: :class:`FinetuneLogicMixin` (part of a task module's logic).

:meth:`FinetuneLogicMixin.finetune` fine-tunes a model on pairs of a scan and its segmentation of the
scene and adds it to the model store (``BrainFMSceneLib.finetune_job.FinetuneJob``: ``brainfm finetune``,
then ``brainfm models add``, in child processes), so the new model appears in every BrainFM module's
model selector. Segments of BrainFM results keep their FreeSurfer numbers; segments of the user's own
become the new model's labels, with their names and colours.

>>> FINETUNE_STEPS
500
"""
from typing import Any, Callable, Optional, Sequence, Tuple

#: optimisation steps of a fine-tuning unless the user sets another number (the engine's default)
FINETUNE_STEPS = 500


class FinetuneLogicMixin:
    """``finetune()`` for a ``BrainFMLogicBase`` subclass (uses its ``setupPythonRequirements``,
    ``checkDevice``, ``pythonExecutable``, ``_childEnvironment`` and ``startModelJob``)."""

    def finetune(self, pairs: Sequence[Tuple[Any, Any]], *, model: str = "default", steps: int = FINETUNE_STEPS,
                 name: Optional[str] = None, mode: str = "head", device: str = "auto", waitForCompletion: bool = True,
                 progressCallback: Optional[Callable[[float, str], None]] = None) -> Any:
        """Fine-tune ``model`` on ``pairs`` of (scan, its segmentation) and add the result to the model store.

        :param pairs: ``[(vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode or vtkMRMLLabelMapVolumeNode)]``;
            never modified.
        :param model: base model (``"default"``, a name of the model store, ``"bundled"`` or a weights file).
        :param steps: optimisation steps (about a minute on a CPU for a few cases at the default).
        :param name: name of the new model in the store (default ``finetuned-<date>-<time>``).
        :param mode: ``"head"`` (a new head on the frozen network; about a minute on a CPU) or ``"encoder"``
            (the decoder trains too: better, but about 24 s per step on a 2-core CPU).
        :param device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        :param waitForCompletion: block until done (scripts; a failure is raised) or return the running job.
        :param progressCallback: ``callback(fraction, message)``.
        :return: the ``BrainFMSceneLib.finetune_job.FinetuneJob``; once completed ``job.model.id`` is the
            new model's name.
        """
        from BrainFMSceneLib.finetune_job import FinetuneJob

        self.setupPythonRequirements(interactive=False)
        self.checkDevice(device)
        job = FinetuneJob(pairs, model=model or "default", steps=steps, name=name, mode=mode, device=device,
                          python=self.pythonExecutable, base_env=self._childEnvironment())
        return self.startModelJob(job, f"BrainFM: fine-tuning '{job.name}' on {len(job.pairs)} training pair(s)",
                                  waitForCompletion=waitForCompletion, progressCallback=progressCallback)
