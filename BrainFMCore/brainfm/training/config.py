"""Training configuration: nested dataclasses, YAML files with ``extends:`` and dotted overrides.

>>> from brainfm.training.config import TrainConfig, apply_overrides
>>> cfg = apply_overrides(TrainConfig(), ["optim.lr=2e-4", "generator.size=32", "model.f_maps=8"])
>>> cfg.optim.lr, cfg.generator.size, cfg.model.f_maps
(0.0002, 32, 8)
>>> cfg.to_dict()["model"]["heads"]["segmentation"]
33
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from brainfm.errors import InputError

DEFAULT_HEADS: Dict[str, int] = {
    "T1": 1, "T2": 1, "FLAIR": 1, "CT": 1, "high_res_residual": 1,
    "segmentation": 33, "distance": 4, "bias_field_log": 1, "registration": 3,
}

#: overrides of a smoke run (``brainfm train --smoke``): a tiny model and batch, 4 steps, to check a setup
SMOKE_OVERRIDES: Tuple[str, ...] = (
    "model.f_maps=4", "model.num_levels=3", "model.num_groups=4", "generator.size=24",
    "generator.n_samples=2", "data.val_samples=1", "run.max_steps=4", "run.ckpt_every=2",
    "run.log_every=1", "optim.warmup_steps=2")


@dataclass
class ModelSection:
    """Architecture of the network (see ``brainfm.models.ModelConfig``)."""

    f_maps: int = 16  # 5 levels x 16: 4.1 M parameters, 15.7 MiB fp32 (one file <= 16 MiB)
    num_levels: int = 5
    num_groups: int = 8
    unit_feat: bool = True
    heads: Dict[str, int] = field(default_factory=lambda: dict(DEFAULT_HEADS))
    # per-voxel hidden layers of some heads ({"segmentation": 64}; brainfm.models.heads.ResidualHead)
    head_hidden: Dict[str, int] = field(default_factory=dict)
    # residual full-resolution blocks after the last decoder, by inner width ([32]; brainfm.models.unet.RefineBlock)
    refine: List[int] = field(default_factory=list)
    # heads that read the input image beside the feature (["segmentation"]; brainfm.models.heads.TaskHeads)
    head_image: List[str] = field(default_factory=list)
    label_scheme: str = "fs33"
    name: str = "brainfm-compact"
    voxel_mm: float = 1.0  # the grid the network works on (training windows and inference frame)


@dataclass
class GeneratorSection:
    """Synthetic batches: window ``size`` (voxels, cubic) and intra-subject ``n_samples``."""

    size: int = 128
    n_samples: int = 4
    options: Dict[str, Any] = field(default_factory=dict)  # passed to the generator's config


@dataclass
class DataSection:
    """Prepared subjects (``brainfm.training.prepare``) and the held-out validation subjects."""

    prepared: str = ""
    n_val: int = 2
    val_subjects: List[str] = field(default_factory=list)
    val_size: int = 0  # 0 -> generator.size
    val_samples: int = 2


@dataclass
class LossSection:
    """Loss weights (the reference BrainFM code: all 1.0) and contrastive settings."""

    weights: Dict[str, float] = field(default_factory=lambda: {
        "image": 1.0, "image_grad": 1.0, "seg_ce": 1.0, "seg_dice": 1.0, "bias_field_log": 1.0,
        "distance": 1.0, "registration": 1.0, "registration_grad": 1.0, "sr": 1.0, "sr_grad": 1.0,
        "contrastive": 1.0,
    })
    objective: str = "brainfm"  # brainfm | brainid | contrastive
    contrastive: str = "none"  # none | simclr | cifl (added to the objective)
    temperature: float = 0.5  # NT-Xent (SimCLR) temperature
    cifl_taus: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])  # tau_alpha, beta, gamma
    contrast_voxels: int = 2048  # voxels sampled per view for the contrastive terms


@dataclass
class OptimSection:
    """AdamW with linear warm-up then step decay (x ``lr_drop_factor`` at each of ``lr_drops``)."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 500
    lr_drops: List[int] = field(default_factory=list)
    lr_drop_factor: float = 0.1
    clip_grad_norm: float = 1.0
    ema_decay: float = 0.0  # > 0: keep a moving average of the weights and export it (brainfm.training.ema)


