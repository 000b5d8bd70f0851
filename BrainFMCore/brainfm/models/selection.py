"""Which model ``default`` means, and the models a user can choose from.

Default order (the best available model):

1. the official BrainFM model added to the store (``brainfm models add brainfm_pretrained.pth``;
   the one named ``official`` first, else the latest added),
2. the bundled compact model, when it is present and its measured quality level is ``preview``
   or ``release`` (:mod:`brainfm.evaluation.quality`); a below-preview bundled model is still
   usable explicitly (``--model bundled``),
3. otherwise :class:`~brainfm.errors.ModelNotAvailableError` with :data:`NO_MODEL_MESSAGE`, which
   says exactly how to get a model.

:func:`available_models` lists the store's models and the bundled one as plain dicts (what
``brainfm models list --json`` prints and the Slicer selector shows). Torch-free.

>>> OFFICIAL_PAGE
'https://github.com/jhuldr/BrainFM#downloads'
>>> "brainfm models add" in NO_MODEL_MESSAGE
True
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from brainfm.errors import BrainFMError, ModelNotAvailableError
from brainfm.labels.schemes import scheme_text
from brainfm.models import store
from brainfm.models.jsonfile import read_json
from brainfm.models.quality import quality_label, unreliable_tasks
from brainfm.models.task_heads import tasks_for_heads

#: the authors' page with the download link of the official weights (README, section "Downloads")
OFFICIAL_PAGE = "https://github.com/jhuldr/BrainFM#downloads"
OFFICIAL_FILENAME = "brainfm_pretrained.pth"
NO_MODEL_MESSAGE = (
    "No BrainFM model is available yet. Get the official BrainFM weights: download "
    f"{OFFICIAL_FILENAME} (about 1 GB) from the 'Downloads' section of {OFFICIAL_PAGE}, then run "
    f"`brainfm models add PATH/TO/{OFFICIAL_FILENAME}` once (in Slicer: the Add model file... button under the model selector). "
    "Every command and module then uses it by default. A fine-tuned model is added the same way "
    "and chosen with --model NAME."
)
DEFAULT_LEVELS = ("preview", "release")


@dataclass(frozen=True)
class DefaultModel:
    """What ``default`` resolves to: ``spec`` (a store name or ``bundled``), the weights ``path``
    and ``reason`` (one sentence for users)."""

    spec: str
    kind: str  # "store" | "bundled"
    path: Path
    reason: str


def bundled_paths() -> "tuple[Path, Path]":
    """``(weights, sidecar)`` of the bundled compact model (they may not exist)."""
    from brainfm.models import registry

    try:
        entry = registry.get_entry(registry.DEFAULT_MODEL_ID)
        filename = str(entry.get("filename") or "brainfm-compact.safetensors")
    except BrainFMError:
        filename = "brainfm-compact.safetensors"
    weights = registry.BUNDLED_DIR / filename
    return weights, weights.with_suffix(".json")


def bundled_model() -> Optional[Dict[str, Any]]:
    """Description of the bundled model from its JSON sidecar (None when it is not present)."""
    weights, sidecar = bundled_paths()
    if not weights.is_file():
        return None
    try:
        meta = read_json(sidecar, default={}) or {}
    except BrainFMError:
        meta = {}
    heads = {str(k): int(v) for k, v in (meta.get("heads") or {}).items()}
    quality = meta.get("quality") if isinstance(meta.get("quality"), dict) else {}
    voxel_mm = float(meta.get("voxel_mm") or 1.0)
    return {
        "name": "bundled", "format": "native", "model_name": str(meta.get("name") or "brainfm-compact"),
        "version": str(meta.get("version") or ""), "path": str(weights), "sha256": meta.get("weights_sha256"),
        "size_bytes": weights.stat().st_size, "heads": heads, "tasks": tasks_for_heads(heads, voxel_mm=voxel_mm),
        "label_scheme": scheme_text(meta.get("label_scheme")), "voxel_mm": voxel_mm,
        "quality": dict(quality or {}), "storage": "bundled",
    }


def verify_bundled(*, progress: Any = None, cancel: Any = None) -> "tuple[Path, str]":
    """Hash the bundled model's weights again (ignoring the cache) and compare with both records of
    it: the package's model registry and the model's JSON sidecar. Returns ``(weights, sha256)``;
    :class:`~brainfm.errors.ModelNotAvailableError` when it is not in the package,
    :class:`~brainfm.errors.CheckpointError` when a record differs.

    >>> path, digest = verify_bundled()
    >>> path.name, len(digest)
    ('brainfm-compact.safetensors', 64)
    """
    from brainfm.errors import CheckpointError
    from brainfm.models import hashing, registry

    described = bundled_model()
    if described is None:
        raise ModelNotAvailableError(registry.BUNDLED_MISSING_MESSAGE)
    weights, sidecar = bundled_paths()
    got = hashing.cached_sha256(weights, refresh=True, progress=progress, cancel=cancel)
    records = (("the model registry", registry.get_entry(registry.DEFAULT_MODEL_ID).get("sha256")),
               (f"its description {sidecar.name}", described.get("sha256")))
    for where, want in records:
        if want != got:
            raise CheckpointError(f"checksum mismatch for the bundled model ({weights}): sha256 {got}, recorded "
                                  f"{want} in {where}; the package's files were changed: reinstall brainfm")
    return weights, got


def official_in_store(models: Optional[List[store.StoredModel]] = None) -> Optional[store.StoredModel]:
    """The store's official BrainFM model: the one named ``official``, else the latest added."""
    officials = [m for m in (store.list_models() if models is None else models) if m.is_official]
    named = [m for m in officials if m.name == "official"]
    return (named or officials[-1:] or [None])[0]


