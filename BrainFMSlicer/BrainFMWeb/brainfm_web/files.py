"""Files on the server: allowed folders, size-limited uploads, the case folder as a zip.

Everything the browser can make the server read or write goes through this module:

* :class:`AllowedFolders` refuses any path (scan, model) outside the folders the server was started
  with; symbolic links are resolved first, so a link cannot point out of an allowed folder.
* :func:`save_upload` streams an upload into a private folder (mode 0o700) and stops, deleting the
  partial file, as soon as it exceeds the size limit; the browser's file name is reduced to a safe
  base name with a known image suffix.
* :func:`zip_case_folder` writes the zip atomically (temporary name, then ``os.replace``).

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> scan = root / "t1.nii.gz"; _ = scan.write_bytes(b"x")
>>> AllowedFolders([root]).check(scan) == scan.resolve()
True
>>> AllowedFolders([root]).check("/etc/passwd")
Traceback (most recent call last):
...
brainfm.errors.InputError: /etc/passwd is outside the folders this server may read (...)
>>> safe_upload_name("../../x/My scan.NII.GZ")
'My_scan.nii.gz'
"""
from __future__ import annotations

import os
import re
import secrets
import tempfile
import zipfile
from pathlib import Path
from typing import AsyncIterator, Iterable, List, Optional, Sequence, Union

from BrainFMSceneLib._errors import InputError
from BrainFMSceneLib.volume_files import private_temp_dir

PathLike = Union[str, "os.PathLike[str]"]
#: single-file image formats accepted as uploads (what ``brainfm run`` and Slicer both read)
UPLOAD_SUFFIXES = (".nii.gz", ".nii", ".mgz", ".mgh", ".nrrd", ".mha")
#: default upload limit (a 512^3 float32 volume is 512 MiB)
DEFAULT_MAX_UPLOAD_MB = 1024.0


class UploadTooLarge(InputError):
    """The upload is larger than the server's limit (HTTP 413)."""


class AllowedFolders:
    """The folders whose files the browser may name (scans and models on the server).

    :param folders: existing folders; each is resolved (symbolic links followed) once.
    """

    def __init__(self, folders: Iterable[PathLike]) -> None:
        roots: List[Path] = []
        for folder in folders:
            root = Path(folder).expanduser().resolve()
            if not root.is_dir():
                raise InputError(f"allowed folder {folder} does not exist or is not a folder")
            roots.append(root)
        self.roots = tuple(roots)

    def __repr__(self) -> str:
        return f"AllowedFolders({[str(r) for r in self.roots]})"

    def contains(self, path: PathLike) -> bool:
        """Whether ``path`` (resolved) lies inside one of the allowed folders."""
        resolved = Path(path).expanduser().resolve()
        return any(resolved == root or root in resolved.parents for root in self.roots)

    def check(self, path: PathLike, *, what: str = "file") -> Path:
        """The resolved ``path`` when it is an existing file inside an allowed folder.

        Raises :class:`InputError` naming the path otherwise (outside, missing, not a file).
        """
        text = str(path).strip()
        if not text:
            raise InputError(f"no {what} path given")
        if "\x00" in text:
            raise InputError(f"invalid {what} path {text!r}")
        if not self.contains(text):
            folders = ", ".join(str(r) for r in self.roots) or "none"
            raise InputError(f"{text} is outside the folders this server may read ({folders})")
        resolved = Path(text).expanduser().resolve()
        if not resolved.is_file():
            raise InputError(f"{what} not found: {text}")
        return resolved


def safe_upload_name(name: str) -> str:
    """A safe base name for an uploaded file: no folders, ``[A-Za-z0-9._-]`` only, lower-case suffix.

    Raises :class:`InputError` when the suffix is not one of :data:`UPLOAD_SUFFIXES`.
    """
    base = re.split(r"[\\/]", str(name or ""))[-1].strip()
    lower = base.lower()
    suffix = next((s for s in UPLOAD_SUFFIXES if lower.endswith(s)), None)
    if suffix is None:
        raise InputError(f"{base or 'the upload'} is not a supported image file "
                         f"(use {', '.join(UPLOAD_SUFFIXES)})")
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", base[: -len(suffix)]).strip("._") or "scan"
    return stem[:100] + suffix


