"""Model selection of the BrainFM modules: the choices, the check before Apply, adding a file.

:class:`ModelLogicMixin` (part of ``BrainFMLogicBase``) gives every module logic

- :meth:`~ModelLogicMixin.modelChoices`: the model selector's entries (``BrainFMSceneLib.registry.list_models``),
  only models that can do one of the module's tasks (``MODEL_TASKS``), the best-available entry first;
- :meth:`~ModelLogicMixin.checkModel`: raises, before anything starts, when no model is available
  (with the message saying how to get one) or the chosen model lacks a head the run needs;
- :meth:`~ModelLogicMixin.addModelFile`: ``brainfm models add`` in a child process (progress, cancel),
  the same as the command line;
- :func:`migrateModelParameters`: scenes saved by earlier versions stored the selector's display text
  (``modelChoice``) and a weights path (``modelPath``); they are turned into a model id.

Parameter nodes store the model **id** (``default``, a store name, ``bundled`` or a file path),
never a display text.

>>> taskNames(["seg", "t1"])
'segmentation, T1w synthesis'
"""
import os
from typing import Any, Callable, Iterable, List, Optional, Sequence

from BrainFMSceneLib._errors import InputError, ModelNotAvailableError

#: task -> words users read
TASK_LABELS = {"t1": "T1w synthesis", "t2": "T2w synthesis", "flair": "FLAIR synthesis", "ct": "CT synthesis",
               "sr": "super-resolution", "seg": "segmentation", "dist": "cortical distance maps",
               "bias": "bias-field estimation", "reg": "atlas registration", "feat": "features"}
#: display texts of the model selector of earlier versions -> model id
LEGACY_MODEL_CHOICES = {"Bundled default": "default"}
DEFAULT_MODEL_ID = "default"


def taskNames(tasks: Iterable[str]) -> str:
    """``"segmentation, T1w synthesis"`` for ``["seg", "t1"]``."""
    return ", ".join(TASK_LABELS.get(t, t) for t in tasks)


def migrateModelParameters(node: Any) -> None:
    """Give a parameter node of an earlier version a ``modelId`` (from ``modelChoice``/``modelPath``)."""
    if node is None or not hasattr(node, "GetParameter") or node.GetParameter("modelId"):
        return
    old = node.GetParameter("modelChoice")
    if not old:
        return
    path = node.GetParameter("modelPath") or ""
    if old in LEGACY_MODEL_CHOICES or path.strip() in ("", "."):
        node.SetParameter("modelId", LEGACY_MODEL_CHOICES.get(old, DEFAULT_MODEL_ID))
    else:
        node.SetParameter("modelId", path)


def _looksLikeFile(modelId: str) -> bool:
    return any(sep in modelId for sep in ("/", "\\")) or os.path.splitext(modelId)[1] in (
        ".pth", ".pt", ".safetensors", ".json")


class ModelLogicMixin:
    """Model selection for ``BrainFMLogicBase``; subclasses set ``MODEL_TASKS`` (the tasks the module can run)."""

    MODEL_TASKS: Sequence[str] = ()

    def allModels(self) -> List[Any]:
        """Every model a user can choose (``BrainFMSceneLib.registry.list_models``), best-available entry first."""
        from BrainFMSceneLib.registry import list_models

        return list_models()

    def modelChoices(self, tasks: Optional[Sequence[str]] = None, *, models: Optional[List[Any]] = None) -> List[Any]:
        """Entries of the module's model selector: the best-available entry, then the models that can do
        at least one of ``tasks`` (default: the module's ``MODEL_TASKS``)."""
        wanted = set(self.MODEL_TASKS if tasks is None else tasks)
        models = self.allModels() if models is None else models
        return [c for c in models if c.kind == "default" or not wanted or wanted.intersection(c.tasks)]

    def checkModel(self, modelId: str, tasks: Sequence[str], *, models: Optional[List[Any]] = None) -> Optional[Any]:
        """Check that ``modelId`` can run ``tasks``; returns its ``ModelChoice`` (None for a file path or
        registry id, which the engine resolves and checks itself).

        Raises :class:`ModelNotAvailableError` when there is no model (the message says how to get
        one) and :class:`InputError` when the model lacks a head the tasks need.
        """
        modelId = str(modelId or DEFAULT_MODEL_ID)
        if _looksLikeFile(modelId) or not self.brainfmInstalled():
            return None  # checked by the engine (file, SHA-256, heads) once brainfm is installed
        choice = next((c for c in (self.allModels() if models is None else models) if c.id == modelId), None)
        if choice is None:
            return None
        if not choice.available:
            raise ModelNotAvailableError(choice.message)
        missing = [t for t in tasks if not choice.supports([t])]
        if missing:
            can = [t for t in choice.tasks if t != "feat"]
            raise InputError(f"The model '{choice.title}' cannot do {taskNames(missing)}: it has no head for it "
                             f"(it can do: {taskNames(can) or 'features only'}). Choose another model.")
        return choice

    def addModelFile(self, path: str, *, name: Optional[str] = None, storage: str = "copy",
                     waitForCompletion: bool = True,
                     progressCallback: Optional[Callable[[float, str], None]] = None) -> Any:
        """Add the weights file ``path`` to the model store (``brainfm models add`` in a child process).

        :return: the ``BrainFMSceneLib.model_add.AddModelJob``; when ``waitForCompletion`` it has finished
            and its error is raised if it failed; ``job.model`` is the new ``ModelChoice``.
        """
        from BrainFMSceneLib.model_add import AddModelJob

        self.setupPythonRequirements(interactive=False)
        job = AddModelJob(path, name=name, storage=storage, python=self.pythonExecutable,
                          base_env=self._childEnvironment())
        return self.startModelJob(job, f"BrainFM: adding {os.path.basename(str(path))} to the model store",
                                  waitForCompletion=waitForCompletion, progressCallback=progressCallback)

    def startModelJob(self, job: Any, message: str, *, waitForCompletion: bool = True,
                      progressCallback: Optional[Callable[[float, str], None]] = None) -> Any:
        """Start ``job`` (a job that ends with a model added to the store: ``AddModelJob``, ``FinetuneJob``)
        with its progress and log connected, after logging ``message``; with ``waitForCompletion`` wait
        for it and raise its error if it failed. Returns ``job``."""
        if progressCallback is not None:
            job.progress.connect(progressCallback)
        job.log.connect(self.log)
        self.log(message)
        job.start()
        if waitForCompletion:
            job.wait().raise_if_failed()
            self.log(f"BrainFM: added model '{job.model.id}'")
        return job
