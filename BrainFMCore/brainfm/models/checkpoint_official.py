"""Reader of the official BrainFM training checkpoint (``brainfm_pretrained.pth``).

The file is a ``torch.save`` dict with ``model`` (state dict of the joiner: ``backbone.*`` and
``head.final_conv_<name>.*``), ``optimizer``, ``epoch``, ``submit_args``, ``gen_args``, ``train_args``
(``argparse.Namespace`` trees) and ``best_val_stats``. The architecture is inferred from the tensor
shapes; ``train_args.unit_feat``/``num_groups`` and ``gen_args.max_surf_distance`` are read when present.

>>> from brainfm.models.checkpoint_official import is_official
>>> is_official({"model": {}, "train_args": None}), is_official({"model": {}, "args": None})
(True, False)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from brainfm.errors import CheckpointError
from brainfm.models.common import (
    BRAINFM_OUTPUT_UNITS, LoadedModel, ModelInfo, build_strict, extract_state_dict, get_arg, infer_config,
    label_scheme_for, namespace_to_dict, normalize_keys,
)
from brainfm.models.registry import DEFAULT_ATLAS_ID, get_entry

OFFICIAL_KEYS = ("train_args", "gen_args", "submit_args")
_TRAIN_ARGS_KEPT = ("num_levels", "f_maps", "unit_feat", "layer_order", "num_groups", "out_channels",
                    "task_f_maps", "backbone", "in_channels")
_GEN_ARGS_KEPT = ("tasks", "n_labels", "max_surf_distance", "left_hemis_only")


def is_official(obj: Any) -> bool:
    """True for a loaded official BrainFM checkpoint dict (has ``train_args``/``gen_args``/``submit_args``)."""
    return isinstance(obj, Mapping) and any(k in obj for k in OFFICIAL_KEYS)


def atlas_reference() -> Optional[Dict[str, Any]]:
    """``{name, sha256, filename}`` of the atlas the official registration head predicts into."""
    try:
        e = get_entry(DEFAULT_ATLAS_ID)
    except Exception:  # noqa: BLE001 - registry unreadable: keep the name only
        return {"name": DEFAULT_ATLAS_ID, "sha256": None}
    return {"name": e["id"], "sha256": e.get("sha256"), "filename": e.get("filename")}


def load_official(obj: Mapping[str, Any], path: Path, sha256: str, *, map_location: Any = "cpu",
                  unit_feat: Optional[bool] = None, extra: Optional[Mapping[str, Any]] = None) -> LoadedModel:
    """Build the network from a loaded official checkpoint dict ``obj`` (strict).

    ``extra`` holds additional (already normalised) tensors, e.g. from separate head files.
    """
    state = extract_state_dict(obj, path)
    if extra:
        state = normalize_keys(state)
        dup = sorted(set(state) & set(extra))
        if dup:
            raise CheckpointError(f"head files repeat tensors already in {path.name}: {', '.join(dup)}")
        state = {**state, **extra}
    train_args, gen_args = obj.get("train_args"), obj.get("gen_args")
    uf = unit_feat if unit_feat is not None else bool(get_arg(train_args, "unit_feat", default=True))
    groups = int(get_arg(train_args, "num_groups", default=8) or 8)
    config = infer_config(state, unit_feat=uf, num_groups=groups)
    net = build_strict(state, config, device=map_location)
    units = dict(BRAINFM_OUTPUT_UNITS)
    clamp = get_arg(gen_args, "max_surf_distance")
    if isinstance(clamp, (int, float)) and not isinstance(clamp, bool):
        units["distance_clamp"] = float(clamp)
    epoch = obj.get("epoch")
    provenance: Dict[str, Any] = {
        "source_file": path.name,
        "epoch": int(epoch) if isinstance(epoch, int) else None,
        "train_args": {k: namespace_to_dict(get_arg(train_args, k)) for k in _TRAIN_ARGS_KEPT
                       if get_arg(train_args, k) is not None},
        "gen_args": {k: namespace_to_dict(get_arg(gen_args, k)) for k in _GEN_ARGS_KEPT
                     if get_arg(gen_args, k) is not None},
        "unit_feat_source": "argument" if unit_feat is not None else
        ("train_args" if get_arg(train_args, "unit_feat") is not None else "default (True)"),
    }
    info = ModelInfo(
        name="brainfm-official",
        version=f"epoch-{epoch}" if isinstance(epoch, int) else "unknown",
        format="brainfm-official",
        sha256=sha256,
        config=config,
        label_scheme=label_scheme_for(config.heads),
        atlas=atlas_reference() if "registration" in config.heads else None,
        provenance=provenance,
        output_units=units,
        source=str(path),
    )
    return LoadedModel(net, info)
