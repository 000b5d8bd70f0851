"""Fine-tune a model on training pairs of the scene, off the GUI thread, and add it to the model store.

:class:`FinetuneJob` exports the pairs (:func:`~BrainFMSceneLib.training_pairs.export_training_pairs`)
into a private temporary folder, runs ``python -m brainfm finetune ... --progress machine`` in a child
process, then ``brainfm models add`` (:class:`~BrainFMSceneLib.model_add.AddModelJob`) on the written
model, so the fine-tuned model appears in every BrainFM module's model selector. It has the interface
of ``AddModelJob`` (``start``, ``poll``, ``wait``, ``cancel``, ``raise_if_failed``, ``status``,
``progress``/``log`` signals, ``error``, ``model``); the temporary folder is removed at the end
(success, failure or cancel). The input nodes are never modified.

>>> finetune_command("/tmp/data", "/tmp/run", model="default", steps=3, name="my-model", python="python")
['python', '-m', 'brainfm', 'finetune', '--model', 'default', '--data', '/tmp/data', '--out', '/tmp/run',
 '--label-scheme', 'fs33', '--steps', '3', '--name', 'my-model', '--progress', 'machine']
>>> parse_finetuned_model(['BRAINFM_PROGRESS 1.0 done', '{"model": "/r/model/m.safetensors", "step": 3}'])
'/r/model/m.safetensors'
>>> try:
...     check_model_name("hippocampus v2")
... except InputError as exc:
...     print(exc)
The model name 'hippocampus v2' is not allowed: use letters, digits, '.', '_' and '-' (up to 64 characters, starting with a letter or digit).
"""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

from BrainFMSceneLib._errors import BrainFMError, InputError, ResourceError
from BrainFMSceneLib.model_add import AddModelJob
from BrainFMSceneLib.process import ProcessResult, ProcessRunner, default_python
from BrainFMSceneLib.registry import ModelChoice
from BrainFMSceneLib.signals import Signal
from BrainFMSceneLib.training_pairs import FS33, ExportedPairs, export_training_pairs
from BrainFMSceneLib.volume_files import private_temp_dir

#: the engine's model-store names (``brainfm.models.store.NAME_RE`` / ``RESERVED_NAMES``)
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RESERVED_NAMES = ("default", "bundled")
DEFAULT_STEPS = 500
#: what a fine-tuning trains (``brainfm finetune --mode``): ``head`` (a new head on the frozen network:
#: a minute on a CPU) or ``encoder`` (the decoder too: better, about 24 s per step on a 2-core CPU)
MODES = ("head", "encoder")
#: share of the progress bar for the export and for the fine-tuning (the rest: adding the model)
_EXPORT_END, _TRAIN_END = 0.02, 0.95


def check_model_name(name: str) -> str:
    """``name`` when the model store accepts it, else :class:`InputError` saying what is allowed."""
    text = str(name or "").strip()
    if not MODEL_NAME_RE.match(text) or text in RESERVED_NAMES:
        raise InputError(f"The model name {text!r} is not allowed: use letters, digits, '.', '_' and '-' "
                         "(up to 64 characters, starting with a letter or digit).")
    return text


def check_mode(mode: str) -> str:
    """``mode`` when it is one of :data:`MODES`, else :class:`InputError` naming them."""
    if mode not in MODES:
        raise InputError(f"Unknown fine-tuning mode {mode!r}: {' or '.join(MODES)}.")
    return mode


def default_model_name() -> str:
    """``finetuned-<date>-<time>``: a fresh model name."""
    return time.strftime("finetuned-%Y%m%d-%H%M%S")


