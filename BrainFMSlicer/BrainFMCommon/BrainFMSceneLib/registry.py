"""Model choices for the GUI and other front ends: :func:`list_models` (the local model store,
the bundled model and the best available default), checksums, and the older custom-file registry.

:func:`list_models` is the one function a front end needs to offer models: it returns
:class:`ModelChoice` records whose ``id`` is what ``brainfm run --model`` takes and what parameter
nodes store (``default``, a store name, ``bundled``); ``title`` is only for display. It reads the
store through the engine's torch-free :mod:`brainfm.models.selection`, so it is fast enough to call
whenever a panel is shown; without the ``brainfm`` package it returns only an unavailable
``default`` entry saying so. :class:`ModelRegistry` keeps the custom weights files registered by
earlier versions (a small JSON file). Checksums are SHA-256 (:func:`sha256_file`; the library keeps
its own copy so that it imports before ``brainfm`` is installed).

>>> import tempfile, pathlib
>>> from BrainFMSceneLib.registry import ModelRegistry
>>> tmp = pathlib.Path(tempfile.mkdtemp())
>>> weights = tmp / "my_model.pth"; _ = weights.write_bytes(b"not really weights")
>>> reg = ModelRegistry(custom_file=tmp / "custom.json", cache_setting=str(tmp / "cache"))
>>> choice = reg.add_custom(weights, title="My fine-tuned model")
>>> choice.kind, choice.spec == str(weights), len(choice.sha256)
('custom', True, 64)
>>> [c.id for c in ModelRegistry(custom_file=tmp / "custom.json").choices() if c.kind == "custom"]
['custom:my_model']
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from BrainFMSceneLib._errors import CheckpointError, InputError, ModelNotAvailableError

PathLike = Union[str, Path]
DEFAULT_CACHE = Path("~/.cache/brainfm")
OFFICIAL_ID = "brainfm-official"
BUNDLED_ID = "default"
#: id of the "best available model" entry (what ``--model`` uses when nothing is chosen)
DEFAULT_ID = "default"
#: the authors' page with the download link of the official weights (README, section "Downloads")
OFFICIAL_PAGE = "https://github.com/jhuldr/BrainFM#downloads"
NOT_INSTALLED_MESSAGE = ("The brainfm package is not installed yet: it is installed on the first Apply "
                         "(or with Advanced > Diagnostics > Install / update dependencies).")


def sha256_file(path: PathLike, *, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file (streamed)."""
    # the engine's sha256_file (brainfm.models.hashing) is not used: this library imports before brainfm is installed
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def verify_checksum(path: PathLike, expected_sha256: Optional[str]) -> str:
    """SHA-256 of ``path``; raises :class:`CheckpointError` when it differs from the expected one."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotAvailableError(f"model file not found: {path}")
    actual = sha256_file(path)
    if expected_sha256 and actual.lower() != expected_sha256.strip().lower():
        raise CheckpointError(
            f"checksum mismatch for {path.name}: expected SHA-256 {expected_sha256.lower()}, got {actual}. "
            "The file may be corrupt, incomplete or tampered with; download it again.")
    return actual


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the model selector.

    ``spec`` is what goes to ``brainfm run --model``; ``available`` is False (with ``message``
    saying why) when the weights are not on this machine.
    """

    id: str
    title: str
    kind: str  # "default" | "store" | "bundled" | "file" (and "official" | "custom" of ModelRegistry)
    spec: str
    path: Optional[str] = None
    sha256: Optional[str] = None
    available: bool = True
    message: str = ""
    description: str = ""
    format: str = ""
    size_bytes: int = 0
    heads: Dict[str, int] = field(default_factory=dict)
    tasks: Tuple[str, ...] = ()  # empty: not known without loading the file
    label_scheme: Optional[str] = None
    voxel_mm: float = 1.0
    quality: Dict[str, Any] = field(default_factory=dict)
    quality_text: str = ""
    is_default: bool = False

    def supports(self, tasks: Iterable[str]) -> bool:
        """True when the model can do every task in ``tasks`` (unknown heads: assumed yes)."""
        return not self.tasks or all(t in self.tasks for t in tasks)

    def details(self) -> str:
        """One line for users: format, size, heads, label scheme, voxel size and quality."""
        if not self.available:
            return self.message
        if not self.format:
            return self.description or (self.path or self.spec)
        tasks = ", ".join(t for t in self.tasks if t != "feat") or "features only"
        size = (f"{self.size_bytes / 1e9:.2f} GB" if self.size_bytes >= 1e9 else f"{self.size_bytes / 1e6:.1f} MB")
        return (f"{self.format}, {size}, {len(self.heads)} heads ({tasks}), labels {self.label_scheme or '-'}, "
                f"{self.voxel_mm:g} mm voxels, quality: {self.quality_text or 'unmeasured'}")


