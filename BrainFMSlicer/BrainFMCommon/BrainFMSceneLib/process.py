"""Qt-free runner for the ``brainfm`` child process: progress parsing, cancel, result.

The child is started with an argument *list* (never a shell string) in its own process group /
session. A reader thread turns stdout lines into events in a queue; the GUI drains it with
:meth:`ProcessRunner.poll` from a ``QTimer`` (callbacks then run on the GUI thread), scripts call
the blocking :meth:`ProcessRunner.wait`. :meth:`ProcessRunner.cancel` kills the whole process
tree (psutil when installed, else ``os.killpg`` / ``taskkill /T``).

Child protocol: ``BRAINFM_PROGRESS <fraction> <message>`` lines, ``BRAINFM_ERROR {"type": ..,
"message": ..}`` on failure, exit code 0 ok / 2 bad input / 3 model / 4 resources / 5 output not
writable (disk full, read-only, permission) / 130 cancelled.

>>> import sys
>>> from BrainFMSceneLib.process import ProcessRunner
>>> code = "print('BRAINFM_PROGRESS 0.5000 half', flush=True)"
>>> with ProcessRunner() as runner:
...     _ = runner.start([sys.executable, "-c", code])
...     result = runner.wait(timeout=60)
>>> result.ok, result.progress
(True, 1.0)
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from BrainFMSceneLib._errors import ERROR_TYPES, EXIT_CODE_TYPES, BrainFMError
from BrainFMSceneLib.signals import Signal
from BrainFMSceneLib.volume_files import private_temp_dir

PROGRESS_PREFIX = "BRAINFM_PROGRESS"
ERROR_PREFIX = "BRAINFM_ERROR"
CANCELLED_EXIT_CODE = 130
MAX_LOG_LINES = 5000
#: seconds to wait for the end of the output after the child exited (a detached grandchild may
#: keep the pipe open forever)
ORPHAN_PIPE_GRACE_S = 5.0


@dataclass(frozen=True)
class ProgressEvent:
    """A parsed ``BRAINFM_PROGRESS`` line."""

    fraction: float
    message: str


@dataclass(frozen=True)
class LogEvent:
    """Any other output line of the child (stdout and stderr merged)."""

    text: str


@dataclass
class ProcessResult:
    """Outcome of one child process."""

    exit_code: int
    cancelled: bool = False
    error_type: Optional[str] = None
    error_message: Optional[str] = None
    log: List[str] = field(default_factory=list)
    progress: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.cancelled

    def exception(self) -> Optional[BrainFMError]:
        """The error as a ``brainfm.errors`` instance (None when the run succeeded)."""
        if self.ok:
            return None
        cls = ERROR_TYPES.get(self.error_type or "") or EXIT_CODE_TYPES.get(self.exit_code, BrainFMError)
        return cls(self.error_message or f"BrainFM process failed with exit code {self.exit_code}")

    def raise_for_error(self) -> None:
        """Raise :meth:`exception` if the run failed or was cancelled."""
        exc = self.exception()
        if exc is not None:
            raise exc


def parse_line(line: str) -> Union[ProgressEvent, LogEvent, Tuple[str, str]]:
    """Classify one output line: progress, error ``(type, message)`` or plain log.

    >>> parse_line("BRAINFM_PROGRESS 0.2500 segmenting")
    ProgressEvent(fraction=0.25, message='segmenting')
    >>> parse_line('BRAINFM_ERROR {"type": "InputError", "message": "volume is 2D"}')
    ('InputError', 'volume is 2D')
    """
    text = line.rstrip("\r\n")
    stripped = text.strip()
    if stripped.startswith(PROGRESS_PREFIX + " "):
        parts = stripped.split(None, 2)
        try:
            fraction = min(max(float(parts[1]), 0.0), 1.0)
            return ProgressEvent(fraction, parts[2] if len(parts) > 2 else "")
        except (IndexError, ValueError):
            return LogEvent(text)
    if stripped.startswith(ERROR_PREFIX + " "):
        payload = stripped[len(ERROR_PREFIX) + 1:]
        try:
            data = json.loads(payload)
            return str(data.get("type") or "BrainFMError"), str(data.get("message") or payload)
        except (ValueError, AttributeError):
            return "BrainFMError", payload
    return LogEvent(text)


def default_python() -> str:
    """``PythonSlicer`` inside Slicer (it sets up Slicer's environment), else ``sys.executable``."""
    return shutil.which("PythonSlicer") or sys.executable


def brainfm_command(input_path: Union[str, Path], output_dir: Union[str, Path], options: Sequence[str], *,
                    python: Optional[str] = None) -> List[str]:
    """``[python, -m, brainfm, run, INPUT, -o, OUTDIR, *options]`` as an argument list."""
    return [python or default_python(), "-m", "brainfm", "run", str(input_path), "-o", str(output_dir),
            *[str(o) for o in options]]


class ProcessRunner:
    """Run one child process and report its progress, log and result.

    Signals (emitted from :meth:`poll` / :meth:`wait`, i.e. on the caller's thread):
    ``progress(fraction, message)``, ``log(text)``, ``finished(ProcessResult)``.

    :param keep_temp: keep :attr:`temp_dir` after :meth:`cleanup` (for debugging).
    :param base_env: environment to start from (default ``os.environ``; in Slicer pass the
        startup environment so ``PythonSlicer`` finds its libraries).
    """

    def __init__(self, *, keep_temp: bool = False, base_env: Optional[Mapping[str, str]] = None,
                 kill_grace_s: float = 3.0) -> None:
        self.keep_temp = keep_temp
        self.base_env = dict(base_env) if base_env is not None else None
        self.kill_grace_s = kill_grace_s
        self.progress = Signal("float, str")
        self.log = Signal("str")
        self.finished = Signal("ProcessResult")
        self._temp_dir: Optional[Path] = None
        self._proc: Optional[subprocess.Popen] = None
        self._queue: "queue.Queue[Any]" = queue.Queue()
        self._reader: Optional[threading.Thread] = None
        self._lines: List[str] = []
        self._error: Optional[Tuple[str, str]] = None
        self._fraction = 0.0
        self._cancelled = False
        self._result: Optional[ProcessResult] = None
        self._exited_at: Optional[float] = None

    # -- temp folder ----------------------------------------------------------------------------
    @property
    def temp_dir(self) -> Path:
        """Private working folder (mode 0o700, ``BrainFM-`` prefix), created on first use."""
        if self._temp_dir is None:
            self._temp_dir = private_temp_dir("BrainFM-")
        return self._temp_dir

    def cleanup(self) -> None:
        """Remove :attr:`temp_dir` unless ``keep_temp`` (kills a still running child first)."""
        if self.running:
            self.cancel()
        if self._temp_dir is not None and not self.keep_temp:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    def __enter__(self) -> "ProcessRunner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()

    # -- start ------------------------------------------------------------------------------------
    def start(self, args: Sequence[str], *, env_updates: Optional[Mapping[str, str]] = None,
              cwd: Optional[Union[str, Path]] = None) -> "ProcessRunner":
        """Start ``args`` (a list: program first). Raises ``RuntimeError`` if already started."""
        if isinstance(args, (str, bytes)):
            raise TypeError("args must be a list of strings, not a shell command string")
        if self._proc is not None:
            raise RuntimeError("this ProcessRunner was already started; create a new one")
        env = dict(self.base_env if self.base_env is not None else os.environ)
        env.update({str(k): str(v) for k, v in (env_updates or {}).items()})
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("PYTHONIOENCODING", "utf-8")
        kwargs: Dict[str, Any] = {}
        if os.name == "nt":  # pragma: no cover - Windows only
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | 0x08000000  # CREATE_NO_WINDOW
        else:
            kwargs["start_new_session"] = True
        self._proc = subprocess.Popen(
            [str(a) for a in args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            cwd=str(cwd) if cwd else None, env=env, text=True, encoding="utf-8", errors="replace",
            bufsize=1, **kwargs)
        self._reader = threading.Thread(target=self._read, name="BrainFM-reader", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self._queue.put(parse_line(line))
        self._proc.stdout.close()
        self._queue.put(None)  # end of output

    # -- state ------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and self._result is None

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    @property
    def result(self) -> Optional[ProcessResult]:
        return self._result

    # -- events -----------------------------------------------------------------------------------
    def poll(self) -> List[Union[ProgressEvent, LogEvent, ProcessResult]]:
        """Deliver the events received so far (non-blocking); the last one is the result when done."""
        events: List[Any] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            events.extend(self._handle(item))
        if self._result is None and self._pipe_orphaned():
            events.append(self._finish())
        return events

    def _pipe_orphaned(self) -> bool:
        """True when the child has exited but a detached descendant keeps its output pipe open."""
        import time

        if self._proc is None or self._proc.poll() is None or not self._queue.empty():
            return False
        if self._exited_at is None:
            self._exited_at = time.monotonic()
        return time.monotonic() - self._exited_at > ORPHAN_PIPE_GRACE_S

    def _handle(self, item: Any) -> List[Any]:
        if item is None:
            return [] if self._result is not None else [self._finish()]
        if isinstance(item, ProgressEvent):
            self._fraction = max(self._fraction, item.fraction)
            self.progress.emit(item.fraction, item.message)
            return [item]
        if isinstance(item, tuple):
            self._error = item
            item = LogEvent(f"ERROR ({item[0]}): {item[1]}")
        self._lines.append(item.text)
        if len(self._lines) > MAX_LOG_LINES:
            del self._lines[: len(self._lines) - MAX_LOG_LINES]
        self.log.emit(item.text)
        return [item]

    def _finish(self) -> ProcessResult:
        assert self._proc is not None
        if self._result is not None:
            return self._result
        code = self._proc.wait()
        cancelled = self._cancelled or code == CANCELLED_EXIT_CODE
        error_type, message = self._error if self._error else (None, None)
        if cancelled:
            code, error_type = CANCELLED_EXIT_CODE, error_type or "CancelledError"
            message = message or "Cancelled by the user."
        elif code < 0 and error_type is None:
            error_type = "ResourceError" if -code == getattr(signal, "SIGKILL", 9) else "BrainFMError"
            message = (f"The BrainFM process was stopped by signal {-code}"
                       + (" (often: out of memory)." if error_type == "ResourceError" else "."))
        elif code != 0 and error_type is None:
            error_type = EXIT_CODE_TYPES.get(code, BrainFMError).__name__
            tail = "\n".join(self._lines[-10:])
            message = f"The BrainFM process exited with code {code}. Last output:\n{tail}"
        if code == 0:
            self._fraction = 1.0
        self._result = ProcessResult(code, cancelled, error_type, message, list(self._lines), self._fraction)
        self.finished.emit(self._result)
        return self._result

    def wait(self, timeout: Optional[float] = None) -> ProcessResult:
        """Block until the child ends (delivering events meanwhile) and return the result.

        Raises ``TimeoutError`` after ``timeout`` seconds (the child keeps running).
        """
        if self._proc is None:
            raise RuntimeError("start() was not called")
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while self._result is None:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"BrainFM process still running after {timeout} s")
            try:
                item = self._queue.get(timeout=0.1 if remaining is None else max(0.01, min(0.1, remaining)))
            except queue.Empty:
                if self._pipe_orphaned():
                    self._finish()
                continue
            self._handle(item)
        return self._result

    # -- cancel -----------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop the child and all its descendants (SIGTERM, then SIGKILL after the grace period)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:  # not started or already ended on its own
            return
        self._cancelled = True
        kill_process_tree(proc.pid, grace_s=self.kill_grace_s, proc=proc)


def kill_process_tree(pid: int, *, grace_s: float = 3.0, proc: Optional[subprocess.Popen] = None) -> None:
    """Terminate ``pid`` and its descendants; force-kill whatever is left after ``grace_s``.

    ``proc`` (the ``Popen`` of ``pid``) lets the loop reap the leader so it does not linger as a
    zombie member of its process group.
    """
    try:
        import psutil  # optional: finds children even outside the process group
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            parent = psutil.Process(pid)
            procs = parent.children(recursive=True) + [parent]
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=grace_s)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        if os.name == "nt":  # pragma: no cover
            return
    if os.name == "nt":  # pragma: no cover - Windows only
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True, check=False)
        return
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    if pgid == os.getpgid(0):  # never signal our own group
        os.kill(pid, signal.SIGKILL)
        return
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    import time

    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if proc is not None:
            proc.poll()
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