def finetune_command(data_dir: Union[str, Path], out_dir: Union[str, Path], *, model: str = "default",
                     steps: int = DEFAULT_STEPS, name: str, label_scheme: str = FS33, mode: str = "head",
                     device: Optional[str] = None, python: Optional[str] = None) -> List[str]:
    """``[python, -m, brainfm, finetune, ...]`` as an argument list (never a shell string).

    :param data_dir: folder with ``images/`` and ``labels/`` (:func:`export_training_pairs`).
    :param out_dir: run folder; the model is written to ``<out_dir>/model/<name>.safetensors``.
    :param label_scheme: ``fs33`` or the path of a colour table of the user's own labels.
    :param mode: one of :data:`MODES`.
    :param device: ``cpu``, ``cuda``, ``cuda:N``; None: the engine's default (``auto``).
    """
    if int(steps) < 1:
        raise InputError(f"The number of fine-tuning steps must be at least 1, got {steps}.")
    args = [python or default_python(), "-m", "brainfm", "finetune", "--model", str(model or "default"),
            "--data", str(data_dir), "--out", str(out_dir), "--label-scheme", str(label_scheme),
            "--steps", str(int(steps)), "--name", check_model_name(name)]
    if check_mode(mode) != "head":
        args += ["--mode", mode]
    if device and device != "auto":
        args += ["--device", str(device)]
    return args + ["--progress", "machine"]


def parse_finetuned_model(lines: Sequence[str]) -> Optional[str]:
    """The model file of the ``{"model": ...}`` JSON line ``brainfm finetune`` prints at the end (None if absent)."""
    for line in reversed(list(lines)):
        text = line.strip()
        if text.startswith("{") and '"model"' in text:
            try:
                data = json.loads(text)
            except ValueError:
                continue
            if isinstance(data, dict) and data.get("model") not in (None, "None"):
                return str(data["model"])
    return None


def _stored_names() -> List[str]:
    """Names of the models of the store (empty without the brainfm package)."""
    from BrainFMSceneLib.registry import list_models

    return [c.id for c in list_models() if c.kind == "store"]