def _entry_get(entry: Any, key: str, default: Any = None) -> Any:
    return entry.get(key, default) if isinstance(entry, Mapping) else getattr(entry, key, default)


class ModelRegistry:
    """Model choices, cache folder, checksums and custom-entry persistence.

    :param custom_file: JSON file of custom entries (default ``<cache>/slicer_custom_models.json``).
    :param cache_setting: cache folder from the Slicer settings (``BRAINFM_HOME`` wins).
    :param official_path: where the user put the official BrainFM weights (settings).
    """

    def __init__(self, *, custom_file: Optional[PathLike] = None, cache_setting: Optional[str] = None,
                 official_path: Optional[str] = None) -> None:
        self.cache_setting = cache_setting or None
        self.official_path = official_path or None
        self.custom_file = Path(custom_file) if custom_file else self.cache_dir() / "slicer_custom_models.json"
        self._custom: Dict[str, Dict[str, Any]] = self._load_custom()

    # -- cache ----------------------------------------------------------------------------------
    def cache_dir(self) -> Path:
        """``$BRAINFM_HOME`` > the settings value > ``~/.cache/brainfm`` (not created here)."""
        env = os.environ.get("BRAINFM_HOME")
        return Path(env or self.cache_setting or DEFAULT_CACHE).expanduser()

    def environment_updates(self) -> Dict[str, str]:
        """Environment for the child so that the engine uses the same cache folder."""
        return {"BRAINFM_HOME": str(self.cache_dir())}

    # -- choices --------------------------------------------------------------------------------
    def _engine_entries(self) -> List[Any]:
        try:
            from brainfm.models import registry as engine_registry
        except ImportError:
            return []
        try:
            return list(engine_registry.list_entries())
        except Exception:  # noqa: BLE001 - a broken engine registry must not hide custom models
            return []

    def bundled_choice(self) -> ModelChoice:
        """The bundled default model (unavailable with the engine's message when absent)."""
        title = "BrainFM compact (bundled)"
        try:
            from brainfm.models import registry as engine_registry
        except ImportError:
            return ModelChoice(BUNDLED_ID, title, "bundled", "default", available=False,
                               message="The brainfm package is not installed yet (it is installed on first Apply).")
        try:
            path = engine_registry.resolve_model("bundled")
        except Exception as exc:  # noqa: BLE001 - ModelNotAvailableError carries the user message
            return ModelChoice(BUNDLED_ID, title, "bundled", "bundled", available=False, message=str(exc))
        return ModelChoice(BUNDLED_ID, title, "bundled", "bundled", path=str(path))

    def official_choice(self) -> ModelChoice:
        """The official BrainFM weights (user-downloaded file; checked against the registry SHA-256)."""
        entry = next((e for e in self._engine_entries() if _entry_get(e, "id") == OFFICIAL_ID), None)
        sha = _entry_get(entry, "sha256") if entry is not None else None
        filename = _entry_get(entry, "filename", "brainfm_pretrained.pth") if entry is not None else "brainfm_pretrained.pth"
        candidates = [Path(self.official_path).expanduser()] if self.official_path else []
        candidates.append(self.cache_dir() / "models" / filename)
        path = next((p for p in candidates if p.is_file()), None)
        title = "BrainFM official (pretrained)"
        stored = next((c for c in list_models() if c.kind == "store" and c.format == "brainfm-official"), None)
        if path is None and stored is not None:  # added to the model store: the engine verifies it by name
            return ModelChoice(OFFICIAL_ID, title, "official", stored.id, path=stored.path, sha256=stored.sha256)
        if path is None:
            return ModelChoice(OFFICIAL_ID, title, "official", OFFICIAL_ID, sha256=sha, available=False,
                               message=("Download the official BrainFM weights (brainfm_pretrained.pth) from "
                                        f"{OFFICIAL_PAGE} and add the file (Add model file...)."))
        return ModelChoice(OFFICIAL_ID, title, "official", str(path), path=str(path), sha256=sha)

    def choices(self) -> List[ModelChoice]:
        """Bundled, official, then custom entries (in insertion order)."""
        out = [self.bundled_choice(), self.official_choice()]
        for cid, e in self._custom.items():
            path = Path(e["path"])
            out.append(ModelChoice(cid, e.get("title") or path.name, "custom", str(path), path=str(path),
                                   sha256=e.get("sha256"), available=path.is_file(),
                                   message="" if path.is_file() else f"File not found: {path}",
                                   description=e.get("description", "")))
        return out

    def choice(self, choice_id: str) -> ModelChoice:
        """The choice with id ``choice_id``; :class:`InputError` when unknown."""
        for c in self.choices():
            if c.id == choice_id:
                return c
        raise InputError(f"unknown model choice {choice_id!r}")

    # -- custom entries -------------------------------------------------------------------------
    def add_custom(self, path: PathLike, *, title: Optional[str] = None, sha256: Optional[str] = None,
                   description: str = "") -> ModelChoice:
        """Register a weights file (its SHA-256 is computed, or verified when given) and save."""
        path = Path(path).expanduser().resolve()
        actual = verify_checksum(path, sha256)
        base = f"custom:{path.stem}"
        cid, n = base, 2
        while cid in self._custom and self._custom[cid]["path"] != str(path):
            cid, n = f"{base}-{n}", n + 1
        self._custom[cid] = {"path": str(path), "title": title or path.name, "sha256": actual,
                             "description": description}
        self.save()
        return self.choice(cid)

    def remove_custom(self, choice_id: str) -> None:
        """Forget a custom entry (the file itself is left alone) and save."""
        if self._custom.pop(choice_id, None) is not None:
            self.save()

    def verify(self, choice: ModelChoice) -> str:
        """Check the chosen file against its recorded SHA-256 (bundled: the engine checks)."""
        if not choice.available:
            raise ModelNotAvailableError(choice.message or f"model {choice.title!r} is not available")
        if choice.path is None:
            raise ModelNotAvailableError(f"model {choice.title!r} has no file")
        return verify_checksum(choice.path, choice.sha256)

    def _load_custom(self) -> Dict[str, Dict[str, Any]]:
        if not self.custom_file.is_file():
            return {}
        try:
            data = json.loads(self.custom_file.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise InputError(f"custom model list {self.custom_file} is not valid JSON ({exc})") from None
        entries = data.get("models", {}) if isinstance(data, dict) else {}
        return {str(k): dict(v) for k, v in entries.items() if isinstance(v, dict) and "path" in v}

    def save(self) -> Path:
        """Write the custom entries atomically (temp file in the same folder + ``os.replace``)."""
        self.custom_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".models-", suffix=".json", dir=str(self.custom_file.parent))
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({"version": 1, "models": self._custom}, fh, indent=2)
            os.replace(tmp, self.custom_file)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return self.custom_file

    def as_dicts(self) -> List[Dict[str, Any]]:
        """Choices as plain dicts (for the diagnostics box)."""
        return [asdict(c) for c in self.choices()]


