"""Shared pieces of the checkpoint readers: :class:`ModelInfo`, safe ``torch.load``, key
normalisation, architecture inference from shapes and strict loading.

>>> import torch
>>> from brainfm.models import BrainFMNet, ModelConfig
>>> from brainfm.models.common import infer_config, build_strict
>>> sd = BrainFMNet(ModelConfig(f_maps=8, num_levels=3, heads={"T1": 1})).state_dict()
>>> cfg = infer_config(sd)
>>> cfg.f_maps, cfg.num_levels, cfg.heads
(8, 3, {'T1': 1})
>>> net = build_strict(sd, cfg)
"""
from __future__ import annotations

import argparse
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor

from brainfm.errors import CheckpointError, InputError
from brainfm.labels.schemes import SCHEME_BY_CHANNELS, decide_scheme
from brainfm.models.config import ModelConfig
from brainfm.models.net import BrainFMNet

#: Units of the raw heads of BrainFM-style models (official and native; post-processing is shared).
BRAINFM_OUTPUT_UNITS: Dict[str, Any] = {
    "images": "min-max [0,1] of the target contrast",
    "CT_scale": 1000.0,  # head predicts HU / 1000
    "registration_scale": 100.0,  # head predicts atlas mm / 100
    "registration_frame": "gca",
    "distance_clamp": 3.0,  # mm, +-
    "distance_channels": ["lp", "lw", "rp", "rw"],
    "bias": "log",  # natural-log multiplicative field
    "high_res": "residual on the [0,1] input",
}
#: Units of Brain-ID heads: ``image`` is the T1-like anatomy, white matter ~ 1.
BRAINID_OUTPUT_UNITS: Dict[str, Any] = {
    "image": "T1-like anatomy divided by the white-matter median (WM ~ 1)",
    "segmentation": "softmax logits over the brainid33 classes (Brain-ID channel order)",
}
#: default label scheme by segmentation channel count (the table of :mod:`brainfm.labels.schemes`)
LABEL_SCHEME_BY_CHANNELS = SCHEME_BY_CHANNELS
SEGMENTATION_HEADS = ("segmentation", "seg")


@dataclass
class ModelInfo:
    """What a loaded model is: identity, checksum, architecture and the meaning of its outputs."""

    name: str
    version: str
    format: str  # 'brainfm-official' | 'brainid' | 'native'
    sha256: str
    config: ModelConfig
    #: a built-in scheme's name (``brainfm.labels.SCHEMES``) or, for a user's own labels, a scheme's
    #: ``LabelScheme.to_dict``
    label_scheme: Union[None, str, Dict[str, Any]] = None
    atlas: Optional[Dict[str, Any]] = None
    provenance: Dict[str, Any] = field(default_factory=dict)
    output_units: Dict[str, Any] = field(default_factory=dict)
    source: Optional[str] = None  # path of the main weights file
    voxel_mm: float = 1.0  # edge of the network frame's voxels: inputs are resampled to this grid
    #: whether inputs are low-pass filtered (Gaussian anti-alias) before they are resampled to a coarser
    #: working grid; False for models trained on images sampled at their grid without that filter
    input_antialias: bool = True
    #: whether predictions average the outputs of the input and of its left-right mirror (models trained
    #: with mirrored samples; twice the network time)
    test_time_flip: bool = False
    #: measured quality (``brainfm.evaluation.quality``): ``{"level", "real_t1_dice17", ...}``; empty if unknown
    quality: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-serialisable summary (used in prediction metadata and the native JSON sidecar)."""
        return {
            "name": self.name, "version": self.version, "format": self.format, "sha256": self.sha256,
            "config": self.config.to_dict(), "label_scheme": self.label_scheme, "atlas": self.atlas,
            "provenance": self.provenance, "output_units": self.output_units, "source": self.source,
            "voxel_mm": self.voxel_mm, "input_antialias": self.input_antialias,
            "test_time_flip": self.test_time_flip, "quality": dict(self.quality),
        }


@dataclass
class LoadedModel:
    """A network ready for inference (``eval()`` mode) and its :class:`ModelInfo`; unpacks as a pair."""

    net: BrainFMNet
    info: ModelInfo

    def __iter__(self) -> Iterator[Any]:
        return iter((self.net, self.info))


def label_scheme_for(heads: Mapping[str, int]) -> Optional[str]:
    """Label scheme name from the segmentation head's channel count (56, 18 or 33, by
    :func:`brainfm.labels.decide_scheme`), else ``None``."""
    for name in SEGMENTATION_HEADS:
        if name in heads:
            try:
                return decide_scheme(n_channels=int(heads[name])).name
            except InputError:
                return None
    return None


def torch_load_safe(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with only ``argparse.Namespace`` allow-listed.

    Memory-maps the file when possible (optimizer state in training checkpoints is then never read).
    A file whose pickle references other Python objects is refused with
    ``refused: <file> holds executable objects (<names>) — only load checkpoints you trust``; the
    names come from a static read of the pickle (:mod:`brainfm.models.pickle_scan`), never from
    torch's message (whose wording changes between versions, and whose advice to turn the safety
    off is not repeated).
    """
    if not hasattr(torch.serialization, "safe_globals"):  # torch < 2.5
        raise CheckpointError("reading PyTorch checkpoints safely needs torch >= 2.5; please update PyTorch")
    import zipfile

    try:
        mmap = zipfile.is_zipfile(str(path))  # only the zip format can be memory-mapped (legacy files cannot)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:  # the safe unpickler refused something (or the pickle is cut)
        raise _refusal(path, e) from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        last: BaseException = e
    raise CheckpointError(
        f"cannot read checkpoint {path}: {_short(last)}. The file may be truncated, still downloading, "
        "or not a PyTorch checkpoint."
    )


