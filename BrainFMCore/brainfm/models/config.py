"""Architecture description of a BrainFM network (backbone + 1x1x1 task heads).

A :class:`ModelConfig` is all that is needed to rebuild a network with the right tensor shapes; it is
stored in native checkpoints (``architecture`` in the JSON sidecar) and inferred from the keys and
shapes of official checkpoints by :func:`brainfm.models.checkpoint_official.infer_config`.

>>> from brainfm.models.config import ModelConfig
>>> cfg = ModelConfig(f_maps=8, num_levels=3, heads={"T1": 1, "segmentation": 56})
>>> cfg.feature_channels, cfg.level_channels
(8, [8, 16, 32])
>>> ModelConfig.from_dict(cfg.to_dict()) == cfg
True
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from brainfm.errors import CheckpointError

#: Heads of the official BrainFM model, in the order the reference builds them.
OFFICIAL_HEADS: Dict[str, int] = {
    "T1": 1,
    "T2": 1,
    "FLAIR": 1,
    "CT": 1,
    "bias_field_log": 1,
    "segmentation": 56,
    "distance": 4,
    "registration": 3,
    "high_res_residual": 1,
}


#: Parts of an architecture that native models alone have: recorded (sidecar, training checkpoints) only
#: when set, so models without them keep the description older readers know.
OPTIONAL_FIELDS = ("head_hidden", "head_image", "refine")


def group_count(channels: int, num_groups: int) -> int:
    """GroupNorm group count of the reference (``create_conv``): 1 if ``channels < num_groups``.

    >>> group_count(1, 8), group_count(64, 8)
    (1, 8)
    """
    return 1 if channels < num_groups else num_groups


@dataclass
class ModelConfig:
    """Hyper-parameters that determine every tensor shape of :class:`~brainfm.models.net.BrainFMNet`.

    ``heads`` maps a head name (``T1``, ``segmentation``, ...) to its output channel count.
    ``head_in_channels`` is the input width of the heads (defaults to ``f_maps``: the heads read the
    last, full-resolution decoder feature). ``head_hidden`` maps some heads to the width of a residual
    per-voxel hidden layer (:class:`~brainfm.models.heads.ResidualHead`; empty for official models).
    ``head_image`` lists the heads that read the network's input image beside the feature (the image's
    ``in_channels`` after the feature's, as Brain-ID's ``DepHead`` does; empty for official models).
    ``refine`` lists the inner widths of residual full-resolution blocks after the last decoder
    (:class:`~brainfm.models.unet.RefineBlock`; empty for official models).
    """

    in_channels: int = 1
    f_maps: int = 64
    num_levels: int = 6
    num_groups: int = 8
    unit_feat: bool = True
    heads: Dict[str, int] = field(default_factory=dict)
    head_in_channels: Optional[int] = None
    head_hidden: Dict[str, int] = field(default_factory=dict)
    refine: List[int] = field(default_factory=list)
    head_image: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.heads = {str(k): int(v) for k, v in dict(self.heads).items()}
        self.head_hidden = {str(k): int(v) for k, v in dict(self.head_hidden or {}).items()}
        if isinstance(self.refine, (str, bytes)) or not isinstance(self.refine, (list, tuple)):
            raise CheckpointError(f"invalid model architecture: refine must be a list of widths (got {self.refine!r})")
        self.refine = [int(w) for w in self.refine]
        if isinstance(self.head_image, (str, bytes)) or not isinstance(self.head_image, (list, tuple)):
            raise CheckpointError(f"invalid model architecture: head_image must be a list of head names "
                                  f"(got {self.head_image!r})")
        self.head_image = [str(h) for h in self.head_image]
        if self.head_in_channels is None:
            self.head_in_channels = int(self.f_maps)
        self.validate()

    @property
    def level_channels(self) -> List[int]:
        """Output channels of each encoder level: ``f_maps * 2**k``."""
        return [int(self.f_maps) * 2**k for k in range(int(self.num_levels))]

    @property
    def feature_channels(self) -> int:
        """Channels of the final (full-resolution) feature map."""
        return int(self.f_maps)

    def head_input_channels(self, name: str) -> int:
        """Input channels of head ``name``: the feature's (:attr:`feature_channels`, first), then the input
        image's (``in_channels``) for a head that reads it (:attr:`head_image`).

        >>> cfg = ModelConfig(f_maps=8, heads={"segmentation": 33, "T1": 1}, head_image=["segmentation"])
        >>> cfg.head_input_channels("segmentation"), cfg.head_input_channels("T1")
        (9, 8)
        """
        return self.feature_channels + (int(self.in_channels) if name in self.head_image else 0)

    def validate(self) -> None:
        """Raise :class:`CheckpointError` when the numbers cannot form the reference network."""
        problems = []
        for name in ("in_channels", "f_maps", "num_levels", "num_groups"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                problems.append(f"{name} must be a positive integer (got {v!r})")
        if problems:
            raise CheckpointError("invalid model architecture: " + "; ".join(problems))
        if self.num_levels < 2:
            problems.append("num_levels must be at least 2")
        for name, ch in self.heads.items():
            if ch < 1:
                problems.append(f"head {name!r} has {ch} output channels")
            if not name.isidentifier():
                problems.append(f"head name {name!r} is not a valid identifier")
        for name, width in self.head_hidden.items():
            if name not in self.heads:
                problems.append(f"hidden layer for {name!r}, which is not a head ({sorted(self.heads)})")
            if width < 1:
                problems.append(f"head {name!r} has a hidden layer of {width} channels")
        for width in self.refine:
            if width < 1:
                problems.append(f"a refinement block of {width} channels")
        for name in self.head_image:
            if name not in self.heads:
                problems.append(f"input image for {name!r}, which is not a head ({sorted(self.heads)})")
        if self.head_in_channels != self.f_maps:
            problems.append(
                f"heads take {self.head_in_channels} input channels but the feature has {self.f_maps}"
                + (" (a Brain-ID DepHead that concatenates the image; not supported)"
                   if self.head_in_channels == self.f_maps + 1 else "")
            )
        for ch in self.groupnorm_channels():
            g = group_count(ch, self.num_groups)
            if ch % g:
                problems.append(f"GroupNorm over {ch} channels is not divisible into {g} groups")
        if problems:
            raise CheckpointError("invalid model architecture: " + "; ".join(sorted(set(problems))))

    def groupnorm_channels(self) -> List[int]:
        """Input channels of every GroupNorm of the backbone (encoders, then decoders)."""
        f = self.level_channels
        out = []
        prev = self.in_channels
        for k, ch in enumerate(f):
            mid = max(ch // 2, prev)
            out += [prev, mid]
            prev = ch
        for j in range(self.num_levels - 1):
            skip, up = f[-2 - j], f[-1 - j]
            out += [skip + up, skip]
        for width in self.refine:
            out += [self.f_maps, width]
        return out

    def to_dict(self) -> Dict[str, Any]:
        """JSON-serialisable dictionary (inverse of :meth:`from_dict`)."""
        return {
            "in_channels": int(self.in_channels),
            "f_maps": int(self.f_maps),
            "num_levels": int(self.num_levels),
            "num_groups": int(self.num_groups),
            "unit_feat": bool(self.unit_feat),
            "heads": dict(self.heads),
            "head_in_channels": int(self.head_in_channels or self.f_maps),
            **{k: copy.copy(getattr(self, k)) for k in OPTIONAL_FIELDS if getattr(self, k)},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelConfig":
        """Build from :meth:`to_dict` output; unknown keys are rejected with a clear message."""
        known = {"in_channels", "f_maps", "num_levels", "num_groups", "unit_feat", "heads", "head_in_channels",
                 "head_hidden", "head_image", "refine"}
        extra = sorted(set(data) - known)
        if extra:
            raise CheckpointError(f"unknown architecture fields {extra}; known fields are {sorted(known)}")
        try:
            kw = {k: data[k] for k in known if k in data}
            for k in ("in_channels", "f_maps", "num_levels", "num_groups", "head_in_channels"):
                if kw.get(k) is not None:
                    kw[k] = int(kw[k])
            if "unit_feat" in kw:
                kw["unit_feat"] = bool(kw["unit_feat"])
            return cls(**kw)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"invalid architecture description {dict(data)!r}: {e}") from e
