"""The local model store: weights a user adds once, then names everywhere ``--model`` is accepted.

``brainfm models add brainfm_pretrained.pth`` loads the file strictly (:func:`~brainfm.models.load_model`:
architecture from the keys, official BrainFM / Brain-ID / native formats, nothing but tensors and
argparse arguments unpickled), records what it is (format, architecture, heads, tasks, label scheme,
working voxel size, measured quality, size, SHA-256) and copies it into the store; afterwards
``--model official`` (and the default model, see :mod:`brainfm.models.selection`) find it.

Layout in the cache folder (env ``BRAINFM_HOME``, else ``~/.cache/brainfm``)::

    models/store.json                        the list of models (locked updates, atomic writes)
    models/store/<sha256[:16]>/<file name>   stored copies or hard links (native: + the .json sidecar)

Files are kept by content, so two processes adding different files at once never write the same
path. ``storage="link"`` hard-links instead of copying (same file system only; the original must
then not be edited in place) and ``storage="reference"`` records the original path. When a name is
resolved its SHA-256 is checked through :mod:`brainfm.models.hashing` (hashed once per change of
the file). Torch is imported only by :func:`add_model`.

>>> check_name("official"), STORAGE
('official', ('copy', 'link', 'reference'))
>>> check_name("../etc")
Traceback (most recent call last):
...
brainfm.errors.InputError: model name '../etc' is not allowed: use letters, digits, '.', '_' and '-' (up to 64 characters, starting with a letter or digit)
"""
from __future__ import annotations

import datetime
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

from brainfm.errors import CheckpointError, InputError, ModelNotAvailableError
from brainfm.io.atomic import atomic_output
from brainfm.labels.schemes import scheme_text
from brainfm.models import hashing
from brainfm.models.jsonfile import read_json, update_json

PathLike = Union[str, "os.PathLike[str]"]
Progress = Optional[Callable[[float, str], None]]
STORE_FORMAT = "brainfm-model-store"
STORE_VERSION = 1
STORAGE = ("copy", "link", "reference")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RESERVED_NAMES = ("default", "bundled")
#: name given to a model added without ``--name``, by format (native models keep their own name)
DEFAULT_NAMES = {"brainfm-official": "official", "brainid": "brainid"}


@dataclass(frozen=True)
class StoredModel:
    """One model of the store (what ``brainfm models list`` shows and Slicer's selector offers)."""

    name: str
    file: str  # "<sha16>/<file name>" inside the store folder, or an absolute path (storage "reference")
    storage: str
    format: str  # 'brainfm-official' | 'brainid' | 'native'
    sha256: str
    size_bytes: int
    heads: Dict[str, int] = field(default_factory=dict)
    tasks: List[str] = field(default_factory=list)
    label_scheme: Optional[str] = None
    voxel_mm: float = 1.0
    quality: Dict[str, Any] = field(default_factory=dict)
    architecture: Dict[str, Any] = field(default_factory=dict)
    model_name: str = ""
    version: str = ""
    sidecar_sha256: Optional[str] = None
    source: str = ""
    added: str = ""

    @property
    def path(self) -> Path:
        """Absolute path of the weights file."""
        return Path(self.file) if self.storage == "reference" else store_dir() / self.file

    @property
    def sidecar(self) -> Optional[Path]:
        """The JSON sidecar of a native model (None for ``.pth`` files)."""
        return self.path.with_suffix(".json") if self.format == "native" else None

    @property
    def is_official(self) -> bool:
        """True for the authors' BrainFM checkpoint (official format)."""
        return self.format == "brainfm-official"

    def to_dict(self) -> Dict[str, Any]:
        """JSON-serialisable form (as stored in ``store.json``) plus the absolute ``path``."""
        return {**asdict(self), "path": str(self.path)}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "StoredModel":
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def store_dir() -> Path:
    """``<cache folder>/models`` (created, private, when the first model is added)."""
    from brainfm.models.registry import cache_dir

    return cache_dir() / "models"


def _private_dir(d: Path) -> None:
    """Create ``d`` and the missing folders above it inside the cache folder, all 0o700."""
    missing = []
    while not d.exists():
        missing.append(d)
        d = d.parent
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)


