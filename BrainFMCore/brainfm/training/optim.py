"""AdamW with a linear warm-up followed by step decay (as in the reference BrainFM code, counted in steps).

>>> import torch
>>> from brainfm.training.optim import build_optimizer, lr_factor
>>> [lr_factor(s, warmup_steps=4, lr_drops=[10], drop_factor=0.1) for s in (0, 3, 4, 9, 10, 20)]
[0.25, 1.0, 1.0, 1.0, 0.1, 0.1]
>>> opt, sched = build_optimizer(torch.nn.Linear(2, 2).parameters(), lr=1e-3, warmup_steps=2)
>>> opt.param_groups[0]["lr"]
0.0005
"""
from __future__ import annotations

from typing import Iterable, Sequence, Tuple

import torch


def lr_factor(step: int, *, warmup_steps: int = 0, lr_drops: Sequence[int] = (),
              drop_factor: float = 0.1) -> float:
    """Multiplier of the base learning rate for optimizer step ``step`` (0-based).

    Warm-up: (step+1)/warmup_steps for the first ``warmup_steps`` steps; then ``drop_factor`` is applied
    once for every entry of ``lr_drops`` (absolute step numbers) already reached.
    """
    f = 1.0
    if warmup_steps > 0 and step < warmup_steps:
        f = (step + 1) / warmup_steps
    for d in lr_drops:
        if step >= int(d):
            f *= drop_factor
    return f


def build_optimizer(params: Iterable[torch.nn.Parameter], *, lr: float = 1e-4, weight_decay: float = 0.0,
                    betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8, warmup_steps: int = 0,
                    lr_drops: Sequence[int] = (), drop_factor: float = 0.1
                    ) -> Tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable ``params`` and its LambdaLR schedule (call ``sched.step()`` per step)."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters")
    opt = torch.optim.AdamW(params, lr=lr, betas=(float(betas[0]), float(betas[1])), eps=eps,
                            weight_decay=weight_decay)
    drops = [int(d) for d in lr_drops]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, warmup_steps=warmup_steps, lr_drops=drops, drop_factor=drop_factor))
    return opt, sched


def from_config(params: Iterable[torch.nn.Parameter], optim_cfg) -> Tuple[torch.optim.AdamW,
                                                                          torch.optim.lr_scheduler.LambdaLR]:
    """Build from a :class:`brainfm.training.config.OptimSection`."""
    return build_optimizer(params, lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay,
                           betas=optim_cfg.betas, eps=optim_cfg.eps, warmup_steps=optim_cfg.warmup_steps,
                           lr_drops=optim_cfg.lr_drops, drop_factor=optim_cfg.lr_drop_factor)
