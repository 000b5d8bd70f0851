"""Reference-compatible 3D UNet backbone (pytorch-3dunet topology as used by BrainFM / Brain-ID).

Module and parameter names match the official checkpoints exactly
(``encoders.<k>.basic_module.SingleConv1.groupnorm.weight`` ...), so official weights load strictly.
Each ``SingleConv`` is GroupNorm (on its input) -> bias-free 3x3x3 conv (padding 1) -> LeakyReLU(0.01).
Every encoder after the first max-pools (2, floor mode) first; decoders upsample with legacy ``nearest``
interpolation to the skip tensor's size and concatenate ``[skip, up]``.

**Input alignment.** With floor pooling and nearest upsampling, a side that is not a multiple of
``2 ** (num_levels - 1)`` puts the coarse features up to one coarse voxel (16 voxels for 5 levels)
away from the anatomy they describe. The backbone therefore pads its input at the high end of each axis
with the volume's minimum (zero, the background, for min-max normalised inputs) to the next multiple (:attr:`UNet3D.size_multiple`) and crops every output back
(``align_input=False`` feeds the volume as it is, like the reference demo). On a real T1 the compact
2 mm model scored merged-17 Dice 0.50 unaligned and 0.65 aligned; inputs that are already multiples
(every training window) are unchanged.

When autograd is off (``torch.no_grad`` / ``torch.inference_mode``) :meth:`UNet3D.forward` runs a
memory-lean path (:mod:`brainfm.models.lean`): GroupNorm is applied in place on tensors the network
owns, skip tensors are dropped as soon as they are used, and the first decoder convolution is split
over ``[skip, up]`` with ``up`` convolved in slabs, so neither the concatenation nor the upsampled
feature exists at full resolution (about 2.7x less peak memory than the plain forward on CPU).
The caller's input is never modified.

**Refinement blocks** (``refine``, native models only): residual blocks at full resolution after the
last decoder, ``x + conv(GroupNorm(LeakyReLU(conv(GroupNorm(x)))))`` with an inner width of their own
(:class:`RefineBlock`). Their output convolution starts at zero, so adding blocks to a trained backbone
changes none of its outputs (:func:`brainfm.training.grow.grow_checkpoint` grows a run with them).

>>> import torch
>>> net = UNet3D(f_maps=8, num_levels=3)
>>> with torch.no_grad():
...     y = net(torch.rand(1, 1, 19, 23, 17))
>>> tuple(y.shape)
(1, 8, 19, 23, 17)
>>> bool(torch.allclose(y.norm(dim=1), torch.ones(1, 19, 23, 17), atol=1e-5))
True
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brainfm.errors import InputError
from brainfm.models.config import group_count
from brainfm.models.lean import LEAKY_SLOPE as _LEAKY_SLOPE, decoder_owned, refine_owned, single_conv_owned


class SingleConv(nn.Sequential):
    """GroupNorm(in) -> Conv3d(3, padding 1, no bias) -> LeakyReLU(0.01, in place)."""

    def __init__(self, in_channels: int, out_channels: int, *, num_groups: int = 8) -> None:
        super().__init__()
        self.add_module("groupnorm", nn.GroupNorm(group_count(in_channels, num_groups), in_channels))
        self.add_module("conv", nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False))
        self.add_module("LeakyReLU", nn.LeakyReLU(_LEAKY_SLOPE, inplace=True))

    def forward_owned(self, holder: List[Tensor]) -> Tensor:
        """No-grad forward that normalises ``holder``'s tensor in place (see :mod:`brainfm.models.lean`)."""
        return single_conv_owned(self, holder)


