"""Task heads: one 1x1x1 ``Conv3d`` (with bias) per task on the final feature map.

Registered as ``final_conv_<name>`` exactly like the reference ``TaskHead``/``IndepHead``, so the
state-dict keys are ``head.final_conv_<name>.weight`` / ``.bias`` inside :class:`BrainFMNet`.

A head may also carry a per-voxel hidden layer (``hidden={name: width}``, :class:`ResidualHead`): the
1x1x1 convolution plus ``in -> width -> LeakyReLU -> out`` 1x1x1 convolutions whose last one starts at
zero, so adding it to trained weights changes no output until training moves it. Its tensors are
``head.final_conv_<name>.hidden.{0,2}.*``; official checkpoints have none.

A head may also read the network's input image beside the feature (``image=[name, ...]``; Brain-ID's
``DepHead`` does so): its input is the feature with the image's channels after it
(:meth:`TaskHeads.image_input`), which lets a head tell apart what the feature does not keep, such as
a lesion's brightness that the backbone learned to look through.

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


def head_float(conv: nn.Conv3d, feat: Tensor, *, image: Optional[Tensor] = None,
               dtype: torch.dtype = torch.float32) -> Tensor:
    """``conv(feat)`` computed in ``dtype`` whatever the weights' dtype (a :class:`ResidualHead`'s
    hidden layer in slabs along the first spatial axis), outside autocast. ``image``: for a head that
    reads the input image after the feature, its channels; their weight columns are applied to it
    apart, so the feature is never copied to put the image beside it.

    >>> conv = nn.Conv3d(4, 2, 1).half()
    >>> tuple(head_float(conv, torch.rand(1, 4, 3, 3, 3)).shape)
    (1, 2, 3, 3, 3)
    >>> both = nn.Conv3d(5, 2, 1)
    >>> feat, image = torch.rand(1, 4, 3, 3, 3), torch.rand(1, 1, 3, 3, 3)
    >>> bool(torch.allclose(head_float(both, feat, image=image), both(torch.cat([feat, image], 1)), atol=1e-6))
    True
    """
    w = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    n = int(feat.shape[1])

    def linear(layer: nn.Conv3d, part: slice, *, bias: bool) -> Tensor:
        """``layer`` on the voxels ``part`` of the first spatial axis, the image's columns apart."""
        out = F.conv3d(feat[:, :, part], w(layer.weight[:, :n]), w(layer.bias) if bias else None)
        if image is not None:
            out += F.conv3d(image[:, :, part], w(layer.weight[:, n:]))
        return out

    with torch.autocast(feat.device.type, enabled=False):
        feat = feat.to(dtype)
        image = image.to(dtype) if image is not None else None
        out = linear(conv, slice(None), bias=True)
        if isinstance(conv, ResidualHead):
            c1, c2 = conv.hidden[0], conv.hidden[2]
            plane = max(1, int(feat[0, 0, 0].numel()) * int(feat.shape[0]))
            step = max(1, SLAB_VOXELS // plane)
            for i in range(0, int(feat.shape[2]), step):
                h = F.leaky_relu_(linear(c1, slice(i, i + step), bias=True), HIDDEN_SLOPE)
                out[:, :, i:i + step] += F.conv3d(h, w(c2.weight))
                del h
    return out


class TaskHeads(nn.ModuleDict):
    """``ModuleDict`` of ``final_conv_<name>`` 1x1x1 convolutions; :meth:`forward` returns ``{name: output}``.

    ``hidden`` gives some heads a residual hidden layer of the given width (:class:`ResidualHead`).
    """

    def __init__(self, heads: Mapping[str, int], *, in_channels: int,
                 hidden: Optional[Mapping[str, int]] = None, image: Iterable[str] = (),
                 image_channels: int = 1) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.image_heads: List[str] = [str(n) for n in image]
        self.image_channels = int(image_channels)
        hidden = dict(hidden or {})
        unknown = sorted((set(hidden) | set(self.image_heads)) - set(heads))
        if unknown:
            raise InputError(f"hidden layers or image inputs for unknown head(s) {unknown}; the heads are {list(heads)}")
        for name, channels in heads.items():
            width = self.in_channels + (self.image_channels if name in self.image_heads else 0)
            if name in hidden:
                self[PREFIX + name] = ResidualHead(width, int(channels), hidden=int(hidden[name]))
            else:
                self[PREFIX + name] = nn.Conv3d(width, int(channels), kernel_size=1, bias=True)

    @property
    def names(self) -> List[str]:
        """Head names in construction order (without the ``final_conv_`` prefix)."""
        return [k[len(PREFIX):] for k in self.keys()]

    def channels(self) -> Dict[str, int]:
        """``{name: output channels}``."""
        return {k[len(PREFIX):]: int(m.out_channels) for k, m in self.items()}

    def image_input(self, name: str, image: Optional[Tensor]) -> Optional[Tensor]:
        """The image that head ``name`` reads beside the feature: ``image`` (the network's input) for
        a head that reads it, else None."""
        if name not in self.image_heads:
            return None
        if image is None:
            raise InputError(f"head {name!r} reads the input image beside the feature, and none was given")
        return image

    def forward(self, feat: Tensor, *, names: Optional[Iterable[str]] = None,  # type: ignore[override]
                image: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """Apply the heads in ``names`` (default: all) to the feature ``feat`` (N, C, X, Y, Z); heads that
        read the input image get ``image`` (N, image_channels, X, Y, Z) beside it (without autograd
        through :func:`head_float`, which never copies the feature)."""
        wanted = self.names if names is None else list(names)
        unknown = [n for n in wanted if PREFIX + n not in self]
        if unknown:
            raise InputError(f"unknown head(s) {unknown}; this model has {self.names}")
        out = {}
        for n in wanted:
            conv, extra = self[PREFIX + n], self.image_input(n, image)
            if extra is None:
                out[n] = conv(feat)
            elif torch.is_grad_enabled():
                out[n] = conv(torch.cat([feat, extra.to(feat.dtype)], dim=1))
            else:
                out[n] = head_float(conv, feat, image=extra, dtype=feat.dtype)
        return out
