"""One BrainFM run on a volume node: export -> ``python -m brainfm run`` child -> import results.

This is what the Slicer modules' logic drives: non-blocking with :meth:`BrainFMJob.poll` from a
``QTimer`` or blocking with :meth:`BrainFMJob.wait` (``waitForCompletion`` in scripts). The input
node is never modified; the temporary folder is removed at the end unless ``keep_temp``.

>>> from BrainFMSceneLib.job import BrainFMJob
>>> from BrainFMSceneLib.parameters import RunParameters
>>> job = BrainFMJob(scene, input_node, RunParameters(tasks=("seg",), device="cpu"))  # doctest: +SKIP
>>> job.progress.connect(lambda f, m: print(f"{f:.0%} {m}"))  # doctest: +SKIP
>>> outcome = job.start().wait()  # doctest: +SKIP
>>> outcome.imported.nodes["seg"].GetName()  # doctest: +SKIP
'MRHead segmentation'
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, List, Mapping, Optional

from BrainFMSceneLib._errors import InputError, ResourceError
from BrainFMSceneLib.parameters import RunParameters
from BrainFMSceneLib.process import ProcessResult, ProcessRunner, brainfm_command
from BrainFMSceneLib.results import ImportedResults, import_results
from BrainFMSceneLib.signals import Signal
from BrainFMSceneLib.volume_files import DEFAULT_EXPORT_SUFFIX, export_volume_node, safe_file_stem

_EXPORT_END, _RUN_END = 0.05, 0.95


@dataclass
class JobOutcome:
    """Process result plus the imported nodes (None when the run or the import failed)."""

    process: ProcessResult
    imported: Optional[ImportedResults] = None
    error: Optional[BaseException] = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.process.ok and self.imported is not None

    def raise_for_error(self) -> None:
        """Raise the run's or the import's error (``brainfm.errors`` types)."""
        self.process.raise_for_error()
        if self.error is not None:
            raise self.error


class BrainFMJob:
    """Run BrainFM on ``input_node`` in a child process and import the outputs.

    Signals: ``progress(fraction, message)`` (0..1 over export, run and import), ``log(text)``,
    ``finished(JobOutcome)``.

    :param params: run settings (validated at :meth:`start`).
    :param python: interpreter for the child (default ``PythonSlicer`` / ``sys.executable``).
    :param output_nodes: ``{output key: existing node}`` to fill in place.
    :param import_keys: outputs to import (default: all usual ones).
    :param base_env: environment of the child (in Slicer: the startup environment).
    :param env_updates: extra variables, e.g. ``ModelRegistry.environment_updates()`` (BRAINFM_HOME).
    """

    def __init__(self, scene: Any, input_node: Any, params: RunParameters, *, python: Optional[str] = None,
                 keep_temp: bool = False, output_nodes: Optional[Mapping[str, Any]] = None,
                 import_keys: Optional[Iterable[str]] = None, create_labelmap: bool = False,
                 base_env: Optional[Mapping[str, str]] = None,
                 env_updates: Optional[Mapping[str, str]] = None) -> None:
        self.scene = scene
        self.input_node = input_node
        self.params = params
        self.python = python
        self.output_nodes = dict(output_nodes or {})
        self.import_keys = list(import_keys) if import_keys is not None else None
        self.create_labelmap = create_labelmap
        self.env_updates = dict(env_updates or {})
        self.runner = ProcessRunner(keep_temp=keep_temp, base_env=base_env)
        self.progress = Signal("float, str")
        self.log = self.runner.log
        self.finished = Signal("JobOutcome")
        self.runner.progress.connect(
            lambda f, m: self.progress.emit(_EXPORT_END + (_RUN_END - _EXPORT_END) * f, m))
        self.outcome: Optional[JobOutcome] = None
        self.output_dir: Optional[Path] = None

    def start(self) -> "BrainFMJob":
        """Validate, export the input and start the child. Raises :class:`InputError` early."""
        ok, reason = self.params.is_valid()
        if not ok:
            raise InputError(reason)
        node = self.input_node
        if node is None or node.GetImageData() is None:
            raise InputError("Select an input volume with image data.")
        if node.IsA("vtkMRMLVectorVolumeNode") or node.GetImageData().GetNumberOfScalarComponents() != 1:
            raise InputError("The input is a color/vector volume; BrainFM needs a single-channel 3D volume.")
        if node.IsA("vtkMRMLLabelMapVolumeNode"):
            raise InputError("The input is a label map; select an image volume (MRI or CT).")
        if node in self.output_nodes.values():
            raise InputError("An output node is the input volume; choose or create another output node.")
        self.progress.emit(0.0, "Exporting the input volume")
        tmp = self.runner.temp_dir
        try:
            # named after the node: the engine's messages name their file, so they name the volume the user chose
            input_path = export_volume_node(node, tmp / f"{safe_file_stem(node.GetName())}{DEFAULT_EXPORT_SUFFIX}")
            self.output_dir = tmp / "output"
            args = brainfm_command(input_path, self.output_dir, self.params.as_arg_list(), python=self.python)
            self.progress.emit(_EXPORT_END, "Starting BrainFM")
            env = {**self.env_updates, **self.params.environment_updates()}
            self.runner.start(args, env_updates=env, cwd=tmp)
        except OSError as exc:  # e.g. the interpreter is missing
            self.runner.cleanup()
            raise ResourceError(f"Could not start the BrainFM process ({exc}).") from exc
        except BaseException:
            self.runner.cleanup()
            raise
        return self

    @property
    def running(self) -> bool:
        return self.runner.running or (self.runner.result is not None and self.outcome is None)

    def poll(self) -> List[Any]:
        """Deliver new events; imports the results once the child has ended (GUI timer)."""
        events = self.runner.poll()
        if self.runner.result is not None and self.outcome is None:
            events.append(self._complete(self.runner.result))
        return events

    def wait(self, timeout: Optional[float] = None) -> JobOutcome:
        """Block until the run and the import are done."""
        result = self.runner.wait(timeout)
        return self.outcome if self.outcome is not None else self._complete(result)

    def cancel(self) -> None:
        """Kill the child process tree; the outcome is reported as cancelled."""
        self.runner.cancel()

    def _complete(self, result: ProcessResult) -> JobOutcome:
        outcome = JobOutcome(result)
        try:
            if result.ok:
                self.progress.emit(_RUN_END, "Importing results")
                outcome.imported = import_results(
                    self.scene, self.output_dir, self.input_node, keys=self.import_keys,
                    output_nodes=self.output_nodes, create_labelmap=self.create_labelmap)
                self.progress.emit(1.0, "Done")
        except Exception as exc:  # noqa: BLE001 - reported in the outcome; the scene was rolled back
            outcome.error = exc
        finally:
            self.runner.cleanup()
        self.outcome = outcome
        self.finished.emit(outcome)
        return outcome