def store_file() -> Path:
    """``<cache folder>/models/store.json``."""
    return store_dir() / "store.json"


def check_name(name: str) -> str:
    """Return ``name`` if it can name a stored model, else raise :class:`InputError` saying why.

    Letters, digits, ``.``, ``_`` and ``-`` (up to 64, starting with a letter or digit); not
    ``default`` or ``bundled``.
    """
    text = str(name).strip()
    if not NAME_RE.match(text):
        raise InputError(f"model name {name!r} is not allowed: use letters, digits, '.', '_' and '-' "
                         "(up to 64 characters, starting with a letter or digit)")
    if text.lower() in RESERVED_NAMES:
        raise InputError(f"model name {text!r} is reserved; choose another --name")
    return text


def _entries(data: Any) -> List[Dict[str, Any]]:
    if data is None:
        return []
    if not isinstance(data, dict) or data.get("format") != STORE_FORMAT:
        raise InputError(f"{store_file()} is not a BrainFM model store file; move it away to start over")
    version = data.get("format_version")
    if not isinstance(version, int) or version > STORE_VERSION:
        raise InputError(f"{store_file()} has format_version {version!r}; this brainfm reads up to "
                         f"{STORE_VERSION} (update brainfm)")
    return [dict(e) for e in data.get("models", []) if isinstance(e, dict) and "name" in e]


def _document(entries: List[Dict[str, Any]]) -> Dict[str, Any]:
    return {"format": STORE_FORMAT, "format_version": STORE_VERSION, "models": entries}


def list_models() -> List[StoredModel]:
    """The stored models, in the order they were added (reads ``store.json``; no hashing)."""
    return [StoredModel.from_dict(e) for e in _entries(read_json(store_file()))]


def find_model(name: str) -> Optional[StoredModel]:
    """The stored model called ``name`` (None when there is none)."""
    return next((m for m in list_models() if m.name == str(name)), None)


def get_model(name: str) -> StoredModel:
    """The stored model called ``name``; :class:`ModelNotAvailableError` listing the names otherwise."""
    m = find_model(name)
    if m is None:
        names = [x.name for x in list_models()]
        raise ModelNotAvailableError(f"there is no model {name!r} in the model store ({store_file()}); "
                                     f"stored models: {', '.join(names) if names else 'none'} "
                                     "(add one with: brainfm models add FILE)")
    return m


def model_path(name: str, *, progress: Progress = None, cancel: Any = None) -> Path:
    """Path of the stored model ``name`` after checking its SHA-256 (cached per file identity).

    Raises :class:`ModelNotAvailableError` when the file is gone and :class:`CheckpointError` when
    it changed since it was added.
    """
    m = get_model(name)
    _check_files(m, refresh=False, progress=progress, cancel=cancel)
    return m.path


def verify_model(name: str, *, progress: Progress = None, cancel: Any = None) -> StoredModel:
    """Hash the stored files of ``name`` again (ignoring the cache) and compare with the record."""
    m = get_model(name)
    _check_files(m, refresh=True, progress=progress, cancel=cancel)
    return m


