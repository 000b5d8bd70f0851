"""Fit the residual hidden layer of some heads on a trained network's frozen features, from synthetic samples.

A 1x1x1 head maps a voxel's features linearly to its output. That suits segmentation (an argmax over 33
linear scores) but not every image: FLAIR and CT both order the tissues grey matter > white matter >
CSF, which no linear map of the features of the compact model gives, so its synthetic FLAIR and CT had
nearly no grey/white contrast. A :class:`~brainfm.models.heads.ResidualHead` adds a per-voxel hidden layer
to the head; this module fits that layer alone, with the backbone and the head's linear part frozen:
the features of a few synthetic batches are computed once, then each step takes random voxels of them
(L1 loss against the target image, as the training objective's image term). The fitted tensors go
into a grown training run (:func:`brainfm.training.grow.grow_checkpoint`, ``init``), which then trains
everything together as before.

>>> import torch
>>> from types import SimpleNamespace
>>> from brainfm.models import BrainFMNet, ModelConfig
>>> net = BrainFMNet(ModelConfig(f_maps=4, num_levels=2, num_groups=2, heads={"FLAIR": 1}))
>>> batch = SimpleNamespace(inputs=torch.rand(2, 1, 8, 8, 8), targets={"FLAIR": torch.rand(1, 1, 8, 8, 8)})
>>> feats, targets = frozen_samples(net, [batch], heads=["FLAIR"])
>>> fitted = fit_hidden_layers(net, feats, targets, hidden=4, iters=5, voxels=64)
>>> sorted(fitted)
['head.final_conv_FLAIR.hidden.0.bias', 'head.final_conv_FLAIR.hidden.0.weight', 'head.final_conv_FLAIR.hidden.2.weight']
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from brainfm.errors import InputError
from brainfm.models.heads import PREFIX, ResidualHead
from brainfm.progress import CancelToken, ProgressCallback, ensure_callback

#: hidden layer width, steps and learning rate that the recipe used (see the model card)
HIDDEN = 32
ITERS = 2000
LR = 3e-3
#: voxels of one step
VOXELS = 65536


def frozen_samples(net: nn.Module, batches: Iterable[Any], *, heads: Sequence[str]
                   ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The final features of ``net`` on every input of ``batches`` (generator batches: ``inputs``
    (N, 1, S...), ``targets[head]`` (1 or N, 1, S...)), in half precision, and the targets of ``heads``
    broadcast to them: ``((M, C, S...), {head: (M, 1, S...)})``."""
    feats, targets = [], {h: [] for h in heads}
    was_training = net.training
    net.eval()
    try:
        for b in batches:
            n = int(b.inputs.shape[0])
            with torch.no_grad():
                feats.append(net(b.inputs)["feat"].to(torch.float16))
            for h in heads:
                t = b.targets.get(h)
                if t is None:
                    raise ValueError(f"the batches have no {h!r} target")
                targets[h].append(t.expand(n, *t.shape[1:]).to(torch.float16))
    finally:
        net.train(was_training)
    if not feats:
        raise ValueError("no batches")
    return torch.cat(feats), {h: torch.cat(v) for h, v in targets.items()}