def default_model() -> DefaultModel:
    """The best available model (see the module docstring); :class:`ModelNotAvailableError` if none."""
    models = store.list_models()
    official = official_in_store(models)
    if official is not None:
        return DefaultModel(official.name, "store", official.path,
                            f"the official BrainFM model added to the store as {official.name!r}")
    bundled = bundled_model()
    level = str((bundled or {}).get("quality", {}).get("level") or "")
    if bundled is not None and level in DEFAULT_LEVELS:
        return DefaultModel("bundled", "bundled", Path(bundled["path"]),
                            f"the bundled compact model ({level} quality)")
    notes = []
    if bundled is not None:
        label = quality_label(bundled["quality"]) or "of unmeasured quality"
        notes.append(f"The bundled compact model is {label}, so it is not used by default "
                     "(choose it explicitly with --model bundled).")
    others = [m.name for m in models]
    if others:
        notes.append(f"Models in your store (choose one with --model NAME): {', '.join(others)}.")
    raise ModelNotAvailableError(" ".join([NO_MODEL_MESSAGE] + notes))


def quality_text(quality: Optional[Dict[str, Any]]) -> str:
    """``release`` / ``preview (merged-17 Dice ...)`` / ``below preview quality (...)`` / ``unmeasured``,
    followed by ``; bias field fitted to the segmentation`` and ``; registration fitted to the
    segmentations`` when its measured quality says the head of that task is not reliable
    (:func:`brainfm.models.quality.unreliable_tasks`)."""
    q = quality or {}
    text = (quality_label(q) or str(q["level"])) if q.get("level") else "unmeasured"
    if "bias" in unreliable_tasks(q):
        text += "; bias field fitted to the segmentation"
    if "reg" in unreliable_tasks(q):
        text += "; registration fitted to the segmentations"
    return text


def available_models() -> List[Dict[str, Any]]:
    """The store's models, then the bundled model when present, as JSON-ready dicts.

    Keys: ``name`` (what ``--model`` takes), ``format``, ``model_name``, ``version``, ``path``,
    ``sha256``, ``size_bytes``, ``heads``, ``tasks``, ``label_scheme``, ``voxel_mm``, ``quality``,
    ``quality_text``, ``storage``, ``is_default`` (exactly one entry, or none when no model is
    good enough to be the default).
    """
    out: List[Dict[str, Any]] = []
    for m in store.list_models():
        d = m.to_dict()
        d.pop("file", None)
        out.append(d)
    bundled = bundled_model()
    if bundled is not None:
        out.append(bundled)
    try:
        chosen: Optional[str] = default_model().spec
    except ModelNotAvailableError:
        chosen = None
    for d in out:
        d["quality_text"] = quality_text(d.get("quality"))
        d["is_default"] = d["name"] == chosen
    return out


def describe_file(path: "str | Path") -> Optional[Dict[str, Any]]:
    """What is known about the weights file ``path`` without loading it: its store (or bundled)
    record, else the JSON sidecar of a native model, else None (a ``.pth`` outside the store)."""
    p = Path(path).expanduser()
    try:
        p = p.resolve()
    except OSError:
        return None
    for d in available_models():
        if Path(str(d.get("path"))).resolve() == p:
            return d
    if p.suffix in (".safetensors", ".json"):
        try:
            meta = read_json(p.with_suffix(".json"), default=None)
        except BrainFMError:
            meta = None
        if isinstance(meta, dict) and meta.get("format") == "brainfm-native":
            heads = {str(k): int(v) for k, v in (meta.get("heads") or {}).items()}
            quality = meta.get("quality") if isinstance(meta.get("quality"), dict) else {}
            voxel_mm = float(meta.get("voxel_mm") or 1.0)
            return {"name": None, "format": "native", "model_name": meta.get("name"), "heads": heads,
                    "tasks": tasks_for_heads(heads, voxel_mm=voxel_mm), "label_scheme": scheme_text(meta.get("label_scheme")),
                    "voxel_mm": voxel_mm, "quality": dict(quality or {}),
                    "quality_text": quality_text(quality), "sha256": meta.get("weights_sha256")}
    return None
