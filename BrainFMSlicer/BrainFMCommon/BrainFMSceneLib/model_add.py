"""Add a weights file to the local model store from the GUI, off the GUI thread.

:class:`AddModelJob` runs ``python -m brainfm models add FILE --progress machine`` in a child process
(the same code path as the command line: strict loading, SHA-256, copy into the store), reports its
progress (hashing and copying a 1 GB file takes a while), can be cancelled and, when it completed,
gives the new model as a :class:`~BrainFMSceneLib.registry.ModelChoice` (from the child's
``BRAINFM_MODEL <json>`` line). The GUI polls it from a ``QTimer``; scripts call :meth:`wait`.

>>> add_model_command("/data/brainfm_pretrained.pth", python="python")
['python', '-m', 'brainfm', 'models', 'add', '/data/brainfm_pretrained.pth', '--progress', 'machine']
>>> parse_added_model(['BRAINFM_MODEL {"name": "official", "format": "brainfm-official"}']).id
'official'
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Union

from BrainFMSceneLib._errors import BrainFMError, InputError
from BrainFMSceneLib.process import ProcessResult, ProcessRunner, default_python
from BrainFMSceneLib.registry import ModelChoice, choice_from_dict

MODEL_PREFIX = "BRAINFM_MODEL"
STORAGE = ("copy", "link", "reference")


def add_model_command(path: Union[str, Path], *, name: Optional[str] = None, storage: str = "copy",
                      python: Optional[str] = None) -> List[str]:
    """``[python, -m, brainfm, models, add, FILE, ...]`` as an argument list (never a shell string)."""
    if storage not in STORAGE:
        raise InputError(f"storage must be one of {', '.join(STORAGE)}, got {storage!r}")
    args = [python or default_python(), "-m", "brainfm", "models", "add", str(path)]
    if name:
        args += ["--name", str(name)]
    if storage != "copy":
        args.append(f"--{storage}")
    return args + ["--progress", "machine"]


def parse_added_model(lines: Sequence[str]) -> Optional[ModelChoice]:
    """The model reported by a ``BRAINFM_MODEL <json>`` line of the child's output (None if absent)."""
    for line in reversed(list(lines)):
        text = line.strip()
        if text.startswith(MODEL_PREFIX + " "):
            try:
                return choice_from_dict(json.loads(text[len(MODEL_PREFIX) + 1:]))
            except (ValueError, TypeError, AttributeError):
                return None
    return None


class AddModelJob:
    """``brainfm models add`` in a child process.

    :param path: the weights file chosen by the user (never modified).
    :param name: name in the store (default: ``official``, ``brainid`` or the native model's name).
    :param storage: ``copy`` (default), ``link`` or ``reference``.
    :param base_env: environment of the child (in Slicer: the startup environment).
    Signals: ``progress(fraction, message)`` and ``log(text)`` of the underlying
    :class:`~BrainFMSceneLib.process.ProcessRunner`, emitted on the thread that calls :meth:`poll`.
    """

    def __init__(self, path: Union[str, Path], *, name: Optional[str] = None, storage: str = "copy",
                 python: Optional[str] = None, base_env: Optional[Mapping[str, str]] = None,
                 env_updates: Optional[Mapping[str, str]] = None) -> None:
        self.path = Path(path).expanduser()
        self.args = add_model_command(self.path, name=name, storage=storage, python=python)
        self.env_updates = dict(env_updates or {})
        self.runner = ProcessRunner(base_env=base_env)
        self.progress = self.runner.progress
        self.log = self.runner.log
        self.status = "not started"
        self.model: Optional[ModelChoice] = None
        self.error: Optional[BrainFMError] = None
        self.result: Optional[ProcessResult] = None

    @property
    def running(self) -> bool:
        return self.status == "running"

    def start(self) -> "AddModelJob":
        """Check the path and start the child (raises :class:`InputError` for a missing file)."""
        if not self.path.is_file():
            raise InputError(f"Model file not found: {self.path}")
        self.runner.start(self.args, env_updates=self.env_updates)
        self.status = "running"
        return self

    def poll(self) -> bool:
        """Deliver progress/log received so far; True while the child runs."""
        if self.running:
            for event in self.runner.poll():
                if isinstance(event, ProcessResult):
                    self._finish(event)
        return self.running

    def wait(self, timeout: Optional[float] = None) -> "AddModelJob":
        """Block until the child ended; returns self (check ``status``/``error``)."""
        if self.running:
            self._finish(self.runner.wait(timeout=timeout))
        return self

    def cancel(self) -> None:
        """Stop the child: its temporary copy is removed and nothing is added."""
        if self.running:
            self.runner.cancel()

    def raise_if_failed(self) -> "AddModelJob":
        """Raise the error (a ``brainfm.errors`` type) unless the model was added."""
        if self.status != "completed":
            raise self.error or BrainFMError(f"adding {self.path.name} did not complete ({self.status})")
        return self

    def _finish(self, result: ProcessResult) -> None:
        if self.result is not None:
            return
        self.result = result
        if result.ok:
            self.model = parse_added_model(result.log)
            self.status = "completed" if self.model is not None else "failed"
            if self.model is None:
                self.error = BrainFMError("brainfm models add did not report the added model; output:\n"
                                          + "\n".join(result.log[-10:]))
        else:
            self.status = "cancelled" if result.cancelled else "failed"
            self.error = result.exception()
        self.runner.cleanup()
