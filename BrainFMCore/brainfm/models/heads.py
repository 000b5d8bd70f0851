"""Task heads: one 1x1x1 ``Conv3d`` (with bias) per task on the final feature map.

Registered as ``final_conv_<name>`` exactly like the reference ``TaskHead``/``IndepHead``, so the
state-dict keys are ``head.final_conv_<name>.weight`` / ``.bias`` inside :class:`BrainFMNet`.

A head may also carry a per-voxel hidden layer (``hidden={name: width}``, :class:`ResidualHead`): the
1x1x1 convolution plus ``in -> width -> LeakyReLU -> out`` 1x1x1 convolutions whose last one starts at
zero, so adding it to trained weights changes no output until training moves it. Its tensors are
``head.final_conv_<name>.hidden.{0,2}.*``; official checkpoints have none.

>>> import torch
>>> heads = TaskHeads({"T1": 1, "segmentation": 56}, in_channels=8)
>>> out = heads(torch.zeros(1, 8, 4, 5, 6))
>>> sorted(out), tuple(out["segmentation"].shape)
(['T1', 'segmentation'], (1, 56, 4, 5, 6))
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brainfm.errors import InputError

PREFIX = "final_conv_"
#: negative slope of the hidden layer's activation (the backbone's)
HIDDEN_SLOPE = 0.01
#: voxels per slab when a hidden layer runs without autograd (bounds its ``width``-channel tensor)
SLAB_VOXELS = 1 << 18


class ResidualHead(nn.Conv3d):
    """A 1x1x1 head with a residual per-voxel hidden layer: ``conv(x) + W2 LeakyReLU(W1 x + b1)``.

    ``W2`` starts at zero, so a new hidden layer leaves the head's output unchanged. Without autograd
    the hidden layer runs in slabs of about :data:`SLAB_VOXELS` voxels.

    >>> head = ResidualHead(8, 3, hidden=16)
    >>> x = torch.rand(1, 8, 4, 5, 6)
    >>> bool(torch.equal(head(x), F.conv3d(x, head.weight, head.bias)))
    True
    """

    def __init__(self, in_channels: int, out_channels: int, *, hidden: int) -> None:
        super().__init__(int(in_channels), int(out_channels), kernel_size=1, bias=True)
        self.hidden = nn.Sequential(
            nn.Conv3d(int(in_channels), int(hidden), kernel_size=1, bias=True),
            nn.LeakyReLU(HIDDEN_SLOPE),
            nn.Conv3d(int(hidden), int(out_channels), kernel_size=1, bias=False),
        )
        nn.init.zeros_(self.hidden[2].weight)

    @property
    def hidden_channels(self) -> int:
        """Width of the hidden layer."""
        return int(self.hidden[0].out_channels)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        if torch.is_grad_enabled():
            return super().forward(x) + self.hidden(x)
        return head_float(self, x, dtype=x.dtype)


def head_float(conv: nn.Conv3d, feat: Tensor, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """``conv(feat)`` computed in ``dtype`` whatever the weights' dtype (a :class:`ResidualHead`'s
    hidden layer in slabs along the first spatial axis), outside autocast.

    >>> conv = nn.Conv3d(4, 2, 1).half()
    >>> tuple(head_float(conv, torch.rand(1, 4, 3, 3, 3)).shape)
    (1, 2, 3, 3, 3)
    """
    w = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    with torch.autocast(feat.device.type, enabled=False):
        feat = feat.to(dtype)
        out = F.conv3d(feat, w(conv.weight), w(conv.bias))
        if isinstance(conv, ResidualHead):
            c1, c2 = conv.hidden[0], conv.hidden[2]
            plane = max(1, int(feat[0, 0, 0].numel()) * int(feat.shape[0]))
            step = max(1, SLAB_VOXELS // plane)
            for i in range(0, int(feat.shape[2]), step):
                h = F.leaky_relu_(F.conv3d(feat[:, :, i:i + step], w(c1.weight), w(c1.bias)), HIDDEN_SLOPE)
                out[:, :, i:i + step] += F.conv3d(h, w(c2.weight))
                del h
    return out


class TaskHeads(nn.ModuleDict):
    """``ModuleDict`` of ``final_conv_<name>`` 1x1x1 convolutions; :meth:`forward` returns ``{name: output}``.

    ``hidden`` gives some heads a residual hidden layer of the given width (:class:`ResidualHead`).
    """

    def __init__(self, heads: Mapping[str, int], *, in_channels: int,
                 hidden: Optional[Mapping[str, int]] = None) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        hidden = dict(hidden or {})
        unknown = sorted(set(hidden) - set(heads))
        if unknown:
            raise InputError(f"hidden layers for unknown head(s) {unknown}; the heads are {list(heads)}")
        for name, channels in heads.items():
            if name in hidden:
                self[PREFIX + name] = ResidualHead(self.in_channels, int(channels), hidden=int(hidden[name]))
            else:
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
