"""The BrainFM network: :class:`~brainfm.models.unet.UNet3D` backbone + :class:`TaskHeads`.

Sub-modules are named ``backbone`` and ``head`` like the reference joiner, so the state dict has the
official keys (``backbone.encoders.0.basic_module.SingleConv1.groupnorm.weight``, ...,
``head.final_conv_T1.weight``).

>>> import torch
>>> from brainfm.models import BrainFMNet, ModelConfig
>>> net = BrainFMNet(ModelConfig(f_maps=8, num_levels=3, heads={"T1": 1, "distance": 4}))
>>> with torch.inference_mode():
...     out = net(torch.rand(1, 1, 12, 10, 9), heads=["distance"])
>>> sorted(out), tuple(out["distance"].shape)
(['distance', 'feat'], (1, 4, 12, 10, 9))
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional

from torch import Tensor, nn

from brainfm.errors import InputError
from brainfm.models.config import ModelConfig
from brainfm.models.heads import TaskHeads
from brainfm.models.unet import UNet3D


class BrainFMNet(nn.Module):
    """Backbone + 1x1x1 heads built from a :class:`ModelConfig`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = UNet3D(config.in_channels, config.f_maps, config.num_levels, config.num_groups,
                               config.unit_feat, refine=config.refine)
        self.head = TaskHeads(config.heads, in_channels=int(config.head_in_channels or config.f_maps),
                              hidden=config.head_hidden, image=config.head_image,
                              image_channels=config.in_channels)

    @property
    def head_names(self) -> List[str]:
        """Names of the task heads (e.g. ``['T1', ..., 'registration']``)."""
        return self.head.names

    def forward(self, x: Tensor, *, heads: Optional[Iterable[str]] = None) -> Dict[str, Tensor]:
        """Raw head outputs for ``heads`` (default: all; ``()`` for none) plus ``"feat"``.

        ``x`` is (N, in_channels, X, Y, Z) of any size; outputs have the same spatial size.
        """
        names = self.head.names if heads is None else list(heads)
        unknown = [n for n in names if n not in self.head.names]
        if unknown:  # checked before the (expensive) backbone runs
            raise InputError(f"unknown head(s) {unknown}; this model has {self.head.names}")
        feat = self.backbone(x)
        out = self.head(feat, names=names, image=x)
        out["feat"] = feat
        return out
