"""Atomic file output: write into a private temporary folder next to the target, then
``os.replace`` into place, so a failed write never leaves a partial file or clobbers an old one.
Finished files and folders get the permissions the user's umask gives new files (as ``touch`` and
``mkdir`` would), never the private mode of the temporary folder. A failed write (read-only
location, disk full, no permission) is a :class:`~brainfm.errors.StorageError` naming the file.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> with atomic_output(d / "a.txt") as tmp:
...     _ = tmp.write_text("hello")
>>> (d / "a.txt").read_text(), sorted(p.name for p in d.iterdir())
('hello', ['a.txt'])
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

from brainfm.errors import InputError, StorageError

PathLike = Union[str, "os.PathLike[str]"]


def same_path(a: PathLike, b: PathLike) -> bool:
    """True when ``a`` and ``b`` name the same file (after resolving links and ``..``)."""
    pa, pb = Path(a), Path(b)
    try:
        if pa.exists() and pb.exists():
            return os.path.samefile(pa, pb)
    except OSError:
        pass
    return os.path.realpath(os.path.abspath(pa)) == os.path.realpath(os.path.abspath(pb))


def current_umask() -> int:
    """The process's file-creation mask (read from ``/proc`` where possible, so it is not changed
    even for an instant)."""
    try:
        with open("/proc/self/status", "r", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a new file under the current umask (``0o644`` with the usual umask 022)."""
    return 0o666 & ~current_umask()


def folder_mode() -> int:
    """Mode of a new folder under the current umask (``0o755`` with the usual umask 022)."""
    return 0o777 & ~current_umask()


_PLAIN = {
    errno.ENOSPC: "the disk is full (no space left on the device)",
    errno.EROFS: "the location is on a read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
if hasattr(errno, "EDQUOT"):
    _PLAIN[errno.EDQUOT] = "your disk quota is exceeded"


def storage_error(exc: BaseException, target: PathLike, *, action: str = "write") -> StorageError:
    """A :class:`StorageError` with a plain message for an ``OSError`` met while writing ``target``.

    >>> str(storage_error(OSError(errno.ENOSPC, "No space left on device"), "/out/seg.nii.gz"))
    'cannot write /out/seg.nii.gz: the disk is full (no space left on the device); free some space or choose another output folder'
    """
    if isinstance(exc, StorageError):
        return exc
    code = getattr(exc, "errno", None)
    why = _PLAIN.get(code) if code is not None else None
    if why is None:
        why = (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__).strip()
    return StorageError(f"cannot {action} {target}: {why}; free some space or choose another output folder"
                        if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1))
                        else f"cannot {action} {target}: {why}; choose another output folder")


def check_writable(folder: PathLike, *, need_bytes: int = 0) -> None:
    """Raise :class:`StorageError` unless a file can be created in ``folder`` (an existing folder)
    and its file system has at least ``need_bytes`` free.

    >>> import tempfile
    >>> check_writable(tempfile.gettempdir(), need_bytes=1)
    """
    folder = Path(folder)
    try:
        fd, probe = tempfile.mkstemp(prefix=".brainfm-write-test-", dir=str(folder))
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise storage_error(e, folder, action="write into") from e
    if need_bytes > 0:
        try:
            free = shutil.disk_usage(str(folder)).free
        except OSError:
            return
        if free < need_bytes:
            raise StorageError(
                f"not enough free space in {folder}: {_mb(free)} free, about {_mb(need_bytes)} needed for the "
                "outputs; free some space or choose another output folder")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


def make_folder(path: PathLike) -> list:
    """Create ``path`` and missing parents (umask permissions); return the folders created,
    deepest last, so a caller can remove them again if it ends up writing nothing."""
    p = Path(path)
    missing = []
    cur = p
    while not cur.exists() and cur != cur.parent:
        missing.append(cur)
        cur = cur.parent
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise storage_error(e, p, action="create the folder") from e
    return list(reversed(missing))


def remove_if_empty(folders: Iterable[PathLike]) -> None:
    """Remove each of ``folders`` (deepest first) that is empty; keep the others."""
    for f in sorted((Path(x) for x in folders), key=lambda x: len(x.parts), reverse=True):
        try:
            f.rmdir()
        except OSError:
            pass


