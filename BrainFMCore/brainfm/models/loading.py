"""One entry point for every weights format: :func:`load_model`.

Formats, detected from the file: native (``.safetensors`` + ``.json``), official BrainFM ``.pth``
(``train_args``...), Brain-ID ``.pth`` (``args``; plus separate head files via ``head_paths``) and a
bare state dict. ``torch.load`` always runs with ``weights_only=True`` (only ``argparse.Namespace``
allow-listed). Loading is strict: every missing, unexpected or mis-shaped tensor is named.

>>> import tempfile, pathlib, torch
>>> from brainfm.models import BrainFMNet, ModelConfig, load_model
>>> net = BrainFMNet(ModelConfig(f_maps=8, num_levels=3, heads={"T1": 1}))
>>> p = pathlib.Path(tempfile.mkdtemp()) / "sd.pth"
>>> torch.save({"model": net.state_dict(), "train_args": None}, p)
>>> m = load_model(p)
>>> m.info.format, m.info.config.num_levels, m.net.head_names
('brainfm-official', 3, ['T1'])
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

from brainfm.errors import CheckpointError
from brainfm.models.checkpoint_brainid import is_brainid, load_brainid, read_head_state
from brainfm.models.checkpoint_native import is_native, load_native
from brainfm.models.checkpoint_official import is_official, load_official
from brainfm.models.common import (
    LoadedModel, extract_state_dict, normalize_keys, torch_load_safe,
)
from brainfm.models.hashing import cached_sha256, sha256_file

PathLike = Union[str, "os.PathLike[str]"]
OFFICIAL_HEAD_NAMES = {"T1", "T2", "FLAIR", "CT", "bias_field_log", "segmentation", "distance", "registration",
                       "high_res_residual"}


def load_model(path: PathLike, *, expected_sha256: Optional[str] = None, map_location: Any = "cpu",
               unit_feat: Optional[bool] = None, head_paths: Sequence[PathLike] = ()) -> LoadedModel:
    """Load weights from ``path`` into a :class:`~brainfm.models.net.BrainFMNet` (``eval()`` mode).

    ``expected_sha256`` is checked against the weights file (mismatch -> :class:`CheckpointError`
    "checksum mismatch ..."); the digest comes from :func:`~brainfm.models.hashing.cached_sha256`, so an
    unchanged file is hashed once, a changed one again. ``unit_feat`` overrides the feature normalisation read from the file.
    ``head_paths`` adds separate head files (Brain-ID downstream heads, keys ``final_conv_<name>``).
    A bare state dict (no args) follows BrainFM conventions when its heads all have official names,
    else Brain-ID conventions (features not normalised unless ``unit_feat=True``).
    """
    p = Path(path).expanduser()
    if is_native(p):
        if head_paths:
            raise CheckpointError("head_paths applies to .pth checkpoints, not to native models")
        return load_native(p, expected_sha256=expected_sha256, map_location=map_location, unit_feat=unit_feat)
    if not p.is_file():
        raise CheckpointError(f"weights file not found: {p}")
    digest = cached_sha256(p)
    if expected_sha256 and expected_sha256.lower() != digest:
        raise CheckpointError(
            f"checksum mismatch for {p}: sha256 {digest}, expected {expected_sha256}; "
            "the file may be corrupt or tampered with"
        )
    obj = torch_load_safe(p)
    extra: Dict[str, Any] = {}
    head_shas = {}
    for hp in head_paths:
        hp = Path(hp).expanduser()
        if not hp.is_file():
            raise CheckpointError(f"head file not found: {hp}")
        heads = read_head_state(torch_load_safe(hp), hp)
        dup = sorted(set(extra) & set(heads))
        if dup:
            raise CheckpointError(f"head file {hp} repeats tensors of an earlier head file: {', '.join(dup)}")
        extra.update(heads)
        head_shas[hp.name] = sha256_file(hp)
    kw = dict(map_location=map_location, unit_feat=unit_feat, extra=extra or None)
    if is_official(obj):
        loaded = load_official(obj, p, digest, **kw)
    elif is_brainid(obj):
        loaded = load_brainid(obj, p, digest, **kw)
    else:
        state = normalize_keys(extract_state_dict(obj, p))
        names = {k.split(".")[1][len("final_conv_"):] for k in list(state) + list(extra)
                 if k.startswith("head.final_conv_")}
        container = {"model": state, "epoch": obj.get("epoch") if isinstance(obj, dict) else None}
        if names and names <= OFFICIAL_HEAD_NAMES:  # official head names: BrainFM conventions
            loaded = load_official(container, p, digest, **kw)
        else:  # backbone-only or Brain-ID heads: Brain-ID conventions (no feature normalisation)
            loaded = load_brainid(container, p, digest, **kw)
    if head_shas:
        loaded.info.provenance["head_files_sha256"] = head_shas
    return loaded