def fit_hidden_layers(net: nn.Module, features: torch.Tensor, targets: Dict[str, torch.Tensor], *,
                      hidden: int = HIDDEN, iters: int = ITERS, lr: float = LR, voxels: int = VOXELS,
                      seed: int = 0, progress: Optional[ProgressCallback] = None,
                      cancel: Optional[CancelToken] = None) -> Dict[str, torch.Tensor]:
    """A hidden layer of width ``hidden`` for the head of each key of ``targets``, fitted on ``features``
    (from :func:`frozen_samples`) with the head's linear part of ``net`` fixed. Returns the new tensors
    under their state-dict names in a network whose config adds ``head_hidden`` for those heads (the
    output layer starts at zero, so before the first step the head computes what ``net``'s does)."""
    report = ensure_callback(progress)
    flat = features.movedim(1, -1).reshape(-1, features.shape[1])
    out: Dict[str, torch.Tensor] = {}
    for k, (name, target) in enumerate(targets.items()):
        base = net.head[PREFIX + name]
        if isinstance(base, ResidualHead):
            raise ValueError(f"head {name!r} already has a hidden layer")
        head = ResidualHead(int(base.in_channels), int(base.out_channels), hidden=hidden)
        with torch.no_grad():
            head.weight.copy_(base.weight.float())
            head.bias.copy_(base.bias.float())
        head.weight.requires_grad_(False)
        head.bias.requires_grad_(False)
        tflat = target.reshape(-1, int(base.out_channels))
        opt = torch.optim.Adam(head.hidden.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(iters, 1))
        gen = torch.Generator().manual_seed(seed + k)
        for it in range(iters):
            if cancel is not None:
                cancel.raise_if_cancelled()
            idx = torch.randint(flat.shape[0], (voxels,), generator=gen)
            x = flat[idx].float().T.reshape(1, flat.shape[1], voxels, 1, 1)
            y = tflat[idx].float().T.reshape(1, -1, voxels, 1, 1)
            loss = (head(x) - y).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if it % 100 == 0 or it == iters - 1:
                report((k + (it + 1) / max(iters, 1)) / len(targets), f"fitting the {name} head's hidden layer")
        for key, value in head.hidden.state_dict().items():
            out[f"head.{PREFIX}{name}.hidden.{key}"] = value.detach().clone()
    return out


#: the first synthetic batch of a fit: seeds that a run itself does not draw
FIRST_BATCH = 1_000_000_000


def fit_for_config(net: nn.Module, cfg: Any, heads: Sequence[str], *, batches: int = 16, iters: int = ITERS,
                   source: Any = None, first_batch: int = FIRST_BATCH,
                   log: Any = None) -> Dict[str, torch.Tensor]:
    """The hidden layers that the training configuration ``cfg`` (``model.head_hidden``) gives ``heads``,
    fitted on ``net``'s frozen features of ``batches`` synthetic batches of ``cfg``'s training data
    (``source``: a :class:`~brainfm.training.data.GeneratorSource`, by default the configuration's own).
    :class:`~brainfm.errors.InputError` when ``cfg`` gives one of ``heads`` no hidden layer, or gives
    them different widths. ``log``: a callable that takes a line of text."""
    import time

    hidden = dict(cfg.model.head_hidden or {})
    missing = [h for h in heads if h not in hidden]
    if missing:
        raise InputError(f"heads {missing}: the configuration adds no hidden layer to them (model.head_hidden)")
    widths = {int(hidden[h]) for h in heads}
    if len(widths) != 1:
        raise InputError(f"the heads to fit need one hidden width, got {sorted(widths)}")
    if source is None:
        from brainfm.training.data import source_from_config

        source = source_from_config(cfg, "cpu")
    say = log or (lambda line: None)
    t0 = time.time()
    feats, targets = frozen_samples(net, (source.batch(first_batch + i) for i in range(batches)), heads=heads)
    say(f"features of {feats.shape[0]} samples in {time.time() - t0:.0f} s; fitting the hidden layers of {list(heads)}")
    fitted = fit_hidden_layers(net, feats, targets, hidden=widths.pop(), iters=iters)
    say(f"fitted in {time.time() - t0:.0f} s")
    return fitted


def added_heads(model_config: Any, cfg: Any) -> List[str]:
    """Heads to which the training configuration ``cfg`` gives a hidden layer that the model of
    ``model_config`` (a :class:`~brainfm.models.ModelConfig`) lacks.

    >>> from types import SimpleNamespace
    >>> from brainfm.models import ModelConfig
    >>> cfg = SimpleNamespace(model=SimpleNamespace(head_hidden={"T1": 32, "CT": 32}))
    >>> added_heads(ModelConfig(heads={"T1": 1, "CT": 1}, head_hidden={"T1": 32}), cfg)
    ['CT']
    """
    own = dict(getattr(model_config, "head_hidden", None) or {})
    return [h for h in (cfg.model.head_hidden or {}) if h not in own and h in model_config.heads]