def _allowed_globals() -> List[str]:
    """Globals ``weights_only`` loading accepts: torch's defaults plus ``argparse.Namespace``."""
    names = ["argparse.Namespace"]
    try:
        from torch import _weights_only_unpickler

        names += list(_weights_only_unpickler._get_allowed_globals().keys())
    except (ImportError, AttributeError):  # private API moved: name everything outside torch
        pass
    return names


def _refusal(path: Path, error: BaseException) -> CheckpointError:
    """The message for a pickle the safe loader refused, built from the file's own contents."""
    from brainfm.models.pickle_scan import refused_globals

    names = refused_globals(path, _allowed_globals())
    if names is None:  # the pickle itself is cut or corrupt
        return CheckpointError(f"cannot read checkpoint {path}: its contents are incomplete or corrupt "
                               f"({type(error).__name__}). The file may be truncated, still downloading, or not a "
                               "PyTorch checkpoint.")
    if names:
        return CheckpointError(f"refused: {path.name} holds executable objects ({', '.join(names)}) — only load "
                               "checkpoints you trust. BrainFM reads checkpoints that hold weights (and argparse "
                               "arguments) only.")
    return CheckpointError(f"refused: {path.name} holds Python objects that a weights file does not need, so it was "
                           "not loaded — only load checkpoints you trust. BrainFM reads checkpoints that hold "
                           "weights (and argparse arguments) only.")


def _short(e: Optional[BaseException]) -> str:
    """First sentence of an error (torch's messages go on with advice that does not apply here)."""
    text = str(e).strip().splitlines()[0] if e is not None and str(e).strip() else type(e).__name__
    return text.split(". ")[0].rstrip(".")[:300]


