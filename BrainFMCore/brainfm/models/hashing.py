"""SHA-256 of weights files, and a cache so that an unchanged file is hashed once.

:func:`sha256_stream` is the engine's one implementation (:func:`sha256_file` for a file; a
download or a copy hashes the bytes as it writes them). :func:`cached_sha256` remembers the digest
of a file under its identity: resolved path, size, modification time (ns), inode (and, on POSIX,
the inode change time, which any write, ``touch`` or ``chmod`` updates). Every Slicer Apply is a
new process that would otherwise hash a ~1 GB checkpoint again; with the cache only the first
run after a change pays. A file whose identity changed is hashed again, so a modified file is
always re-verified. The cache is ``sha256_cache.json`` in the cache folder (env ``BRAINFM_HOME``),
private to the user and written atomically; when it cannot be written, hashing still works.
Torch-free.

>>> import os, tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp()); cache = d / "sha256_cache.json"
>>> p = d / "w.bin"; _ = p.write_bytes(b"abc")
>>> sha256_file(p)[:16]
'ba7816bf8f01cfea'
>>> cached_sha256(p, cache=cache) == sha256_file(p), cached_sha256(p, only_cached=True, cache=cache)[:8]
(True, 'ba7816bf')
>>> _ = p.write_bytes(b"abcd"); cached_sha256(p, only_cached=True, cache=cache) is None   # changed
True
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Optional, Tuple, Union

from brainfm.errors import BrainFMError

PathLike = Union[str, "os.PathLike[str]"]
CACHE_NAME = "sha256_cache.json"
CACHE_FORMAT = "brainfm-sha256-cache"
MAX_ENTRIES = 256
CHUNK = 1 << 22


def sha256_stream(source: BinaryIO, *, sink: Optional[BinaryIO] = None, chunk_size: int = CHUNK,
                  on_chunk: Optional[Callable[[int], None]] = None, cancel: Any = None) -> str:
    """Hex SHA-256 of everything read from the binary stream ``source`` (in chunks of
    ``chunk_size`` bytes), optionally writing each chunk to ``sink`` as it goes, so that a copy or a
    download is hashed in the same pass.

    ``cancel`` (a :class:`~brainfm.progress.CancelToken`) is checked before each chunk is used;
    ``on_chunk(bytes_done)`` is called after each chunk.

    >>> import io
    >>> out = io.BytesIO()
    >>> sha256_stream(io.BytesIO(b"abc"), sink=out, chunk_size=2)[:16], out.getvalue()
    ('ba7816bf8f01cfea', b'abc')
    """
    h = hashlib.sha256()
    done = 0
    for block in iter(lambda: source.read(chunk_size), b""):
        if cancel is not None:
            cancel.raise_if_cancelled()
        if sink is not None:
            sink.write(block)
        h.update(block)
        done += len(block)
        if on_chunk is not None:
            on_chunk(done)
    return h.hexdigest()


def sha256_file(path: PathLike, *, chunk_size: int = CHUNK,
                progress: Optional[Callable[[float, str], None]] = None, cancel: Any = None) -> str:
    """Hex SHA-256 of a file, read in chunks (:func:`sha256_stream`).

    ``progress(fraction, message)`` is called as the file is read; ``cancel`` (a
    :class:`~brainfm.progress.CancelToken`) is checked between chunks.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x"; _ = p.write_bytes(b"abc")
    >>> sha256_file(p)[:16]
    'ba7816bf8f01cfea'
    """
    total = os.path.getsize(path) if progress is not None else 0
    on_chunk = chunk_progress(progress, total, f"checking {Path(path).name} (SHA-256)")
    with open(path, "rb") as f:
        return sha256_stream(f, chunk_size=chunk_size, on_chunk=on_chunk, cancel=cancel)


def chunk_progress(progress: Optional[Callable[[float, str], None]], total: int, message: str, *,
                   start: float = 0.0, stop: float = 1.0) -> Optional[Callable[[int], None]]:
    """``on_chunk(bytes_done)`` for :func:`sha256_stream` that reports
    ``progress(start + (stop - start) * fraction, message)`` of ``total`` bytes; ``None`` without a
    ``progress`` callback or a known size.

    >>> seen = []
    >>> chunk_progress(lambda f, m: seen.append((f, m)), 4, "copying", start=0.5)(2); seen
    [(0.75, 'copying')]
    """
    if progress is None or not total:
        return None

    def on_chunk(done: int) -> None:
        progress(start + (stop - start) * min(done / total, 1.0), message)

    return on_chunk


def file_identity(path: PathLike) -> Tuple[str, Dict[str, int]]:
    """``(resolved path, {size, mtime_ns, inode[, ctime_ns]})`` that the cache keys a digest on."""
    p = Path(path).expanduser().resolve()
    st = p.stat()
    ident = {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns), "inode": int(st.st_ino)}
    if os.name != "nt":  # on Windows st_ctime is the creation time, not the change time
        ident["ctime_ns"] = int(st.st_ctime_ns)
    return str(p), ident


def cache_file() -> Path:
    """``<cache folder>/sha256_cache.json``."""
    from brainfm.models.registry import cache_dir

    return cache_dir() / CACHE_NAME


def _load(cache: Optional[PathLike]) -> Dict[str, Any]:
    from brainfm.models.jsonfile import read_json

    try:
        data = read_json(cache if cache is not None else cache_file(), default={})
    except (OSError, BrainFMError):  # unreadable or broken cache: behave as if empty
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("files"), dict):
        return {}
    return data["files"]


def cached_sha256(path: PathLike, *, refresh: bool = False, only_cached: bool = False,
                  progress: Optional[Callable[[float, str], None]] = None, cancel: Any = None,
                  cache: Optional[PathLike] = None) -> Optional[str]:
    """SHA-256 of ``path``, from the cache when the file's identity is unchanged.

    ``refresh`` hashes the file even when the cache has it (``brainfm models verify``);
    ``only_cached`` returns ``None`` instead of hashing when the cache has no valid digest.
    ``cache`` is the cache file (default :func:`cache_file`).
    """
    key, ident = file_identity(path)
    if not refresh:
        hit = _load(cache).get(key)
        if isinstance(hit, dict) and all(hit.get(k) == v for k, v in ident.items()) and hit.get("sha256"):
            return str(hit["sha256"])
    if only_cached:
        return None
    digest = sha256_file(key, progress=progress, cancel=cancel)
    remember(key, digest, identity=ident, cache=cache)
    return digest


def remember(path: PathLike, digest: str, *, identity: Optional[Dict[str, int]] = None,
             cache: Optional[PathLike] = None) -> None:
    """Record ``digest`` for ``path`` (its current identity unless ``identity`` is given; a file that
    changed since ``identity`` was taken is not recorded). Failures to write are ignored."""
    from brainfm.models.jsonfile import update_json

    key, now = file_identity(path)
    if identity is not None and identity != now:
        return
    entry = {**now, "sha256": str(digest).lower(), "checked": time.time()}

    def change(data: Any) -> Dict[str, Any]:
        files = data.get("files") if isinstance(data, dict) and data.get("format") == CACHE_FORMAT else None
        files = dict(files) if isinstance(files, dict) else {}
        files[key] = entry
        if len(files) > MAX_ENTRIES:  # keep the most recently checked files
            keep = sorted(files.items(), key=lambda kv: float(kv[1].get("checked", 0.0)), reverse=True)
            files = dict(keep[:MAX_ENTRIES])
        return {"format": CACHE_FORMAT, "format_version": 1, "files": files}

    try:
        update_json(cache if cache is not None else cache_file(), change, default={}, timeout=10.0)
    except (OSError, BrainFMError):  # read-only or busy cache folder: the digest is still correct
        pass


def forget(path: PathLike, *, cache: Optional[PathLike] = None) -> None:
    """Drop the cached digest of ``path`` (if any)."""
    from brainfm.models.jsonfile import update_json

    key = str(Path(path).expanduser().resolve())

    def change(data: Any) -> Optional[Dict[str, Any]]:
        files = data.get("files") if isinstance(data, dict) else None
        if not isinstance(files, dict) or key not in files:
            return None
        files = {k: v for k, v in files.items() if k != key}
        return {**data, "files": files}

    try:
        update_json(cache if cache is not None else cache_file(), change, default={}, timeout=10.0)
    except (OSError, BrainFMError):
        pass
