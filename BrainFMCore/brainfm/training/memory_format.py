"""The channels_last_3d memory format for training on the CPU, guarded against a PyTorch fault.

On the CPU, training in ``torch.channels_last_3d`` is 1.6x faster per step (see
:meth:`brainfm.training.trainer.Trainer`). But GroupNorm's backward pass in that format crashes the
process (a segmentation fault in PyTorch's channels-last GroupNorm backward kernel, torch 2.13) when its
input needs no gradient while its weight does, on small volumes: 16 channels of 6³ to 12³ voxels crash,
16³ do not. Fine-tuning with a frozen encoder (``brainfm finetune --mode encoder``) does exactly that at
the decoder's first GroupNorm, whose input comes from the frozen encoder. :func:`to_channels_last`
converts a model and gives each affine GroupNorm a pre-hook that hands it an input without gradient in the
standard layout instead (a copy of one coarse level per step: negligible).

>>> import torch
>>> norm = to_channels_last(torch.nn.GroupNorm(8, 16))
>>> x = torch.randn(2, 16, 6, 6, 6).contiguous(memory_format=torch.channels_last_3d)  # from a frozen layer
>>> norm(x).square().sum().backward()  # crashed the process without the guard
>>> bool(norm.weight.grad.abs().sum() > 0)
True
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch


def to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in ``torch.channels_last_3d``, its affine GroupNorms guarded (see the module text)."""
    model = model.to(memory_format=torch.channels_last_3d)
    for module in model.modules():
        if isinstance(module, torch.nn.GroupNorm) and module.affine:
            module.register_forward_pre_hook(_standard_layout_without_grad)
    return model


def _standard_layout_without_grad(module: torch.nn.GroupNorm, args: Tuple[Any, ...]) -> Optional[Tuple[Any, ...]]:
    x = args[0]
    if (torch.is_grad_enabled() and x.device.type == "cpu" and x.dim() == 5 and not x.requires_grad
            and module.weight.requires_grad and x.is_contiguous(memory_format=torch.channels_last_3d)):
        return (x.contiguous(),) + tuple(args[1:])
    return None