@dataclass
class RunSection:
    """Loop control. ``max_steps`` 0 = unlimited; ``minutes`` 0 = no time box."""

    out_dir: str = "runs/brainfm"
    max_steps: int = 0
    minutes: float = 0.0
    ckpt_every: int = 200
    ckpt_minutes: float = 0.0  # also checkpoint when this many wall-clock minutes passed (0 = off)
    max_cpu_minutes: float = 0.0  # stop when the run's total process CPU time reaches this (0 = unlimited)
    val_every: int = 0
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto (bf16 on CUDA and on CPUs with native bf16, else fp32) | bf16 | fp32
    channels_last: str = "auto"  # auto (on CPU) | true | false: channels_last_3d memory format
    deterministic: bool = False
    keep_last: int = 2
    optim_dtype: str = "fp32"  # fp32 (exact resume) | bf16 (half-size optimizer state)
    max_file_mb: float = 16.0  # shard checkpoint files above this size (MiB)
    export_dtype: str = "fp32"  # fp32 | fp16: dtype of the native model written next to the checkpoint


@dataclass
class TrainConfig:
    """The full configuration of ``brainfm train``."""

    model: ModelSection = field(default_factory=ModelSection)
    generator: GeneratorSection = field(default_factory=GeneratorSection)
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)

    def to_dict(self) -> Dict[str, Any]:
        """Plain nested dict (JSON/YAML serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        """Build from a (partial) nested dict; unknown keys raise :class:`InputError`."""
        return _build(cls, d or {}, "")


def _build(cls, d: Dict[str, Any], prefix: str):
    if not isinstance(d, dict):
        raise InputError(f"config section {prefix or '<root>'!r} must be a mapping, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in d.items():
        if k not in fields:
            raise InputError(f"unknown config key {prefix + k!r}; known: {', '.join(sorted(fields))}")
        default = fields[k].default_factory() if fields[k].default_factory is not dataclasses.MISSING else fields[k].default  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            kwargs[k] = _build(type(default), v, prefix + k + ".")
        else:
            kwargs[k] = _coerce(v, default, prefix + k)
    return cls(**kwargs)


def _coerce(v: Any, default: Any, key: str) -> Any:
    if default is None or v is None:
        return v
    if isinstance(default, bool):
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.lower() in ("true", "false", "1", "0", "yes", "no"):
            return v.lower() in ("true", "1", "yes")
        raise InputError(f"config key {key!r} must be true/false, got {v!r}")
    try:
        if isinstance(default, int):
            if isinstance(v, float) and not v.is_integer():
                raise ValueError
            return int(v)
        if isinstance(default, float):
            return float(v)
        if isinstance(default, str):
            return str(v)
    except (TypeError, ValueError):
        raise InputError(f"config key {key!r} must be {type(default).__name__}, got {v!r}") from None
    if isinstance(default, list) and not isinstance(v, (list, tuple)):
        raise InputError(f"config key {key!r} must be a list, got {v!r}")
    if isinstance(default, dict) and not isinstance(v, dict):
        raise InputError(f"config key {key!r} must be a mapping, got {v!r}")
    return list(v) if isinstance(v, tuple) else v


def deep_merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    """Recursive merge (``over`` wins); neither input is modified.

    >>> deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}})
    {'a': {'b': 1, 'c': 3}}
    """
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("heads", "head_hidden"):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_yaml(path: Path, seen: Sequence[Path] = ()) -> Dict[str, Any]:
    try:
        import yaml
    except ImportError:  # pragma: no cover
        raise InputError("reading YAML configs needs PyYAML: pip install pyyaml") from None
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise InputError(f"config 'extends' loop through {path}")
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise InputError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(d, dict):
        raise InputError(f"config file {path} must hold a mapping at the top level")
    parent = d.pop("extends", None)
    if parent:
        base = _read_yaml(path.parent / parent, tuple(seen) + (path.resolve(),))
        d = deep_merge(base, d)
    return d


def load_config(path: Optional[Union[str, Path]] = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Defaults, then the YAML file (and the files it ``extends``), then ``key=value`` overrides."""
    d = _read_yaml(Path(path)) if path else {}
    return apply_overrides(TrainConfig.from_dict(d), overrides)


def apply_overrides(cfg: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    """Return a new config with dotted ``section.key=value`` overrides (values parsed as YAML)."""
    d = cfg.to_dict()
    for item in overrides:
        if "=" not in item:
            raise InputError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        try:
            import yaml

            value = yaml.safe_load(raw)
        except Exception:  # noqa: BLE001 - fall back to the raw string
            value = raw
        parts = key.strip().split(".")
        node = d
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise InputError(f"unknown config key {key!r}")
            node = node[p]
        if parts[-1] not in node:
            raise InputError(f"unknown config key {key!r}")
        node[parts[-1]] = value
    return TrainConfig.from_dict(d)