def _check_files(m: StoredModel, *, refresh: bool, progress: Progress, cancel: Any) -> None:
    path = m.path
    if not path.is_file():
        raise ModelNotAvailableError(
            f"the weights file of model {m.name!r} is missing: {path}"
            + (" (the model was added by reference and the original file was moved or deleted)"
               if m.storage == "reference" else "")
            + f"; remove it with: brainfm models remove {m.name}, then add the file again")
    got = hashing.cached_sha256(path, refresh=refresh, progress=progress, cancel=cancel)
    if got != m.sha256:
        raise CheckpointError(
            f"checksum mismatch for model {m.name!r} ({path}): sha256 {got}, recorded {m.sha256} when it was "
            f"added; the file is corrupt or was changed. Remove it (brainfm models remove {m.name}) and add "
            "the original file again")
    sidecar = m.sidecar
    if sidecar is not None and m.sidecar_sha256:
        if not sidecar.is_file() or hashing.sha256_file(sidecar) != m.sidecar_sha256:
            raise CheckpointError(f"the description {sidecar} of model {m.name!r} is missing or changed since it "
                                  f"was added; remove the model (brainfm models remove {m.name}) and add it again")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _describe_loaded(info: Any, tasks: List[str]) -> Dict[str, Any]:
    cfg = info.config
    return {
        "format": info.format, "model_name": info.name, "version": info.version,
        "heads": {str(k): int(v) for k, v in cfg.heads.items()}, "tasks": list(tasks),
        "label_scheme": scheme_text(info.label_scheme), "voxel_mm": float(getattr(info, "voxel_mm", 1.0) or 1.0),
        "quality": dict(getattr(info, "quality", {}) or {}),
        "architecture": {"num_levels": cfg.num_levels, "f_maps": cfg.f_maps, "in_channels": cfg.in_channels,
                         "unit_feat": bool(cfg.unit_feat), "num_groups": cfg.num_groups,
                         **({"refine": list(cfg.refine)} if getattr(cfg, "refine", None) else {})},
    }


def _inspect(path: Path, progress: Progress, cancel: Any) -> Dict[str, Any]:
    """Load ``path`` strictly (weights on the meta device: shapes checked, nothing allocated)."""
    from brainfm.models.loading import load_model
    from brainfm.models.task_heads import tasks_for_heads

    if progress is not None:
        progress(0.0, f"checking {path.name}")
    digest = hashing.cached_sha256(path, progress=(lambda f, m: progress(0.45 * f, m)) if progress else None,
                                   cancel=cancel)
    loaded = load_model(path, expected_sha256=digest, map_location="meta")
    info = loaded.info
    tasks = tasks_for_heads(loaded.net.head_names, voxel_mm=float(getattr(info, "voxel_mm", 1.0) or 1.0))
    return {**_describe_loaded(info, tasks), "sha256": info.sha256}


def _copy_verified(src: Path, dest: Path, sha256: str, progress: Progress, cancel: Any,
                   start: float, stop: float) -> None:
    """Copy ``src`` to ``dest`` atomically, hashing the bytes written; a copy that does not match
    ``sha256`` (the file changed meanwhile) is discarded with :class:`CheckpointError`."""
    _private_dir(dest.parent)
    total = max(src.stat().st_size, 1)
    with atomic_output(dest, mode=0o600, fsync=True) as tmp:
        with open(tmp, "wb") as out, open(src, "rb") as inp:
            got = hashing.sha256_stream(inp, sink=out, cancel=cancel, on_chunk=hashing.chunk_progress(
                progress, total, f"copying {src.name} into the store", start=start, stop=stop))
        if got != sha256:
            raise CheckpointError(f"{src} changed while it was being added (sha256 {got}, expected "
                                  f"{sha256}); nothing was stored. Try again once the file is complete")
    hashing.remember(dest, sha256)  # the bytes just written were hashed: no second pass


def _place(src: Path, dest: Path, storage: str, sha256: str, progress: Progress, cancel: Any,
           start: float, stop: float) -> None:
    if dest.is_file() and hashing.cached_sha256(dest) == sha256:
        return  # the same content is already stored (an earlier or a concurrent add)
    if storage == "copy":
        _copy_verified(src, dest, sha256, progress, cancel, start, stop)
        return
    _private_dir(dest.parent)
    with atomic_output(dest, keep_mode=True) as tmp:  # a hard link shares its mode with the linked file
        try:
            os.link(src, tmp)
        except OSError as e:
            raise InputError(f"cannot hard-link {src} into the model store {dest.parent} ({e.strerror or e}); "
                             "the store and the file must be on the same file system: add it without --link "
                             "(copy) or with --reference") from None


