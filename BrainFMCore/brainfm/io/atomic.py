"""Atomic file output: write into a private temporary folder next to the target, then
``os.replace`` into place, so a failed write never leaves a partial file or clobbers an old one.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> with atomic_output(d / "a.txt") as tmp:
...     _ = tmp.write_text("hello")
>>> (d / "a.txt").read_text(), sorted(p.name for p in d.iterdir())
('hello', ['a.txt'])
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Union

from brainfm.errors import InputError

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
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the output folder {p.parent}: {e}") from e
    return p


@contextlib.contextmanager
def atomic_output(path: PathLike, *, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path with the same file name as ``path`` inside a private folder in
    the target's folder. On normal exit every file written in that folder is moved next to
    ``path`` with ``os.replace`` (companion files such as a ``.raw`` data file first, ``path``
    last); on error nothing is moved and the temporary folder is removed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=str(target.parent)))
    try:
        tmp = tmpdir / target.name
        yield tmp
        if not tmp.exists():
            raise InputError(f"writing {target} produced no file")
        companions = [p for p in tmpdir.iterdir() if p.name != target.name]
        for p in companions + [tmp]:
            os.chmod(p, mode)
            os.replace(p, target.parent / p.name)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
