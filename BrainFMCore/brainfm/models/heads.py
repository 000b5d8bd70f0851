"""Task heads: one 1x1x1 ``Conv3d`` (with bias) per task on the final feature map.

Registered as ``final_conv_<name>`` exactly like the reference ``TaskHead``/``IndepHead``, so the
state-dict keys are ``head.final_conv_<name>.weight`` / ``.bias`` inside :class:`BrainFMNet`.

>>> import torch
>>> heads = TaskHeads({"T1": 1, "segmentation": 56}, in_channels=8)
>>> out = heads(torch.zeros(1, 8, 4, 5, 6))
>>> sorted(out), tuple(out["segmentation"].shape)
(['T1', 'segmentation'], (1, 56, 4, 5, 6))
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional

from torch import Tensor, nn

from brainfm.errors import InputError

PREFIX = "final_conv_"


class TaskHeads(nn.ModuleDict):
    """``ModuleDict`` of ``final_conv_<name>`` 1x1x1 convolutions; :meth:`forward` returns ``{name: output}``."""

    def __init__(self, heads: Mapping[str, int], *, in_channels: int) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        for name, channels in heads.items():
            self[PREFIX + name] = nn.Conv3d(self.in_channels, int(channels), kernel_size=1, bias=True)

    @property
    def names(self) -> List[str]:
        """Head names in construction order (without the ``final_conv_`` prefix)."""
        return [k[len(PREFIX):] for k in self.keys()]

    def channels(self) -> Dict[str, int]:
        """``{name: output channels}``."""
        return {k[len(PREFIX):]: int(m.out_channels) for k, m in self.items()}

    def forward(self, feat: Tensor, *, names: Optional[Iterable[str]] = None) -> Dict[str, Tensor]:  # type: ignore[override]
        """Apply the heads in ``names`` (default: all) to the feature ``feat`` (N, C, X, Y, Z)."""
        wanted = self.names if names is None else list(names)
        unknown = [n for n in wanted if PREFIX + n not in self]
        if unknown:
            raise InputError(f"unknown head(s) {unknown}; this model has {self.names}")
        return {n: self[PREFIX + n](feat) for n in wanted}
