"""Model and atlas registry: where weights and the registration atlas come from.

Torch-free on purpose (the Slicer side imports it). ``registry.json`` next to this file lists
versioned entries ``{id, version, kind, filename, sha256, url, bundled, description}``.
Downloads go to the cache (env ``BRAINFM_HOME``, else ``~/.cache/brainfm``; created with mode 0o700),
are written atomically and verified against their SHA-256. :func:`resolve_model` also knows the
names of the local model store (:mod:`brainfm.models.store`) and what ``default`` means
(:mod:`brainfm.models.selection`).

>>> import os, tempfile
>>> from pathlib import Path
>>> from brainfm.models import registry
>>> [e["id"] for e in registry.list_entries()][:2]
['brainfm-compact', 'brainfm-official']
>>> d = Path(tempfile.mkdtemp()); src = d / "w.bin"; _ = src.write_bytes(b"weights")
>>> digest = registry.sha256_file(src)
>>> registry.download(src.as_uri(), d / "copy.bin", sha256=digest).read_bytes()
b'weights'
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from brainfm.errors import CheckpointError, InputError, ModelNotAvailableError
from brainfm.io.atomic import atomic_output
from brainfm.models.hashing import cached_sha256, chunk_progress, sha256_file, sha256_stream  # noqa: F401 (sha256_file: public here)

PathLike = Union[str, "os.PathLike[str]"]
Entries = Optional[Union[PathLike, Sequence[Dict[str, Any]]]]

REGISTRY_FILE = Path(__file__).resolve().parent / "registry.json"
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
DEFAULT_MODEL_ID = "brainfm-compact"
DEFAULT_ATLAS_ID = "gca"

BUNDLED_MISSING_MESSAGE = (
    "The bundled compact BrainFM model is missing from this installation (its weights file is not in the "
    "package; reinstall brainfm to restore it). Or use the official BrainFM weights: download "
    "brainfm_pretrained.pth from the 'Downloads' section of https://github.com/jhuldr/BrainFM#downloads, then "
    "run `brainfm models add PATH/TO/brainfm_pretrained.pth` once (or pass --model PATH/TO/brainfm_pretrained.pth "
    "or a fine-tuned model on every run)."
)


def cache_dir() -> Path:
    """Cache root (env ``BRAINFM_HOME`` else ``~/.cache/brainfm``), created private (0o700)."""
    env = os.environ.get("BRAINFM_HOME")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "brainfm"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return root


def load_registry(path: Optional[PathLike] = None) -> List[Dict[str, Any]]:
    """Entries of ``registry.json`` (or of another registry file ``path``)."""
    p = Path(path) if path is not None else REGISTRY_FILE
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelNotAvailableError(f"cannot read the model registry {p}: {e}") from e
    entries = data["entries"] if isinstance(data, dict) else data
    return [dict(e) for e in entries]


def list_entries(*, kind: Optional[str] = None, registry: Entries = None) -> List[Dict[str, Any]]:
    """Registry entries, optionally only ``kind`` ``"model"`` or ``"atlas"``."""
    entries = _entries(registry)
    return [e for e in entries if kind is None or e.get("kind") == kind]


def get_entry(entry_id: str, *, registry: Entries = None) -> Dict[str, Any]:
    """The entry with ``id == entry_id`` (:class:`ModelNotAvailableError` listing the ids otherwise)."""
    entries = _entries(registry)
    for e in entries:
        if e.get("id") == entry_id:
            return e
    raise ModelNotAvailableError(
        f"unknown model or atlas {entry_id!r}; known ids: {[e.get('id') for e in entries]} "
        "(or pass the path of a weights file)"
    )


def entry_for_file(path: PathLike, *, registry: Entries = None) -> Optional[Dict[str, Any]]:
    """The registry model entry whose local file is ``path`` (the bundled folder or the download
    cache), else None: a file elsewhere that only shares a registered file name is not that entry.

    >>> entry_for_file("/somewhere/else/brainfm-compact.safetensors") is None
    True
    """
    p = Path(path).expanduser().resolve()
    for e in _entries(registry):
        if e.get("kind") != "model" or not e.get("filename"):
            continue
        homes = [BUNDLED_DIR] if e.get("bundled") else [cache_dir() / "models"]
        if any((h / e["filename"]).resolve() == p for h in homes):
            return e
    return None


def names_bundled(spec: str) -> bool:
    """Whether ``spec`` names the bundled compact model: ``bundled`` or its registry id, when no model of
    the local store has taken that name.

    >>> names_bundled("bundled"), names_bundled("/data/my_model.pth")
    (True, False)
    """
    from brainfm.models import store

    return str(spec) in ("bundled", DEFAULT_MODEL_ID) and store.find_model(str(spec)) is None


def resolve_model(spec: str = "default", *, registry: Entries = None) -> Path:
    """Path of the weights for ``spec``, checked against its recorded SHA-256 where one is known.

    ``spec`` is, in this order: ``default`` (the best available model, see
    :func:`brainfm.models.selection.default_model`), ``bundled`` (the bundled compact model, whatever
    its quality), a name of the local model store (``brainfm models list``), a registry id, or a
    file path. Registry entries are looked up in the cache (``<cache>/models/<filename>``) and
    downloaded there (SHA-256 verified) when they have a URL.
    """
    from brainfm.models import selection, store

    spec = str(spec)
    if spec == "default":
        chosen = selection.default_model()
        return store.model_path(chosen.spec) if chosen.kind == "store" else chosen.path
    entries = _entries(registry)
    if names_bundled(spec):
        path, _ = selection.bundled_paths()
        if not path.is_file():
            raise ModelNotAvailableError(BUNDLED_MISSING_MESSAGE)
        return path
    if store.find_model(spec) is not None:
        return store.model_path(spec)
    ids = [e.get("id") for e in entries if e.get("kind") == "model"]
    if spec in ids:
        entry = get_entry(spec, registry=entries)
        if entry.get("bundled"):
            path = BUNDLED_DIR / entry["filename"]
            if not path.is_file():
                raise ModelNotAvailableError(BUNDLED_MISSING_MESSAGE)
            return path
        if spec == "brainfm-official":
            official = selection.official_in_store()
            if official is not None:
                return store.model_path(official.name)
        return _cached_or_download(entry, cache_dir() / "models", _manual_model_hint(entry))
    p = Path(spec).expanduser()
    if p.exists():
        return p
    names = [m.name for m in store.list_models()]
    raise ModelNotAvailableError(
        f"model {spec!r} is neither a file that exists nor a model name; stored models: "
        f"{', '.join(names) if names else 'none'} (brainfm models list), registry ids: {', '.join(map(str, ids))}, "
        "or 'default' for the best available model"
    )


def resolve_atlas(spec: Optional[str] = None, *, registry: Entries = None) -> Path:
    """Path of the registration atlas (``gca.mgz``).

    Order: explicit ``spec`` (a path or an atlas id), env ``BRAINFM_ATLAS``, the cached file, else a
    download from the registry URL with SHA-256 check.
    """
    entries = _entries(registry)
    atlas_ids = [e.get("id") for e in entries if e.get("kind") == "atlas"]
    if spec is not None and str(spec) not in atlas_ids:
        p = Path(spec).expanduser()
        if not p.is_file():
            raise InputError(f"atlas file not found: {p} (known atlas ids: {atlas_ids})")
        return p
    env = os.environ.get("BRAINFM_ATLAS")
    if spec is None and env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise InputError(f"BRAINFM_ATLAS points to {p}, which is not a file")
        return p
    entry = get_entry(str(spec) if spec is not None else DEFAULT_ATLAS_ID, registry=entries)
    hint = (
        f"The registration atlas {entry['filename']} is not available and could not be downloaded"
        f"{' from ' + entry['url'] if entry.get('url') else ''}. Download it yourself, then set the "
        f"environment variable BRAINFM_ATLAS=/path/to/{entry['filename']} or pass --atlas PATH."
    )
    return _cached_or_download(entry, cache_dir() / "atlases", hint)


def download(url: str, dest: PathLike, *, sha256: str, progress: Optional[Callable[[float, str], None]] = None,
             timeout: float = 60.0) -> Path:
    """Download ``url`` (http, https or file) to ``dest`` atomically, verifying its SHA-256.

    A partial or corrupt download never replaces ``dest``. Raises :class:`ModelNotAvailableError`
    when the URL cannot be read and :class:`CheckpointError` on a checksum mismatch.
    """
    scheme = urllib.parse.urlparse(url).scheme.lower()
    if scheme not in ("http", "https", "file"):
        raise InputError(f"refusing to download from {url!r}: only http, https and file URLs are allowed")
    if not sha256:
        raise InputError("download() needs the expected sha256 of the file")
    dest = Path(dest)
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with atomic_output(dest, mode=0o600, fsync=True) as tmp:
        with open(tmp, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (scheme checked)
                    total = int(resp.headers.get("Content-Length") or 0)
                    got = sha256_stream(resp, sink=out, chunk_size=1 << 20,
                                        on_chunk=chunk_progress(progress, total, f"downloading {dest.name}"))
            except (urllib.error.URLError, OSError, ValueError) as e:
                raise ModelNotAvailableError(f"cannot download {url}: {e}") from e
        if got.lower() != sha256.lower():
            raise CheckpointError(
                f"checksum mismatch for {url}: expected sha256 {sha256}, got {got}; "
                "the file may be corrupt or tampered with (nothing was saved)"
            )
    if progress is not None:
        progress(1.0, f"downloaded {dest.name}")
    return dest


def _entries(registry: Entries) -> List[Dict[str, Any]]:
    if registry is None or isinstance(registry, (str, os.PathLike)):
        return load_registry(registry)
    return [dict(e) for e in registry]


def _manual_model_hint(entry: Dict[str, Any]) -> str:
    return (
        f"The model {entry['id']!r} is not in the model store and has no download link (the public release is a "
        f"personal cloud link). Download {entry['filename']} yourself (see the project README, 'Get a model'), then "
        f"add it once with `brainfm models add PATH/TO/{entry['filename']}` or run with "
        f"--model PATH/TO/{entry['filename']}."
    )


def _cached_or_download(entry: Dict[str, Any], folder: Path, hint: str) -> Path:
    path = folder / entry["filename"]
    expected = entry.get("sha256")
    if path.is_file():
        if expected and cached_sha256(path) != expected:
            raise CheckpointError(
                f"checksum mismatch for cached {path}: the file may be corrupt or tampered with; delete it "
                "and run again to download a fresh copy"
            )
        return path
    if not entry.get("url"):
        raise ModelNotAvailableError(hint)
    if not expected:
        raise ModelNotAvailableError(f"registry entry {entry['id']!r} has a URL but no sha256; refusing to download")
    marker = _failure_note(path)
    last = last_download_failure(path)
    if last is not None:
        raise ModelNotAvailableError(f"{hint} (not tried again: {last}; the next try is made "
                                     f"{RETRY_AFTER_S // 60} minutes after that one, or at once after deleting {marker})")
    try:
        got = download(entry["url"], path, sha256=expected)
    except ModelNotAvailableError as e:
        _note_failure(marker, str(e))
        raise ModelNotAvailableError(f"{hint} ({e})") from e
    marker.unlink(missing_ok=True)
    return got


#: after a failed download of a registry file, no new try for this many seconds: a network that drops the
#: connection (rather than refusing it) makes every try wait for the timeout, in every new process
RETRY_AFTER_S = 600
#: the note of the last failed download, beside where the file would be
UNREACHABLE_SUFFIX = ".unreachable"


def last_download_failure(path: PathLike) -> Optional[str]:
    """What the last failed download of the registry file meant for ``path`` said, and how long ago,
    when it failed less than :data:`RETRY_AFTER_S` ago (no new try is made until then); else None.

    >>> import tempfile
    >>> last_download_failure(Path(tempfile.mkdtemp()) / "gca.mgz") is None
    True
    """
    import time

    marker = _failure_note(path)
    try:
        age = time.time() - marker.stat().st_mtime
        if not 0 <= age < RETRY_AFTER_S:
            return None
        return f"{marker.read_text(encoding='utf-8').strip()} ({age / 60:.0f} min ago)"
    except OSError:
        return None


def _failure_note(path: PathLike) -> Path:
    """Where a failed download of ``path`` is noted: beside it, with :data:`UNREACHABLE_SUFFIX`."""
    return Path(path).with_name(Path(path).name + UNREACHABLE_SUFFIX)


def _note_failure(marker: Path, message: str) -> None:
    """Remember a failed download (:func:`last_download_failure`); a cache that cannot be written is skipped."""
    try:
        marker.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with atomic_output(marker, mode=0o600) as tmp:
            Path(tmp).write_text(message[:2000], encoding="utf-8")
    except OSError:
        pass
