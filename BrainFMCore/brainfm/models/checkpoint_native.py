"""Native checkpoint format: ``<stem>.safetensors`` (weights) + ``<stem>.json`` (everything else).

The JSON sidecar holds ``format`` ("brainfm-native"), ``format_version``, ``name``, ``version``,
``architecture`` (:meth:`ModelConfig.to_dict`), ``heads``, ``label_scheme``, ``atlas`` ``{name, sha256}``,
``provenance`` (training runs, iterations, ...), ``output_units``, ``voxel_mm`` (the working grid;
1 when absent), ``quality`` (measured level and Dice, see :mod:`brainfm.evaluation.quality`; may be
empty), ``weights_file``, ``weights_dtype`` and ``weights_sha256``; the weights' SHA-256 is verified on every load. Both files are written
atomically (:func:`brainfm.io.atomic.atomic_output`); safetensors cannot run code.

>>> import tempfile, pathlib, torch
>>> from brainfm.models import BrainFMNet, ModelConfig, save_native, load_model
>>> net = BrainFMNet(ModelConfig(f_maps=8, num_levels=3, heads={"T1": 1}))
>>> w, j = save_native(net, pathlib.Path(tempfile.mkdtemp()) / "tiny", info={"name": "tiny", "version": "1"})
>>> w.name, j.name
('tiny.safetensors', 'tiny.json')
>>> loaded = load_model(j)
>>> loaded.info.format, loaded.info.name, len(loaded.info.sha256)
('native', 'tiny', 64)
"""
from __future__ import annotations

import datetime
import json
import os
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch

from brainfm._version import __version__
from brainfm.errors import CheckpointError
from brainfm.io.atomic import atomic_output
from brainfm.models.common import (
    BRAINFM_OUTPUT_UNITS, LoadedModel, ModelInfo, build_strict, label_scheme_for,
)
from brainfm.models.config import ModelConfig
from brainfm.models.net import BrainFMNet
from brainfm.models.hashing import cached_sha256, sha256_file

FORMAT = "brainfm-native"
FORMAT_VERSION = 1
PathLike = Union[str, "os.PathLike[str]"]


def native_paths(path: PathLike) -> Tuple[Path, Path]:
    """``(weights_path, json_path)`` for a stem, a ``.safetensors`` path or a ``.json`` path."""
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def is_native(path: PathLike) -> bool:
    """True when ``path`` names a native checkpoint (by suffix, or a stem whose sidecar exists)."""
    p = Path(path)
    return p.suffix in (".safetensors", ".json") or (not p.exists() and native_paths(p)[1].exists())


def _info_fields(info: Union[ModelInfo, Mapping[str, Any], None]) -> Dict[str, Any]:
    if info is None:
        return {}
    if is_dataclass(info):
        d = {k: getattr(info, k) for k in ("name", "version", "label_scheme", "atlas", "provenance", "output_units",
                                           "voxel_mm", "input_antialias", "test_time_flip", "quality")}
        return d
    return dict(info)


def _atomic_write(dest: Path, write) -> str:
    """Write via ``write(tmp_path)`` (:func:`brainfm.io.atomic.atomic_output`: a temporary file next
    to ``dest``, flushed to the disk, then ``os.replace``); returns its sha256."""
    # model files are meant to be shared/read by others: 0o644
    with atomic_output(dest, mode=0o644, fsync=True) as tmp:
        write(str(tmp))
        digest = sha256_file(tmp)
    return digest