def namespace_to_dict(obj: Any, *, depth: int = 0) -> Any:
    """Recursively turn ``argparse.Namespace`` trees into JSON-safe dicts (other objects -> ``repr``)."""
    if depth > 20:
        return "..."
    if isinstance(obj, argparse.Namespace):
        obj = vars(obj)
    if isinstance(obj, Mapping):
        return {str(k): namespace_to_dict(v, depth=depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [namespace_to_dict(v, depth=depth + 1) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Tensor):
        return f"tensor{tuple(obj.shape)}"
    return repr(obj)[:200]


def get_arg(ns: Any, *names: str, default: Any = None) -> Any:
    """``ns.a.b`` (for ``names=('a', 'b')``) on Namespace/dict trees, or ``default``."""
    cur = ns
    for n in names:
        if isinstance(cur, argparse.Namespace):
            cur = vars(cur)
        if not isinstance(cur, Mapping) or n not in cur:
            return default
        cur = cur[n]
    return cur


def normalize_keys(state: Mapping[str, Any]) -> Dict[str, Any]:
    """Strip ``module.`` prefixes; prefix bare ``encoders.``/``decoders.`` with ``backbone.`` and bare
    ``final_conv_*`` with ``head.`` (as the reference's suffix matching allowed)."""
    out: Dict[str, Any] = {}
    for key, value in state.items():
        k = str(key)
        while k.startswith("module."):
            k = k[len("module."):]
        if k.startswith(("encoders.", "decoders.")):
            k = "backbone." + k
        elif k.startswith("final_conv_"):
            k = "head." + k
        if k in out:
            raise CheckpointError(f"checkpoint has the tensor {k!r} twice (with and without a prefix)")
        out[k] = value
    return out


def extract_state_dict(obj: Any, path: Path) -> Dict[str, Any]:
    """The state dict inside a loaded checkpoint: under ``model`` (or the first key containing
    ``model``), else ``obj`` itself when it maps names to tensors."""
    if isinstance(obj, Mapping):
        if "model" in obj and isinstance(obj["model"], Mapping):
            return dict(obj["model"])
        for k, v in obj.items():
            if "model" in str(k) and isinstance(v, Mapping) and v and all(isinstance(t, Tensor) for t in v.values()):
                return dict(v)
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            return dict(obj)
    raise CheckpointError(
        f"{path} holds no model weights (expected a dict with a 'model' state dict, or a state dict)"
    )


_ENC = re.compile(r"^backbone\.encoders\.(\d+)\.")
_HEAD = re.compile(r"^head\.final_conv_(\w+)\.weight$")
_REFINE = re.compile(r"^backbone\.refine\.(\d+)\.conv1\.weight$")


def infer_config(state_dict: Mapping[str, Any], *, unit_feat: bool = True, num_groups: int = 8) -> ModelConfig:
    """Architecture from key names and shapes (as in the official BrainFM checkpoints): levels = number of
    encoder indices, ``f_maps`` = out channels of encoder 0's second conv, heads = every ``head.final_conv_<name>``,
    ``refine`` = the inner width of every ``backbone.refine.<i>`` block (native models)."""
    sd = normalize_keys(state_dict)
    levels = sorted({int(m.group(1)) for k in sd for m in [_ENC.match(k)] if m})
    first = "backbone.encoders.0.basic_module.SingleConv{}.conv.weight"
    if not levels or first.format(2) not in sd or first.format(1) not in sd:
        raise CheckpointError(
            "the checkpoint has no BrainFM/Brain-ID backbone (no 'backbone.encoders.0...conv.weight' tensors); "
            f"first keys: {list(sd)[:5]}"
        )
    if levels != list(range(len(levels))):
        raise CheckpointError(f"encoder indices are not consecutive: {levels}")
    w2, w1 = sd[first.format(2)], sd[first.format(1)]
    if not (isinstance(w2, Tensor) and w2.dim() == 5 and isinstance(w1, Tensor) and w1.dim() == 5):
        raise CheckpointError("encoder 0 convolution weights are not 5-D tensors")
    heads: Dict[str, int] = {}
    head_in = set()
    for k, v in sd.items():
        m = _HEAD.match(k)
        if m and isinstance(v, Tensor) and v.dim() >= 2:
            heads[m.group(1)] = int(v.shape[0])
            head_in.add(int(v.shape[1]))
    if len(head_in) > 1:
        raise CheckpointError(f"heads take different input widths {sorted(head_in)}; not a BrainFM TaskHead set")
    blocks = {int(m.group(1)): int(v.shape[0]) for k, v in sd.items() for m in [_REFINE.match(k)]
              if m and isinstance(v, Tensor) and v.dim() == 5}
    if sorted(blocks) != list(range(len(blocks))):
        raise CheckpointError(f"refinement block indices are not consecutive: {sorted(blocks)}")
    return ModelConfig(
        in_channels=int(w1.shape[1]), f_maps=int(w2.shape[0]), num_levels=len(levels), num_groups=int(num_groups),
        unit_feat=bool(unit_feat), heads=heads, head_in_channels=head_in.pop() if head_in else None,
        refine=[blocks[i] for i in range(len(blocks))],
    )


def build_strict(state_dict: Mapping[str, Any], config: ModelConfig, *, device: Any = "cpu") -> BrainFMNet:
    """Build :class:`BrainFMNet` for ``config`` and load ``state_dict`` strictly.

    Missing, unexpected and mis-shaped tensors are all named in one :class:`CheckpointError`.
    Tensors are copied to float32 on ``device``; the network is returned in ``eval()`` mode.
    """
    sd = normalize_keys(state_dict)
    with torch.device("meta"):
        net = BrainFMNet(config)
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    misshaped: List[Tuple[str, Any, Tuple[int, ...]]] = []
    for k, shape in expected.items():
        if k in sd:
            v = sd[k]
            got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            if got != shape or not (isinstance(v, Tensor) and v.is_floating_point()):
                misshaped.append((k, got, shape))
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"missing tensors ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected tensors ({len(unexpected)}): {', '.join(unexpected)}")
        if misshaped:
            parts.append(f"mis-shaped tensors ({len(misshaped)}): " + ", ".join(
                f"{k} (file {g}, model {s})" for k, g, s in misshaped))
        raise CheckpointError(
            f"the weights do not match the architecture (levels={config.num_levels}, f_maps={config.f_maps}, "
            f"heads={config.heads}): " + "; ".join(parts)
        )
    dev = torch.device(device)
    tensors = {k: sd[k].detach().to(device=dev, dtype=torch.float32, copy=True).contiguous() for k in expected}
    net.load_state_dict(tensors, strict=True, assign=True)
    net.eval()
    return net
