"""Model choices for the GUI: bundled default, official BrainFM weights, custom files.

Settings-agnostic: the Slicer layer reads its ``QSettings`` values and passes them in. The
bundled/official entries come from ``brainfm.models.registry`` when it is importable (it imports
no torch); custom entries are kept in a small JSON file. Checksums are SHA-256.

>>> import tempfile, pathlib
>>> from BrainFMLib.registry import ModelRegistry
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

from BrainFMLib._errors import CheckpointError, InputError, ModelNotAvailableError

PathLike = Union[str, Path]
DEFAULT_CACHE = Path("~/.cache/brainfm")
OFFICIAL_ID = "brainfm-official"
BUNDLED_ID = "default"


def sha256_file(path: PathLike, *, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file (streamed)."""
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
    kind: str  # "bundled" | "official" | "custom"
    spec: str
    path: Optional[str] = None
    sha256: Optional[str] = None
    available: bool = True
    message: str = ""
    description: str = ""


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
            path = engine_registry.resolve_model("default")
        except Exception as exc:  # noqa: BLE001 - ModelNotAvailableError carries the user message
            return ModelChoice(BUNDLED_ID, title, "bundled", "default", available=False, message=str(exc))
        return ModelChoice(BUNDLED_ID, title, "bundled", "default", path=str(path))

    def official_choice(self) -> ModelChoice:
        """The official BrainFM weights (user-downloaded file; checked against the registry SHA-256)."""
        entry = next((e for e in self._engine_entries() if _entry_get(e, "id") == OFFICIAL_ID), None)
        sha = _entry_get(entry, "sha256") if entry is not None else None
        filename = _entry_get(entry, "filename", "brainfm_pretrained.pth") if entry is not None else "brainfm_pretrained.pth"
        candidates = [Path(self.official_path).expanduser()] if self.official_path else []
        candidates.append(self.cache_dir() / "models" / filename)
        path = next((p for p in candidates if p.is_file()), None)
        title = "BrainFM official (pretrained)"
        if path is None:
            return ModelChoice(OFFICIAL_ID, title, "official", OFFICIAL_ID, sha256=sha, available=False,
                               message=("Download the official BrainFM weights (brainfm_pretrained.pth) from the "
                                        "BrainFM project page and select the file."))
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
