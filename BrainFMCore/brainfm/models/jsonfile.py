"""Small JSON files shared by concurrent ``brainfm`` processes: a cross-process lock, an atomic
write and a locked read-modify-write.

The model store and the SHA-256 cache live in the cache folder, where a Slicer Apply (a new child
process each time) and a command-line run may write at the same moment. Readers never lock: every
write goes to a temporary file in the same folder and replaces the old file with ``os.replace``, so
a reader sees either the old or the new content. Writers serialise on ``<file>.lock`` (``fcntl.flock``
on POSIX, ``msvcrt.locking`` on Windows). Torch-free.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "state.json"
>>> read_json(p, default={"n": 0})
{'n': 0}
>>> update_json(p, lambda d: {**d, "n": d.get("n", 0) + 1}, default={})
{'n': 1}
>>> read_json(p)
{'n': 1}
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Union

from brainfm.errors import InputError, ResourceError
from brainfm.io.atomic import atomic_output

PathLike = Union[str, "os.PathLike[str]"]
LOCK_TIMEOUT_S = 120.0


def _try_lock(fd: int) -> bool:
    if os.name == "nt":  # pragma: no cover - Windows only
        import msvcrt

        try:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _unlock(fd: int) -> None:
    if os.name == "nt":  # pragma: no cover - Windows only
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)


@contextmanager
def locked(path: PathLike, *, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the exclusive lock of ``path`` (file ``<path>.lock``, created 0o600) for the ``with`` body.

    Raises :class:`~brainfm.errors.ResourceError` naming the lock file after ``timeout`` seconds.
    """
    p = Path(path)
    p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock_path = p.with_name(p.name + ".lock")
    fd = os.open(str(lock_path), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while not _try_lock(fd):
            if time.monotonic() > deadline:
                raise ResourceError(f"{p} is locked by another brainfm process (lock file {lock_path}) for more "
                                    f"than {timeout:.0f} s; wait for it to finish and try again")
            time.sleep(0.02)
        try:
            yield
        finally:
            _unlock(fd)
    finally:
        os.close(fd)


def read_json(path: PathLike, *, default: Any = None) -> Any:
    """Content of the JSON file ``path``; ``default`` when it does not exist.

    A file that exists but is not valid JSON raises :class:`~brainfm.errors.InputError` naming it.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        return default
    try:
        return json.loads(text)
    except ValueError as e:
        raise InputError(f"{p} is not valid JSON ({e}); move it away to start over") from None


def write_json_atomic(path: PathLike, data: Any) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (:func:`brainfm.io.atomic.atomic_output`:
    temporary file in the same folder, fsync, ``os.replace``); the file is private to the user (0o600)."""
    p = Path(path)
    p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with atomic_output(p, mode=0o600, fsync=True) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=False)
            fh.write("\n")
    return p


def update_json(path: PathLike, change: Callable[[Any], Any], *, default: Any = None,
                timeout: float = LOCK_TIMEOUT_S) -> Any:
    """Under the lock of ``path``: read it (``default`` when absent), ``new = change(old)``, write
    ``new`` atomically and return it. ``change`` returning ``None`` leaves the file untouched."""
    with locked(path, timeout=timeout):
        old = read_json(path, default=default)
        new = change(old)
        if new is not None:
            write_json_atomic(path, new)
        return new