# ------------------------------------------------------------------------------------ model store
def choice_from_dict(d: Mapping[str, Any], **overrides: Any) -> ModelChoice:
    """A :class:`ModelChoice` from one dict of ``brainfm.models.selection.available_models()``."""
    name = str(d.get("name") or "")
    kind = "bundled" if d.get("storage") == "bundled" else "store"
    mark = d.get("quality_text") if d.get("quality_text") not in (None, "", "unmeasured", "release") else ""
    title = (f"Bundled compact model{' - ' + mark if mark else ''}" if kind == "bundled"
             else f"{name} ({d.get('format')}{', ' + mark if mark else ''})")
    values = dict(id=name, title=title, kind=kind, spec=name, path=d.get("path"), sha256=d.get("sha256"),
                  format=str(d.get("format") or ""), size_bytes=int(d.get("size_bytes") or 0),
                  heads={str(k): int(v) for k, v in (d.get("heads") or {}).items()},
                  tasks=tuple(d.get("tasks") or ()), label_scheme=d.get("label_scheme"),
                  voxel_mm=float(d.get("voxel_mm") or 1.0), quality=dict(d.get("quality") or {}),
                  quality_text=str(d.get("quality_text") or ""), is_default=bool(d.get("is_default")))
    values.update(overrides)
    return ModelChoice(**values)


