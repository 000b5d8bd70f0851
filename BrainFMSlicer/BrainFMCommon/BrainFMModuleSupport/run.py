"""What a module's ``process()`` returns: one BrainFM run, with its outputs named by module role.

:class:`BrainFMRun` wraps ``BrainFMSceneLib.job.BrainFMJob`` (export, ``brainfm run`` child process,
import) and adds what the modules and scripts need: a ``status`` (``running``, ``completed``,
``failed``, ``cancelled``), ``outputs`` keyed by the parameter names of the module
(``outputSegmentation``, ``outputVolume``...), the error as a ``brainfm.errors`` instance with an
actionable message, the elapsed time and the child's log. The GUI polls it from a ``QTimer``
(:meth:`BrainFMRun.poll`); scripts block in :meth:`BrainFMRun.wait`.

Usage (in Slicer)::

    run = slicer.util.getModuleLogic("BrainFMSegmentation").process(volume, waitForCompletion=False)
    while run.poll():
        slicer.app.processEvents()
    print(run.status, run.outputs, round(run.elapsedSeconds, 1))
"""
import logging
import time
from typing import Any, Callable, Dict, Optional

from BrainFMSceneLib._errors import BrainFMError, CancelledError, ResourceError

ProgressCallback = Callable[[float, str], None]
#: kept for scripts that imported it; :func:`outOfMemoryHint` adapts the advice to the run's settings
OOM_HINT = " Try Advanced > Quality: Fast, or Advanced > Device: CPU."


class BrainFMRun:
    """State of one module run.

    :param job: a ``BrainFMSceneLib.job.BrainFMJob`` (not started yet).
    :param roles: module role -> output key of ``brainfm run`` (``{"outputVolume": "synth_t2"}``).
    """

    def __init__(self, job: Any, roles: Dict[str, str], *,
                 progressCallback: Optional[ProgressCallback] = None,
                 logCallback: Optional[Callable[[str], None]] = None,
                 finishedCallback: Optional[Callable[["BrainFMRun"], None]] = None) -> None:
        self.job = job
        self.roles = dict(roles)
        self._logCallback = logCallback
        self._finishedCallback = finishedCallback
        self.status = "running"
        self.outputs: Dict[str, Any] = {}
        self.error: Optional[BaseException] = None
        self.outcome = None
        self.elapsedSeconds = 0.0
        self._start = time.monotonic()
        if progressCallback is not None:
            job.progress.connect(progressCallback)
        job.log.connect(self._log)

    # -- state ---------------------------------------------------------------------------------
    @property
    def inputVolume(self) -> Any:
        """The volume node the run was made from (never modified)."""
        return self.job.input_node

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def warnings(self) -> list:
        """The warnings of a completed run (the case's ``summary.json``), e.g. an anisotropic input or a
        segmentation check; also in the log as ``brainfm: warning: ...`` lines. Empty otherwise."""
        imported = getattr(self.outcome, "imported", None) if self.outcome is not None else None
        return [str(w) for w in (getattr(imported, "summary", None) or {}).get("warnings", []) or []]

    def logText(self) -> str:
        """Everything the child printed (for error dialogs and bug reports)."""
        return "\n".join(self.outcome.process.log) if self.outcome is not None else ""

    # -- driving -------------------------------------------------------------------------------
    def start(self) -> "BrainFMRun":
        """Export the input and start the child process (raises ``InputError`` early)."""
        self.job.start()
        return self

    def poll(self) -> bool:
        """Deliver progress/log received so far; finish when the child ended. True while running."""
        if self.running:
            self.job.poll()
            if self.job.outcome is not None:
                self._finish(self.job.outcome)
        return self.running

    def wait(self) -> "BrainFMRun":
        """Block until the child ended and its results are imported (or the run failed)."""
        if self.running:
            self._finish(self.job.wait())
        return self

    def cancel(self) -> None:
        """Stop the child process tree; the run ends as ``cancelled`` at the next poll/wait."""
        if self.running:
            self._log("Cancel requested: stopping the BrainFM process.")
            self.job.cancel()

    def raiseIfFailed(self) -> "BrainFMRun":
        """Raise the run's error (a ``brainfm.errors`` type) unless it completed."""
        if self.status == "cancelled":
            raise self.error if self.error is not None else CancelledError("Cancelled by the user.")
        if self.status == "failed":
            raise self.error if self.error is not None else BrainFMError("BrainFM failed.")
        return self

    # -- internals -------------------------------------------------------------------------------
    def _log(self, text: str) -> None:
        logging.info(text)
        if self._logCallback is not None:
            self._logCallback(text)

    def _finish(self, outcome: Any) -> None:
        self.outcome = outcome
        self.elapsedSeconds = time.monotonic() - self._start
        if outcome.ok:
            nodes = outcome.imported.nodes
            self.outputs = {role: nodes.get(key) for role, key in self.roles.items() if nodes.get(key) is not None}
            self.status = "completed"
        else:
            self.status = "cancelled" if outcome.process.cancelled else "failed"
            error = outcome.error if outcome.error is not None else outcome.process.exception()
            self.error = friendlyError(error, params=getattr(self.job, "params", None))
            self._log(f"{type(self.error).__name__}: {self.error}")
        if self._finishedCallback is not None:
            self._finishedCallback(self)


def outOfMemoryHint(params: Any = None) -> str:
    """What to change after running out of memory, never the setting the run already used.

    :param params: the run's ``BrainFMSceneLib.parameters.RunParameters`` (None: unknown).

    >>> from BrainFMSceneLib.parameters import RunParameters
    >>> outOfMemoryHint(RunParameters(device="auto"))
    " Try Advanced > Quality: Fast (processes the volume in tiles), or Advanced > Device: CPU (uses the computer's memory)."
    >>> outOfMemoryHint(RunParameters(device="cpu", tile_size=96))
    ' Close other programs, or crop the volume to the head (Crop Volume module) and run again.'
    """
    fast = params is not None and getattr(params, "tile_size", None) is not None
    cpu = params is not None and str(getattr(params, "device", "auto")) == "cpu"
    tips = []
    if not fast:
        tips.append("Advanced > Quality: Fast (processes the volume in tiles)")
    if not cpu:
        tips.append("Advanced > Device: CPU (uses the computer's memory)")
    if not tips:
        return " Close other programs, or crop the volume to the head (Crop Volume module) and run again."
    return " Try " + ", or ".join(tips) + "."


def friendlyError(error: Optional[BaseException], *, params: Any = None) -> BaseException:
    """Add what to change to out-of-memory errors (:func:`outOfMemoryHint`, for the run's settings).

    >>> str(friendlyError(ResourceError("CUDA out of memory")))
    "CUDA out of memory Try Advanced > Quality: Fast (processes the volume in tiles), or Advanced > Device: CPU (uses the computer's memory)."
    >>> str(friendlyError(ResourceError("device 'cuda' was requested but this torch build is CPU-only")))
    "device 'cuda' was requested but this torch build is CPU-only"
    """
    if error is None:
        return BrainFMError("BrainFM failed without an error message.")
    text = str(error)
    if isinstance(error, ResourceError) and "memory" in text.lower() and "Advanced >" not in text:
        return type(error)(text + outOfMemoryHint(params))
    return error