def check_output_path(path: PathLike, *, overwrite: bool = True, forbid: Iterable[PathLike] = ()) -> Path:
    """Validate an output path: not one of ``forbid`` (e.g. the input), not an existing
    folder, not an existing file unless ``overwrite``. Creates the parent folder.

    >>> check_output_path("/tmp/x.nii.gz", forbid=["/tmp/x.nii.gz"])
    Traceback (most recent call last):
    ...
    brainfm.errors.InputError: output path equals the input path (/tmp/x.nii.gz); choose another output file
    """
    p = Path(path).expanduser()
    for f in forbid:
        if f is not None and same_path(p, f):
            raise InputError(f"output path equals the input path ({p}); choose another output file")
    if p.is_dir():
        raise InputError(f"output path {p} is a folder; give a file name")
    if p.exists() and not overwrite:
        raise InputError(f"output file {p} already exists; pass overwrite=True (CLI --overwrite) to replace it")
    if not p.parent.is_dir():
        make_folder(p.parent)
    return p


@contextlib.contextmanager
def atomic_output(path: PathLike, *, mode: Optional[int] = None, fsync: bool = False,
                  keep_mode: bool = False) -> Iterator[Path]:
    """Yield a temporary path with the same file name as ``path`` inside a private folder in
    the target's folder. On normal exit every file written in that folder is moved next to
    ``path`` with ``os.replace`` (companion files such as a ``.raw`` data file first, ``path``
    last) and given ``mode`` (default: what the umask gives new files); on error nothing is
    moved and the temporary folder is removed. An ``OSError`` (disk full, read-only, permission)
    becomes a :class:`StorageError` naming ``path``.

    ``fsync`` flushes each file to the disk before it is moved (files that must survive a power
    cut: model weights, the model store's records); ``keep_mode`` leaves the files' permissions as
    they are (a hard link placed into ``path`` shares its mode with the linked file).

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_output(d / "w.bin", mode=0o600, fsync=True) as tmp:
    ...     _ = tmp.write_bytes(b"weights")
    >>> oct((d / "w.bin").stat().st_mode & 0o777), sorted(p.name for p in d.iterdir())
    ('0o600', ['w.bin'])
    """
    target = Path(path)
    if not target.parent.is_dir():
        make_folder(target.parent)
    try:
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=str(target.parent)))
    except OSError as e:
        raise storage_error(e, target) from e
    final_mode = file_mode() if mode is None else mode
    try:
        tmp = tmpdir / target.name
        yield tmp
        if not tmp.exists():
            raise InputError(f"writing {target} produced no file")
        companions = [p for p in tmpdir.iterdir() if p.name != target.name]
        for p in companions + [tmp]:
            if fsync:
                _fsync(p)
            if not keep_mode:
                os.chmod(p, final_mode)
            os.replace(p, target.parent / p.name)
    except StorageError:
        raise
    except OSError as e:
        raise storage_error(e, target) from e
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def replace_folder(src: PathLike, dest: PathLike) -> None:
    """Move the finished folder ``src`` to ``dest`` (same file system), replacing an existing
    ``dest`` last: the old folder is moved aside, ``src`` moved in, then the old one removed (put
    back if the move fails), so ``dest`` is at every moment either the old or the new folder.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); (d / "new").mkdir(); (d / "out").mkdir()
    >>> _ = (d / "new" / "a.txt").write_text("new"); _ = (d / "out" / "old.txt").write_text("old")
    >>> replace_folder(d / "new", d / "out")
    >>> sorted(p.name for p in d.iterdir()), sorted(p.name for p in (d / "out").iterdir())
    (['out'], ['a.txt'])
    """
    src, dest = Path(src), Path(dest)
    if not dest.exists():
        os.replace(src, dest)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=str(dest.parent)))
    os.rmdir(old)
    os.replace(dest, old)
    try:
        os.replace(src, dest)
    except BaseException:
        os.replace(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(path: PathLike, *, mode: Optional[int] = None) -> Iterator[Path]:
    """Yield a new private temporary folder next to ``path``; on normal exit it gets ``mode``
    (default: what the umask gives new folders) and replaces ``path`` (:func:`replace_folder`), on
    error it is removed and ``path`` is left as it was.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_folder(d / "step_1") as tmp:
    ...     _ = (tmp / "meta.json").write_text("{}")
    >>> sorted(p.name for p in d.iterdir()), [p.name for p in (d / "step_1").iterdir()]
    (['step_1'], ['meta.json'])
    """
    target = Path(path)
    if not target.parent.is_dir():
        make_folder(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=str(target.parent)))
    try:
        yield tmp
        os.chmod(tmp, folder_mode() if mode is None else mode)
        replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