def add_model(path: PathLike, *, name: Optional[str] = None, storage: str = "copy",
              progress: Progress = None, cancel: Any = None) -> StoredModel:
    """Add the weights file ``path`` to the store and return its record.

    :param path: official BrainFM ``.pth``, Brain-ID ``.pth`` or native ``.safetensors``/``.json``.
    :param name: what ``--model`` will accept (default: ``official`` / ``brainid`` / the native
        model's own name).
    :param storage: ``copy`` (default), ``link`` (hard link) or ``reference`` (record the path).
    :param progress: ``progress(fraction, message)``; ``cancel``: a :class:`~brainfm.progress.CancelToken`.

    The file is loaded strictly first (a file that is not a BrainFM model is refused with the
    loader's message and nothing is stored). Adding a file whose SHA-256 is already stored returns
    the existing record. A name already used by a different file raises :class:`InputError`.
    """
    if storage not in STORAGE:
        raise InputError(f"storage must be one of {', '.join(STORAGE)}, got {storage!r}")
    if name is not None:
        name = check_name(name)
    src = Path(path).expanduser()
    if src.suffix == ".json":
        src = src.with_suffix(".safetensors")
    if not src.is_file():
        raise InputError(f"model file not found: {src}")
    src = src.resolve()
    info = _inspect(src, progress, cancel)
    sha = info["sha256"]
    same = next((m for m in list_models() if m.sha256 == sha), None)
    if same is not None and (name is None or name == same.name):
        if progress is not None:
            progress(1.0, f"{src.name} is already in the store as {same.name!r}")
        return same
    name = name or check_name(DEFAULT_NAMES.get(info["format"]) or info["model_name"] or src.stem)
    taken = find_model(name)
    if taken is not None:
        raise InputError(f"the store already has a different model called {name!r} ({taken.path}); choose "
                         f"another name with --name, or remove it first: brainfm models remove {name}")
    sidecar_sha = None
    if storage == "reference":
        file_text = str(src)
    else:
        folder = store_dir() / "store" / sha[:16]
        file_text = f"store/{sha[:16]}/{src.name}"
        _place(src, folder / src.name, storage, sha, progress, cancel, 0.45, 0.95)
        if info["format"] == "native":
            side = src.with_suffix(".json")
            side_sha = hashing.sha256_file(side)
            _copy_verified(side, folder / side.name, side_sha, None, cancel, 0.0, 0.0)
    if info["format"] == "native":
        sidecar_sha = hashing.sha256_file(src.with_suffix(".json"))
    record = StoredModel(
        name=name, file=file_text, storage=storage, format=info["format"], sha256=sha,
        size_bytes=int(src.stat().st_size), heads=info["heads"], tasks=info["tasks"],
        label_scheme=info["label_scheme"], voxel_mm=info["voxel_mm"], quality=info["quality"],
        architecture=info["architecture"], model_name=info["model_name"], version=info["version"],
        sidecar_sha256=sidecar_sha, source=str(src), added=_now())
    if storage == "link":
        hashing.cached_sha256(record.path)  # the link changed the inode's ctime: record the digest once

    def insert(data: Any) -> Dict[str, Any]:
        entries = _entries(data)
        clash = next((e for e in entries if e["name"] == name), None)
        if clash is not None and clash.get("sha256") != sha:
            raise InputError(f"another process just added a different model called {name!r}; choose another "
                             "name with --name")
        entries = [e for e in entries if e["name"] != name] + [asdict(record)]
        return _document(entries)

    update_json(store_file(), insert)
    if progress is not None:
        progress(1.0, f"added {name!r}")
    return record


def remove_model(name: str) -> StoredModel:
    """Forget the stored model ``name`` and delete its stored files (a file added by reference is
    left alone, as is content another entry still uses). Returns the removed record."""
    removed: List[StoredModel] = []

    def drop(data: Any) -> Dict[str, Any]:
        entries = _entries(data)
        keep = [e for e in entries if e["name"] != str(name)]
        if len(keep) == len(entries):
            get_model(str(name))  # raises with the list of names
        removed.extend(StoredModel.from_dict(e) for e in entries if e["name"] == str(name))
        gone = removed[0]
        if gone.storage != "reference" and not any(e.get("sha256") == gone.sha256 and e.get("storage") != "reference"
                                                   for e in keep):
            folder = gone.path.parent
            if folder.parent == store_dir() / "store":
                hashing.forget(gone.path)
                shutil.rmtree(folder, ignore_errors=True)
        return _document(keep)

    update_json(store_file(), drop)
    return removed[0]
