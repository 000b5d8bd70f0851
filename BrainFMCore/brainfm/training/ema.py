"""An exponential moving average (EMA) of the network's weights: the model a run exports.

With a constant learning rate and small batches the weights of the last step are noisy; their moving
average (``ema = decay * ema + (1 - decay) * weights`` after every optimizer step) is a better model
at no training cost. The average is kept by :class:`torch.optim.swa_utils.AveragedModel`; it is saved in
every checkpoint (group ``ema``), resumed exactly, and exported instead of the last weights
(``optim.ema_decay`` > 0; 0 turns it off). A run resumed from a checkpoint without an average starts
the average from the resumed weights.

>>> import torch
>>> net = torch.nn.Linear(2, 1, bias=False)
>>> ema = build_ema(net, decay=0.5)
>>> _ = net.weight.data.fill_(1.0); ema.update_parameters(net)    # the first update copies
>>> _ = net.weight.data.fill_(3.0); ema.update_parameters(net)    # 0.5 * 1 + 0.5 * 3
>>> averaged_weights(ema.state_dict())["weight"].tolist()
[[2.0, 2.0]]
"""
from __future__ import annotations

from typing import Dict

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

PREFIX = "module."


def build_ema(model: torch.nn.Module, *, decay: float) -> AveragedModel:
    """The moving average of ``model`` (an unwrapped network) with ``decay`` in (0, 1)."""
    if not 0.0 < float(decay) < 1.0:
        raise ValueError(f"optim.ema_decay must be in (0, 1) (0 turns the average off), got {decay}")
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(float(decay)), use_buffers=True)


def averaged_weights(ema_state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The network's state dict inside an :class:`AveragedModel` state dict (the ``ema`` group of a
    checkpoint): its ``module.`` tensors, without the prefix and the update counter."""
    return {k[len(PREFIX):]: v for k, v in ema_state.items() if k.startswith(PREFIX)}

