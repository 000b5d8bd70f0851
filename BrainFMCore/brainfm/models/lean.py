"""Memory-lean inference kernels for :class:`~brainfm.models.unet.UNet3D` (autograd off only).

Same mathematics as the reference blocks, fewer full-resolution tensors alive at once:

* GroupNorm is folded into a per-channel ``scale``/``shift`` applied **in place** to tensors the
  network owns (statistics per channel, combined per group in float64).
* A decoder's first convolution over ``cat([skip, up])`` is split by input channels, so the
  concatenation never exists; ``up`` (the nearest-upsampled coarse feature) is never materialised
  at full resolution either: it is an :class:`Upsampled` view whose GroupNorm statistics are
  computed on the coarse grid with replication counts, and whose convolution runs in slabs.
* A refinement block (:class:`~brainfm.models.unet.RefineBlock`) adds to the feature in place and runs
  both convolutions in slabs, so only the feature and the block's inner feature exist at full resolution.

>>> import torch, torch.nn.functional as F
>>> x = torch.rand(1, 3, 4, 5, 3)
>>> up = Upsampled(x, (9, 11, 7))
>>> bool(torch.equal(up.rows(0, 9), F.interpolate(x, size=(9, 11, 7), mode="nearest")))
True
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LEAKY_SLOPE = 0.01


def nearest_index(n_in: int, n_out: int, device: torch.device) -> Tensor:
    """Source index of every output position of legacy ``nearest`` interpolation (same kernel)."""
    src = torch.arange(n_in, dtype=torch.float32, device=device).view(1, 1, n_in)
    return F.interpolate(src, size=n_out, mode="nearest").view(n_out).round().long()


class Upsampled:
    """Nearest-upsampled view of ``coarse`` (N, C, a, b, c) at spatial ``size``; nothing is
    materialised until :meth:`rows` is called for a slab along the first spatial axis."""

    def __init__(self, coarse: Tensor, size: Sequence[int]) -> None:
        self.coarse = coarse
        self.size = tuple(int(s) for s in size)
        self.index = [nearest_index(coarse.shape[2 + d], self.size[d], coarse.device) for d in range(3)]

    @property
    def shape(self) -> Tuple[int, ...]:
        return (self.coarse.shape[0], self.coarse.shape[1]) + self.size

    def numel(self) -> int:
        return math.prod(self.shape)

    def rows(self, start: int, stop: int) -> Tensor:
        """Materialised upsampled rows ``start:stop`` of the first spatial axis."""
        # first axis: gather coarse planes; other axes: the same per-axis nearest mapping as the
        # full interpolation (in == out on the first axis is the identity)
        x = self.coarse[:, :, self.index[0][start:stop]]
        return F.interpolate(x, size=(x.shape[2],) + self.size[1:], mode="nearest")

    def stats(self) -> Tuple[Tensor, Tensor]:
        """Per-channel (variance, mean) of the upsampled tensor, float64, from the coarse grid."""
        dtype = torch.float64 if self.coarse.dtype == torch.float64 else torch.float32
        counts = [torch.bincount(i, minlength=self.coarse.shape[2 + d]).to(dtype)
                  for d, i in enumerate(self.index)]
        w = counts[0][:, None, None] * counts[1][None, :, None] * counts[2][None, None, :]
        total = float(math.prod(self.size))
        means, variances = [], []
        for chunk in self.coarse.split(8, dim=1):
            c = chunk if chunk.dtype == torch.float64 else chunk.float()
            m = (c * w).sum(dim=(2, 3, 4), dtype=torch.float64) / total
            d = c - m.to(c.dtype)[..., None, None, None]
            v = (d.mul_(d).mul_(w)).sum(dim=(2, 3, 4), dtype=torch.float64) / total
            means.append(m)
            variances.append(v)
        return torch.cat(variances, 1), torch.cat(means, 1)


Part = Union[Tensor, Upsampled]


def _part_stats(p: Part) -> Tuple[Tensor, Tensor]:
    if isinstance(p, Upsampled):
        return p.stats()
    if p.dtype in (torch.float32, torch.float64):
        v, m = torch.var_mean(p, dim=(2, 3, 4), unbiased=False)
        return v.double(), m.double()
    vm = [torch.var_mean(c.float(), dim=(2, 3, 4), unbiased=False) for c in p.split(8, dim=1)]
    return torch.cat([a for a, _ in vm], 1).double(), torch.cat([b for _, b in vm], 1).double()


def groupnorm_affine(parts: Sequence[Part], gn: nn.GroupNorm) -> Tuple[Tensor, Tensor]:
    """Per-channel ``(scale, shift)`` (N, C, 1, 1, 1) equal to ``gn`` over the channel concatenation."""
    stats = [_part_stats(p) for p in parts]
    var_c = torch.cat([v for v, _ in stats], 1)
    mean_c = torch.cat([m for _, m in stats], 1)
    n, c = mean_c.shape
    g = gn.num_groups
    mg = mean_c.view(n, g, c // g)
    gmean = mg.mean(-1, keepdim=True)
    gvar = var_c.view(n, g, c // g).mean(-1, keepdim=True) + ((mg - gmean) ** 2).mean(-1, keepdim=True)
    rstd = torch.rsqrt(gvar + gn.eps)
    scale = rstd.expand(n, g, c // g).reshape(n, c)
    shift = -(gmean * rstd).expand(n, g, c // g).reshape(n, c)
    if gn.affine:
        w, b = gn.weight.double(), gn.bias.double()
        scale, shift = scale * w, shift * w + b
    first = parts[0].coarse if isinstance(parts[0], Upsampled) else parts[0]
    return scale.to(first.dtype)[..., None, None, None], shift.to(first.dtype)[..., None, None, None]


def _slab_rows(x_len: int) -> int:
    """Rows per slab: a quarter of the axis (few large convolutions keep PyTorch on its fast,
    low-memory kernels; the halo costs 2 rows per slab)."""
    return max(8, math.ceil(x_len / 4))


def _conv_in_slabs(rows: Callable[[int, int], Tensor], x_len: int, weight: Tensor, out: Tensor,
                   scale: Optional[Tensor] = None, shift: Optional[Tensor] = None, *, owned: bool) -> None:
    """``out += conv3d(x * scale + shift, weight)`` (3x3x3, padding 1) in slabs along the first axis, where
    ``rows(a, b)`` gives rows ``a:b`` of ``x`` (normalised in place when ``owned``, else copied)."""
    step = _slab_rows(x_len)
    for a in range(0, x_len, step):
        b = min(a + step, x_len)
        r0, r1 = max(a - 1, 0), min(b + 1, x_len)
        slab = rows(r0, r1)
        if scale is not None:
            slab = (slab.mul_(scale) if owned else slab.mul(scale)).add_(shift)
        slab = F.pad(slab, (0, 0, 0, 0, 1 if a == 0 else 0, 1 if b == x_len else 0))
        out[:, :, a:b].add_(F.conv3d(slab, weight, None, 1, (0, 1, 1)))
        del slab


def _conv_upsampled(part: Upsampled, weight: Tensor, scale: Tensor, shift: Tensor, out: Tensor) -> None:
    """``out += conv3d(normalise(upsampled), weight)`` computed in slabs along the first axis."""
    _conv_in_slabs(part.rows, part.size[0], weight, out, scale, shift, owned=True)


def single_conv_owned(block: nn.Module, holder: List[Part]) -> Tensor:
    """No-grad ``SingleConv`` (GroupNorm -> conv -> LeakyReLU) over the channel concatenation of
    ``holder``'s parts, which it normalises in place and releases as early as possible.

    ``holder`` is emptied so this function owns the only references to the parts.
    """
    scale, shift = groupnorm_affine(holder, block.groupnorm)
    weight = block.conv.weight
    out = None
    start = 0
    while holder:
        part = holder.pop(0)
        c = part.shape[1]
        whole = start == 0 and c == weight.shape[1]
        w = weight if whole else weight[:, start:start + c].contiguous()
        s, t = scale[:, start:start + c], shift[:, start:start + c]
        if isinstance(part, Upsampled):
            if out is None:
                n = part.shape[0]
                out = torch.zeros((n, weight.shape[0]) + part.size, dtype=part.coarse.dtype,
                                  device=part.coarse.device)
            _conv_upsampled(part, w, s, t, out)
        else:
            part.mul_(s).add_(t)
            y = F.conv3d(part, w, None, 1, 1)
            del part
            if out is None:
                out = y
            else:
                out.add_(y)
            del y
        start += c
    assert out is not None
    return F.leaky_relu_(out, LEAKY_SLOPE)


def decoder_owned(decoder: nn.Module, skip_holder: List[Tensor], coarse: Tensor) -> Tensor:
    """No-grad decoder step: ``DoubleConv(cat([skip, nearest_up(coarse)]))`` without the concat.

    Small levels (where activations are smaller than the first conv's weight) concatenate instead,
    to avoid copying weight slices.
    """
    skip = skip_holder.pop()
    up = Upsampled(coarse, skip.shape[2:])
    block = decoder.basic_module
    parts: List[Part]
    if skip.numel() + up.numel() <= block.SingleConv1.conv.weight.numel():
        parts = [torch.cat([skip, F.interpolate(coarse, size=skip.shape[2:], mode="nearest")], dim=1)]
    else:
        parts = [skip, up]
    del skip, up
    h = single_conv_owned(block.SingleConv1, parts)
    return single_conv_owned(block.SingleConv2, [h])



def refine_owned(block: nn.Module, x: Tensor) -> Tensor:
    """No-grad :class:`~brainfm.models.unet.RefineBlock`: adds the block's output to ``x`` (a tensor the
    network owns) in place and returns it. Both convolutions run in slabs, so at full resolution only
    ``x`` and the inner feature exist (plus one slab)."""
    scale, shift = groupnorm_affine([x], block.groupnorm1)
    h = x.new_zeros((x.shape[0], block.conv1.weight.shape[0]) + tuple(x.shape[2:]))
    _conv_in_slabs(lambda a, b: x[:, :, a:b], x.shape[2], block.conv1.weight, h, scale, shift, owned=False)
    F.leaky_relu_(h, LEAKY_SLOPE)
    scale, shift = groupnorm_affine([h], block.groupnorm2)
    h.mul_(scale).add_(shift)
    _conv_in_slabs(lambda a, b: h[:, :, a:b], h.shape[2], block.conv2.weight, x, owned=False)
    return x