def save_native(net: BrainFMNet, path: PathLike, *, info: Union[ModelInfo, Mapping[str, Any], None] = None,
                fp16: bool = False) -> Tuple[Path, Path]:
    """Write ``net`` as ``<stem>.safetensors`` + ``<stem>.json``; returns both paths.

    ``info`` (a :class:`ModelInfo` or a mapping) supplies ``name``, ``version``, ``label_scheme``,
    ``atlas``, ``provenance`` and ``output_units``; the architecture always comes from ``net.config``.
    ``fp16`` halves the file size (weights are cast back to float32 on load).
    """
    from safetensors.torch import save_file

    fields = _info_fields(info)
    config: ModelConfig = net.config
    weights_path, json_path = native_paths(path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if fp16 else torch.float32
    tensors = {k: v.detach().to("cpu", dtype=dtype).contiguous().clone() for k, v in net.state_dict().items()}
    digest = _atomic_write(weights_path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    units = fields.get("output_units") or dict(BRAINFM_OUTPUT_UNITS)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": str(fields.get("name") or weights_path.stem),
        "version": str(fields.get("version") or "0"),
        "architecture": config.to_dict(),
        "heads": dict(config.heads),
        "label_scheme": fields.get("label_scheme") or label_scheme_for(config.heads),
        "atlas": fields.get("atlas"),
        "provenance": fields.get("provenance") or {},
        "output_units": units,
        "voxel_mm": float(fields.get("voxel_mm") or 1.0),
        "input_antialias": bool(fields.get("input_antialias", True)),
        "test_time_flip": bool(fields.get("test_time_flip", False)),
        "quality": dict(fields.get("quality") or {}),
        "weights_file": weights_path.name,
        "weights_dtype": "float16" if fp16 else "float32",
        "weights_sha256": digest,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    meta["brainfm_version"] = __version__
    text = json.dumps(meta, indent=2, sort_keys=False, default=_json_default) + "\n"
    _atomic_write(json_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return weights_path, json_path


def _json_default(obj: Any) -> Any:
    if is_dataclass(obj):
        return asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return repr(obj)


def read_native_meta(json_path: Path) -> Dict[str, Any]:
    """Parse and check the JSON sidecar (:class:`CheckpointError` when absent or malformed)."""
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"native checkpoint sidecar {json_path} is missing (it must sit next to the "
                              ".safetensors file with the same name)") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read native checkpoint metadata {json_path}: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{json_path} is not a BrainFM native checkpoint description (format != {FORMAT!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{json_path} has format_version {version!r}; this brainfm reads up to "
                              f"{FORMAT_VERSION} (update brainfm)")
    for key in ("architecture", "weights_sha256"):
        if key not in meta:
            raise CheckpointError(f"{json_path} lacks the required field {key!r}")
    return meta


def _voxel_mm(meta: Mapping[str, Any], json_path: Path) -> float:
    """The network-frame voxel size of a native model (1 mm when the sidecar predates the field)."""
    v = meta.get("voxel_mm", 1.0)
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise CheckpointError(f"{json_path}: voxel_mm must be a number, got {v!r}") from None
    if not 0.25 <= v <= 8.0:
        raise CheckpointError(f"{json_path}: voxel_mm {v} is outside [0.25, 8] mm")
    return v


def load_native(path: PathLike, *, expected_sha256: Optional[str] = None, map_location: Any = "cpu",
                unit_feat: Optional[bool] = None) -> LoadedModel:
    """Load a native checkpoint (verifies the weights' SHA-256 against the JSON and ``expected_sha256``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights_default, json_path = native_paths(path)
    meta = read_native_meta(json_path)
    weights_file = str(meta.get("weights_file") or weights_default.name)
    if Path(weights_file).name != weights_file or weights_file in (".", ".."):
        raise CheckpointError(f"{json_path}: weights_file {weights_file!r} must be a file name in the same folder")
    weights_path = json_path.with_name(weights_file)
    if not weights_path.is_file():
        raise CheckpointError(f"native weights file {weights_path} is missing")
    digest = cached_sha256(weights_path)
    for label, want in (("the JSON sidecar", meta["weights_sha256"]), ("the expected value", expected_sha256)):
        if want and str(want).lower() != digest:
            raise CheckpointError(
                f"checksum mismatch for {weights_path}: sha256 {digest} differs from {label} ({want}); "
                "the file may be corrupt or tampered with"
            )
    config = ModelConfig.from_dict(meta["architecture"])
    if unit_feat is not None:
        config.unit_feat = bool(unit_feat)
    try:
        state = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot read {weights_path}: {e}") from e
    net = build_strict(state, config, device=map_location)
    provenance = dict(meta.get("provenance") or {})
    info = ModelInfo(
        name=str(meta.get("name") or weights_path.stem),
        version=str(meta.get("version") or "0"),
        format="native",
        sha256=digest,
        config=config,
        label_scheme=meta.get("label_scheme"),
        atlas=meta.get("atlas"),
        provenance=provenance,
        output_units=dict(meta.get("output_units") or BRAINFM_OUTPUT_UNITS),
        source=str(weights_path),
        voxel_mm=_voxel_mm(meta, json_path),
        input_antialias=bool(meta.get("input_antialias", True)),
        test_time_flip=bool(meta.get("test_time_flip", False)),
        quality=dict(meta.get("quality") or {}) if isinstance(meta.get("quality"), dict) else {},
    )
    return LoadedModel(net, info)