def list_models(*, tasks: Optional[Iterable[str]] = None) -> List[ModelChoice]:
    """The models a user can choose from: the ``default`` entry (the best available model), then
    the models of the local model store, then the bundled model when it is present.

    :param tasks: keep only models that can do at least one of these tasks (``"seg"``, ``"t1"``...);
        the ``default`` entry is always first.
    :return: :class:`ModelChoice` records; pass ``choice.id`` to ``brainfm run --model`` and store it
        in parameter nodes. When no model is available (or ``brainfm`` is not installed) the
        ``default`` entry has ``available=False`` and its ``message`` says what to do.

    >>> choices = list_models()
    >>> choices[0].id, choices[0].kind
    ('default', 'default')
    """
    try:
        from brainfm.errors import ModelNotAvailableError as EngineNoModel
        from brainfm.models import selection
    except ImportError:
        return [ModelChoice(DEFAULT_ID, "Best available model", "default", DEFAULT_ID, available=False,
                            message=NOT_INSTALLED_MESSAGE)]
    found = selection.available_models()
    wanted = set(tasks) if tasks is not None else None
    models = [choice_from_dict(d) for d in found]
    if wanted is not None:
        models = [m for m in models if wanted.intersection(m.tasks)]
    best = next((d for d in found if d.get("is_default")), None)
    if best is None:
        try:
            selection.default_model()
            message = ""
        except EngineNoModel as exc:
            message = str(exc)
        first = ModelChoice(DEFAULT_ID, "No model available yet", "default", DEFAULT_ID, available=False,
                            message=message or selection.NO_MODEL_MESSAGE)
    else:
        chosen = choice_from_dict(best)
        first = choice_from_dict(best, id=DEFAULT_ID, kind="default", spec=DEFAULT_ID, is_default=False,
                             title=f"Best available: {chosen.title}",
                             description=f"the best available model, now {best.get('name')!r}")
    return [first] + models


def choice_for(choice_id: str, choices: Optional[List[ModelChoice]] = None) -> ModelChoice:
    """The choice with ``id == choice_id``; a weights file path (scripts, scenes of earlier versions)
    gives a ``file`` choice; anything else an unavailable choice saying the model is unknown."""
    choice_id = str(choice_id or DEFAULT_ID)
    for c in (list_models() if choices is None else choices):
        if c.id == choice_id:
            return c
    p = Path(choice_id).expanduser()
    if p.is_file():
        return ModelChoice(choice_id, f"File: {p.name}", "file", str(p), path=str(p))
    return ModelChoice(choice_id, f"Not available: {choice_id}", "file", choice_id, available=False,
                       message=(f"The model {choice_id!r} is not in your model store (or cannot do this task): "
                                "choose another model, or add its file with Add model file..."))