def max_upload_bytes(megabytes: float) -> int:
    """Limit in bytes for ``megabytes`` (MiB); must be positive.

    >>> max_upload_bytes(1.5)
    1572864
    """
    if not megabytes or float(megabytes) <= 0:
        raise InputError("the upload limit must be a positive number of MiB")
    return int(float(megabytes) * 1024 * 1024)


async def save_upload(chunks: AsyncIterator[bytes], name: str, folder: PathLike, *, max_bytes: int,
                      declared_size: Optional[int] = None) -> Path:
    """Write the upload ``chunks`` to ``folder/<safe name>`` and return the path.

    The data go to a temporary file in ``folder`` first, renamed when complete; more than
    ``max_bytes`` (or a ``declared_size`` above it) raises :class:`UploadTooLarge` and leaves
    nothing behind. An empty upload raises :class:`InputError`.
    """
    target = Path(folder) / safe_upload_name(name)
    if declared_size is not None and declared_size > max_bytes:
        raise UploadTooLarge(f"{target.name} is {declared_size / 2**20:.1f} MiB; "
                             f"this server accepts at most {max_bytes / 2**20:.1f} MiB per upload")
    fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=str(folder))
    written = 0
    try:
        with os.fdopen(fd, "wb") as fh:
            async for chunk in chunks:
                written += len(chunk)
                if written > max_bytes:
                    raise UploadTooLarge(f"{target.name} is larger than the {max_bytes / 2**20:.1f} MiB "
                                         "this server accepts per upload")
                fh.write(chunk)
        if written == 0:
            raise InputError(f"the upload of {target.name} is empty")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def zip_case_folder(case_dir: PathLike, zip_path: PathLike) -> Path:
    """Zip the files of ``case_dir`` (as ``<case name>/<file>``) into ``zip_path``, atomically.

    >>> import tempfile, pathlib, zipfile
    >>> case = pathlib.Path(tempfile.mkdtemp()) / "scan"; case.mkdir()
    >>> _ = (case / "summary.json").write_text("{}")
    >>> out = zip_case_folder(case, case.parent / "scan.zip")
    >>> zipfile.ZipFile(out).namelist()
    ['scan/summary.json']
    """
    case = Path(case_dir)
    if not case.is_dir():
        raise InputError(f"no results to download: {case} does not exist")
    target = Path(zip_path)
    fd, tmp = tempfile.mkstemp(prefix=".zip-", suffix=".zip", dir=str(target.parent))
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
            for path in sorted(p for p in case.rglob("*") if p.is_file() and not p.is_symlink()):
                zf.write(path, f"{case.name}/{path.relative_to(case).as_posix()}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def new_token() -> str:
    """A random access token for the server URL (like a notebook server's token)."""
    return secrets.token_urlsafe(24)


def workspace(prefix: str = "BrainFMWeb-", parent: Optional[PathLike] = None) -> Path:
    """A private working folder (mode 0o700) with ``uploads/`` and ``cases/`` sub-folders."""
    if parent is not None:
        Path(parent).mkdir(parents=True, exist_ok=True, mode=0o700)
        root = Path(tempfile.mkdtemp(prefix=prefix, dir=str(parent)))
        os.chmod(root, 0o700)
    else:
        root = private_temp_dir(prefix)
    for sub in ("uploads", "cases"):
        (root / sub).mkdir(mode=0o700)
    return root


def check_suffix(path: PathLike, suffixes: Sequence[str], *, what: str) -> Path:
    """``path`` when its name ends with one of ``suffixes`` (case-insensitive), else :class:`InputError`."""
    p = Path(path)
    if not any(p.name.lower().endswith(s) for s in suffixes):
        raise InputError(f"{p.name} is not a {what} ({', '.join(suffixes)})")
    return p