class FinetuneJob:
    """Fine-tune on ``pairs`` of (scalar volume node, segmentation or labelmap node), then add the model.

    :param model: base model (``default``, a store name, ``bundled`` or a weights file).
    :param steps: optimisation steps; :param name: name of the new model (default: :func:`default_model_name`).
    :param mode: what is trained, one of :data:`MODES`.
    :param base_env: environment of the children (in Slicer: the startup environment);
        :param env_updates: extra variables (e.g. ``BRAINFM_HOME``).
    Signals: ``progress(fraction, message)`` over export, fine-tuning and adding; ``log(text)``.
    """

    def __init__(self, pairs: Sequence[Tuple[Any, Any]], *, model: str = "default", steps: int = DEFAULT_STEPS,
                 name: Optional[str] = None, mode: str = "head", device: Optional[str] = None,
                 python: Optional[str] = None, base_env: Optional[Mapping[str, str]] = None,
                 env_updates: Optional[Mapping[str, str]] = None, keep_temp: bool = False) -> None:
        self.pairs = [tuple(p) for p in pairs]
        self.mode = check_mode(mode)
        self.model_spec, self.steps, self.device, self.python = model or "default", int(steps), device, python
        self.name = (name or "").strip() or default_model_name()
        self.base_env = dict(base_env) if base_env is not None else None
        self.env_updates = dict(env_updates or {})
        self.keep_temp = keep_temp
        self.progress = Signal("float, str")
        self.log = Signal("str")
        self.status = "not started"
        self.model: Optional[ModelChoice] = None
        self.error: Optional[BrainFMError] = None
        self.result: Optional[ProcessResult] = None
        self.exported: Optional[ExportedPairs] = None
        self.temp_dir: Optional[Path] = None
        self.runner: Optional[ProcessRunner] = None
        self.add_job: Optional[AddModelJob] = None
        self._cancelled = False

    @property
    def running(self) -> bool:
        return self.status == "running"

    def start(self) -> "FinetuneJob":
        """Check the name, export the pairs and start fine-tuning. Raises :class:`InputError` (bad name,
        name taken, bad pairs) before anything runs; nothing is left behind then."""
        check_model_name(self.name)
        if self.name in _stored_names():
            raise InputError(f"Your model store already has a model called {self.name!r}: choose another name.")
        self.temp_dir = private_temp_dir("BrainFM-finetune-")
        try:
            self.progress.emit(0.0, "Exporting the training pairs")
            self.exported = export_training_pairs(self.pairs, self.temp_dir / "data")
            self.log.emit(f"Training pairs: {len(self.exported.cases)}; labels: "
                          + ", ".join(label.name for label in self.exported.labels))
            args = finetune_command(self.exported.data_dir, self.temp_dir / "run", model=self.model_spec,
                                    steps=self.steps, name=self.name, label_scheme=self.exported.label_scheme,
                                    mode=self.mode, device=self.device, python=self.python)
            self.runner = ProcessRunner(base_env=self.base_env)
            self.runner.log.connect(self.log.emit)
            self.runner.progress.connect(
                lambda f, m: self.progress.emit(_EXPORT_END + (_TRAIN_END - _EXPORT_END) * f, m))
            self.progress.emit(_EXPORT_END, "Starting the fine-tuning")
            self.runner.start(args, env_updates=self.env_updates, cwd=self.temp_dir)
        except OSError as exc:  # e.g. the interpreter is missing
            self._remove_temp()
            raise ResourceError(f"Could not start the fine-tuning process ({exc}).") from exc
        except BaseException:
            self._remove_temp()
            raise
        self.status = "running"
        return self

    def poll(self) -> bool:
        """Deliver progress/log received so far (GUI timer); True while fine-tuning or adding runs."""
        if self.running and self.add_job is None and self.runner is not None:
            for event in self.runner.poll():
                if isinstance(event, ProcessResult):
                    self._trained(event)
        if self.running and self.add_job is not None and not self.add_job.poll():
            self._added()
        return self.running

    def wait(self, timeout: Optional[float] = None) -> "FinetuneJob":
        """Block until both children ended; returns self (check ``status``/``error``)."""
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> Optional[float]:
            return None if deadline is None else max(0.01, deadline - time.monotonic())

        if self.running and self.add_job is None and self.runner is not None:
            self._trained(self.runner.wait(timeout=left()))
        if self.running and self.add_job is not None:
            self.add_job.wait(timeout=left())
            self._added()
        return self

    def cancel(self) -> None:
        """Stop the running child (its process tree): nothing is added, the temporary folder is removed."""
        if not self.running:
            return
        self._cancelled = True
        if self.add_job is not None:
            self.add_job.cancel()
        elif self.runner is not None:
            self.runner.cancel()

    def raise_if_failed(self) -> "FinetuneJob":
        """Raise the error (a ``brainfm.errors`` type) unless the model was fine-tuned and added."""
        if self.status != "completed":
            raise self.error or BrainFMError(f"fine-tuning {self.name!r} did not complete ({self.status})")
        return self

    def logText(self) -> str:
        """The children's output so far (for error details)."""
        return "\n".join(self.result.log if self.result is not None else [])

    # -- stages -----------------------------------------------------------------------------------
    def _trained(self, result: ProcessResult) -> None:
        self.result = result
        path = parse_finetuned_model(result.log) if result.ok else None
        if not result.ok or self._cancelled or path is None:
            error = result.exception() if not result.ok else None
            if error is None and path is None and not self._cancelled:
                error = BrainFMError("brainfm finetune did not report the written model; output:\n"
                                     + "\n".join(result.log[-10:]))
            self._end("cancelled" if result.cancelled or self._cancelled else "failed", error)
            return
        self.progress.emit(_TRAIN_END, "Adding the model to your model store")
        self.add_job = AddModelJob(path, name=self.name, python=self.python, base_env=self.base_env,
                                   env_updates=self.env_updates)
        self.add_job.log.connect(self.log.emit)
        self.add_job.progress.connect(lambda f, m: self.progress.emit(_TRAIN_END + (1 - _TRAIN_END) * f, m))
        try:
            self.add_job.start()
        except (BrainFMError, OSError) as exc:
            self._end("failed", exc if isinstance(exc, BrainFMError) else ResourceError(str(exc)))

    def _added(self) -> None:
        job = self.add_job
        self.result = job.result
        if job.status == "completed" and not self._cancelled:
            self.model = job.model
            self.progress.emit(1.0, f"Added model '{job.model.id}'")
            self._end("completed", None)
        else:
            self._end("cancelled" if job.status == "cancelled" or self._cancelled else "failed", job.error)

    def _end(self, status: str, error: Optional[BaseException]) -> None:
        self.status = status
        if status == "cancelled" and error is None:
            from BrainFMSceneLib._errors import CancelledError

            error = CancelledError("Fine-tuning cancelled by the user.")
        self.error = error  # type: ignore[assignment]
        if self.runner is not None:
            self.runner.cleanup()
        self._remove_temp()

    def _remove_temp(self) -> None:
        if self.temp_dir is not None and not self.keep_temp:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None
