"""Reader of Brain-ID checkpoints (``peirong26/Brain-ID``).

Three kinds of files: the pre-training checkpoint (``model``/``optimizer``/``epoch``/``args``, 5-level
backbone, head ``head.final_conv_image``), feature-only files (backbone keys only) and separate
downstream head files (bare ``final_conv_<name>.*`` keys). Head files are merged into the backbone
with ``load_model(backbone_path, head_paths=[...])``. The Brain-ID segmentation head ``seg`` is
renamed ``segmentation`` (the name the rest of the engine uses); ``DepHead`` files (65 input
channels = features + image) are rejected with a clear message. Brain-ID features are not
unit-normalised.

Segmentation channel order: Brain-ID labels its 33 channels with ``label_list_segmentation_with_csf``
(``[0, 14, 15, 16, 24, 77, 85, 2, 3, ...]``: neutral, then left, then right structures), so a 33-class
Brain-ID head uses the ``brainid33`` scheme, not the sorted ``fs33`` list of our native models
(verified against the reference post-processor ``label_list[argmax(seg)]``).

>>> from brainfm.models.checkpoint_brainid import HEAD_RENAMES, brainid_label_scheme
>>> HEAD_RENAMES
{'seg': 'segmentation'}
>>> brainid_label_scheme({"segmentation": 33}), brainid_label_scheme({"image": 1})
('brainid33', None)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from brainfm.errors import CheckpointError
from brainfm.models.common import (
    BRAINID_OUTPUT_UNITS, LoadedModel, ModelInfo, build_strict, extract_state_dict, get_arg, infer_config,
    label_scheme_for, normalize_keys,
)

HEAD_RENAMES = {"seg": "segmentation"}
#: Brain-ID's segmentation channel order by channel count (``label_list_segmentation_with_csf``).
BRAINID_SCHEMES_BY_CHANNELS = {33: "brainid33"}


def brainid_label_scheme(heads: Mapping[str, int]) -> Optional[str]:
    """Label scheme of a Brain-ID model's segmentation head: ``brainid33`` for 33 channels (Brain-ID's
    own channel order), otherwise the generic choice of :func:`~brainfm.models.common.label_scheme_for`."""
    n = heads.get("segmentation", heads.get("seg"))
    if n is not None and int(n) in BRAINID_SCHEMES_BY_CHANNELS:
        return BRAINID_SCHEMES_BY_CHANNELS[int(n)]
    return label_scheme_for(heads)


def is_brainid(obj: Any) -> bool:
    """True for a loaded Brain-ID training checkpoint dict (top-level ``args``)."""
    return isinstance(obj, Mapping) and "args" in obj


def rename_heads(state: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """Apply :data:`HEAD_RENAMES` to ``head.final_conv_<name>.*`` keys; returns (state, renames done)."""
    out: Dict[str, Any] = {}
    done: Dict[str, str] = {}
    for k, v in state.items():
        for old, new in HEAD_RENAMES.items():
            pre = f"head.final_conv_{old}."
            if k.startswith(pre):
                k = f"head.final_conv_{new}." + k[len(pre):]
                done[old] = new
        if k in out:
            raise CheckpointError(f"head {k!r} appears twice after renaming Brain-ID heads {HEAD_RENAMES}")
        out[k] = v
    return out, done


def read_head_state(obj: Any, path: Path) -> Dict[str, Any]:
    """Normalised ``head.*`` tensors of a separate head file; anything else is rejected."""
    state = normalize_keys(extract_state_dict(obj, path))
    others = [k for k in state if not k.startswith("head.")]
    if others:
        raise CheckpointError(f"head file {path} holds non-head tensors: {', '.join(others)}")
    for k, v in state.items():
        if k.endswith(".weight") and getattr(v, "dim", lambda: 0)() == 5 and v.shape[1] == 65:
            raise CheckpointError(
                f"head file {path}: {k} takes 65 input channels (a Brain-ID DepHead that concatenates the "
                "image with the 64 features, used for super-resolution/bias-field fine-tuning); this head "
                "type is not supported"
            )
    return state


def load_brainid(obj: Any, path: Path, sha256: str, *, map_location: Any = "cpu",
                 unit_feat: Optional[bool] = None, extra: Optional[Mapping[str, Any]] = None) -> LoadedModel:
    """Build the network from a loaded Brain-ID checkpoint (or a bare backbone state dict), strictly."""
    state = normalize_keys(extract_state_dict(obj, path))
    if extra:
        dup = sorted(set(state) & set(extra))
        if dup:
            raise CheckpointError(f"head files repeat tensors already in {path.name}: {', '.join(dup)}")
        state = {**state, **extra}
    state, renamed = rename_heads(state)
    args = obj.get("args") if isinstance(obj, Mapping) else None
    uf = bool(unit_feat) if unit_feat is not None else False
    config = infer_config(state, unit_feat=uf, num_groups=int(get_arg(args, "num_groups", default=8) or 8))
    net = build_strict(state, config, device=map_location)
    epoch = obj.get("epoch") if isinstance(obj, Mapping) else None
    info = ModelInfo(
        name="brainid-official" if "image" in config.heads or not config.heads else "brainid-finetuned",
        version=f"epoch-{epoch}" if isinstance(epoch, int) else "unknown",
        format="brainid",
        sha256=sha256,
        config=config,
        label_scheme=brainid_label_scheme(config.heads),
        atlas=None,
        provenance={"source_file": path.name, "epoch": epoch if isinstance(epoch, int) else None,
                    "task": get_arg(args, "task") if isinstance(get_arg(args, "task"), str) else None,
                    "head_renames": renamed, "unit_feat_source": "argument" if unit_feat is not None
                    else "Brain-ID default (False)"},
        output_units=dict(BRAINID_OUTPUT_UNITS),
        source=str(path),
    )
    return LoadedModel(net, info)