class DoubleConv(nn.Sequential):
    """Two :class:`SingleConv`; encoder conv1 width ``max(out // 2, in)``, decoder conv1 ``in -> out``."""

    def __init__(self, in_channels: int, out_channels: int, *, encoder: bool, num_groups: int = 8) -> None:
        super().__init__()
        mid = max(out_channels // 2, in_channels) if encoder else out_channels
        self.add_module("SingleConv1", SingleConv(in_channels, mid, num_groups=num_groups))
        self.add_module("SingleConv2", SingleConv(mid, out_channels, num_groups=num_groups))


class Encoder(nn.Module):
    """Optional MaxPool3d(2) followed by a :class:`DoubleConv`."""

    def __init__(self, in_channels: int, out_channels: int, *, pool: bool, num_groups: int = 8) -> None:
        super().__init__()
        self.pooling = nn.MaxPool3d(kernel_size=2) if pool else None
        self.basic_module = DoubleConv(in_channels, out_channels, encoder=True, num_groups=num_groups)

    def forward(self, x: Tensor) -> Tensor:
        if self.pooling is not None:
            x = self.pooling(x)
        return self.basic_module(x)


class InterpolateUpsampling(nn.Module):
    """Legacy ``nearest`` interpolation of ``x`` to the spatial size of the skip feature."""

    def forward(self, encoder_features: Tensor, x: Tensor) -> Tensor:
        return F.interpolate(x, size=encoder_features.shape[2:], mode="nearest")


class Decoder(nn.Module):
    """Upsample to the skip size, concatenate ``[skip, up]``, then :class:`DoubleConv` (``in -> out``)."""

    def __init__(self, in_channels: int, out_channels: int, *, num_groups: int = 8) -> None:
        super().__init__()
        self.upsampling = InterpolateUpsampling()
        self.basic_module = DoubleConv(in_channels, out_channels, encoder=False, num_groups=num_groups)

    def forward(self, encoder_features: Tensor, x: Tensor) -> Tensor:
        x = self.upsampling(encoder_features, x)
        return self.basic_module(torch.cat((encoder_features, x), dim=1))


class RefineBlock(nn.Module):
    """Residual full-resolution block ``x + conv2(GN(LeakyReLU(conv1(GN(x)))))`` (3x3x3 convs, ``channels
    -> width -> channels``); ``conv2`` starts at zero, so a new block is the identity.

    >>> blk = RefineBlock(8, 16, num_groups=4)
    >>> x = torch.rand(1, 8, 5, 6, 7)
    >>> bool(torch.equal(blk(x), x))
    True
    """

    def __init__(self, channels: int, width: int, *, num_groups: int = 8) -> None:
        super().__init__()
        self.groupnorm1 = nn.GroupNorm(group_count(channels, num_groups), channels)
        self.conv1 = nn.Conv3d(channels, width, 3, padding=1, bias=False)
        self.groupnorm2 = nn.GroupNorm(group_count(width, num_groups), width)
        self.conv2 = nn.Conv3d(width, channels, 3, padding=1, bias=False)
        nn.init.zeros_(self.conv2.weight)

    def forward(self, x: Tensor) -> Tensor:
        h = F.leaky_relu(self.conv1(self.groupnorm1(x)), _LEAKY_SLOPE)
        return x + self.conv2(self.groupnorm2(h))

    def forward_owned(self, x: Tensor) -> Tensor:
        """No-grad forward that adds to ``x`` in place (see :func:`brainfm.models.lean.refine_owned`)."""
        return refine_owned(self, x)


class UNet3D(nn.Module):
    """The BrainFM backbone: ``num_levels`` encoder levels of ``f_maps * 2**k`` channels.

    ``unit_feat`` L2-normalises the final feature over channels (eps 1e-12), as the official
    BrainFM model does (Brain-ID does not). ``align_input`` pads the input to a multiple of
    :attr:`size_multiple` and crops the outputs back (see the module docstring). ``refine`` lists the
    inner widths of residual blocks after the last decoder (:class:`RefineBlock`; none for official models).
    """

    def __init__(self, in_channels: int = 1, f_maps: int = 64, num_levels: int = 6, num_groups: int = 8,
                 unit_feat: bool = True, *, align_input: bool = True, refine: Sequence[int] = ()) -> None:
        super().__init__()
        if num_levels < 2:
            raise ValueError(f"num_levels must be >= 2 (got {num_levels})")
        ch = [f_maps * 2**k for k in range(num_levels)]
        self.in_channels, self.f_maps, self.num_levels = in_channels, f_maps, num_levels
        self.num_groups, self.unit_feat = num_groups, bool(unit_feat)
        self.align_input = bool(align_input)
        self.encoders = nn.ModuleList(
            Encoder(in_channels if k == 0 else ch[k - 1], ch[k], pool=k > 0, num_groups=num_groups)
            for k in range(num_levels)
        )
        rev = ch[::-1]
        self.decoders = nn.ModuleList(
            Decoder(rev[j] + rev[j + 1], rev[j + 1], num_groups=num_groups) for j in range(num_levels - 1)
        )
        # no attribute at all without blocks: official state dicts and module listings stay as they are
        if refine:
            self.refine = nn.ModuleList(RefineBlock(f_maps, int(w), num_groups=num_groups) for w in refine)

    @property
    def size_multiple(self) -> int:
        """Side length multiple at which every pooling level lines up (``2 ** (num_levels - 1)``)."""
        return 2 ** (self.num_levels - 1)

    @property
    def out_channels(self) -> int:
        """Channels of the final feature (``f_maps``)."""
        return self.f_maps

    def _normalize(self, x: Tensor, *, inplace: bool) -> Tensor:
        if not self.unit_feat:
            return x
        if not inplace:
            return F.normalize(x, p=2.0, dim=1, eps=1e-12)
        norm = torch.linalg.vector_norm(x, ord=2, dim=1, keepdim=True)
        return x.div_(norm.clamp_min_(1e-12))

    def get_feature(self, x: Tensor) -> List[Tensor]:
        """Multi-scale features, coarse to fine: bottleneck then every decoder output.

        Only the last (full-resolution) one is L2-normalised when ``unit_feat``. This keeps every
        level in memory (reference API); use :meth:`forward` when only the final feature is needed.
        """
        return self._run(x, keep_all=True)

    def forward(self, x: Tensor) -> Tensor:
        """Final full-resolution feature ``(N, f_maps, X, Y, Z)`` (unit-norm per voxel when ``unit_feat``)."""
        return self._run(x, keep_all=False)[-1]

    def _run(self, x: Tensor, *, keep_all: bool) -> List[Tensor]:
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise InputError(f"the network expects a (N, {self.in_channels}, X, Y, Z) tensor, got {tuple(x.shape)}")
        size = tuple(int(n) for n in x.shape[2:])
        x = self._aligned(x)
        lean = not torch.is_grad_enabled()
        skips: List[Tensor] = []
        for k, enc in enumerate(self.encoders):
            if not lean:
                x = enc(x)
            else:
                if k == 0:  # never touch the caller's tensor: out-of-place first GroupNorm
                    first = enc.basic_module.SingleConv1
                    h = F.leaky_relu_(first.conv(first.groupnorm(x)), _LEAKY_SLOPE)
                else:
                    h = enc.pooling(x)
                    h = enc.basic_module.SingleConv1.forward_owned([h])
                x = enc.basic_module.SingleConv2.forward_owned([h])
                del h
            skips.append(x)
        x = skips.pop()
        feats: List[Tensor] = [x] if keep_all else []
        for dec in self.decoders:
            if not lean:
                x = dec(skips.pop(), x)
            else:
                holder = [skips.pop()]
                x = decoder_owned(dec, holder, x)
            if keep_all:
                feats.append(x)
        for blk in getattr(self, "refine", ()):
            x = blk.forward_owned(x) if lean else blk(x)
        x = self._normalize(x, inplace=lean)
        if keep_all:
            feats[-1] = x
            return [_crop(f, size, 2 ** (len(feats) - 1 - i)) for i, f in enumerate(feats)]
        return [_crop(x, size, 1)]

    def _aligned(self, x: Tensor) -> Tensor:
        """``x`` padded at the high end of each axis to a multiple of :attr:`size_multiple`
        (``x`` itself when aligned or ``align_input`` is off; the memory format is kept)."""
        m = self.size_multiple
        pads = [(-int(n)) % m for n in x.shape[2:]]
        if not self.align_input or not any(pads):
            return x
        shape = list(x.shape[:2]) + [int(n) + p for n, p in zip(x.shape[2:], pads)]
        fmt = torch.channels_last_3d if x.is_contiguous(memory_format=torch.channels_last_3d) \
            and not x.is_contiguous() else torch.contiguous_format
        # the padding takes each volume's minimum (its background once min-max normalised), which
        # keeps the features invariant to a positive affine change of intensities
        y = x.amin(dim=(2, 3, 4), keepdim=True).expand(shape).contiguous(memory_format=fmt)
        y[:, :, :x.shape[2], :x.shape[3], :x.shape[4]] = x
        return y


def _crop(x: Tensor, size: "tuple[int, ...]", stride: int) -> Tensor:
    """The part of a level-``stride`` feature that covers an input of spatial ``size``."""
    keep = [-(-n // stride) for n in size]
    if list(x.shape[2:]) == keep:
        return x
    return x[:, :, :keep[0], :keep[1], :keep[2]]
