"""Grow a training run's network without losing its training: a checkpoint for a larger architecture.

:func:`grow_checkpoint` writes, into another run folder, a checkpoint of the same step for the model of
a training configuration that holds every tensor of the checkpoint's model with the same shape and
adds some (a head's residual hidden layer, ``model.head_hidden``; residual full-resolution blocks,
``model.refine``). The tensors it shares keep their values, their moving average and their AdamW
moments; the added ones keep their initialisation and start their optimizer state fresh. A
:class:`~brainfm.models.heads.ResidualHead` and a :class:`~brainfm.models.unet.RefineBlock` start with a
zero output layer, so the grown network computes exactly what the checkpoint's did, and the run resumes
from there with ``brainfm train`` (same step, learning-rate schedule, random streams and CPU-hours).

>>> import tempfile
>>> from brainfm.training.checkpoint import save_checkpoint
>>> from brainfm.training.config import TrainConfig, apply_overrides
>>> from brainfm.training.grow import grow_checkpoint
>>> from brainfm.training.trainer import architecture_of, build_model
>>> small = ["model.f_maps=4", "model.num_levels=2", "model.num_groups=2"]
>>> cfg = apply_overrides(TrainConfig(), small)
>>> d = tempfile.mkdtemp()
>>> old = save_checkpoint(d + "/run", model=build_model(cfg), step=5, architecture=architecture_of(cfg))
>>> bigger = apply_overrides(TrainConfig(), small + ["model.head_hidden={segmentation: 8}"])
>>> grow_checkpoint(old, d + "/grown", bigger).name
'step_00000005'
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Union

import torch

from brainfm.errors import CheckpointError
from brainfm.training.checkpoint import (_read_shards, read_meta, read_optimizer_state, restore_rng_state,
                                         restore_scheduler, save_checkpoint, verify_files)
from brainfm.training.config import TrainConfig

PathLike = Union[str, Path]


def grow_checkpoint(checkpoint: PathLike, run_dir: PathLike, cfg: TrainConfig, *,
                    init: Optional[Mapping[str, torch.Tensor]] = None) -> Path:
    """Write ``<run_dir>/checkpoints/step_<N>/`` for ``cfg`` (a :class:`~brainfm.training.config.TrainConfig`)
    from the checkpoint folder ``checkpoint`` of step N; returns the new checkpoint folder.

    Raises :class:`CheckpointError` when ``cfg``'s model lacks a tensor of the checkpoint's model or
    shapes differ (growing only adds), when a file of the checkpoint fails its SHA-256, or when
    ``run_dir`` already has checkpoints (never overwritten). The source checkpoint is only read.

    ``init``: starting values of some added tensors (weights and moving average), by state-dict name,
    such as the hidden layers fitted by :func:`brainfm.training.head_fit.fit_hidden_layers`; the others
    keep their initialisation. Naming a tensor the checkpoint already has is an error.
    """
    from brainfm.models import BrainFMNet, ModelConfig
    from brainfm.training.ema import build_ema
    from brainfm.training.optim import from_config as build_optim
    from brainfm.training.trainer import architecture_of, build_model

    src = Path(checkpoint)
    meta = read_meta(src)
    verify_files(src, meta)
    out_root = Path(run_dir) / "checkpoints"
    if out_root.is_dir() and any(out_root.iterdir()):
        raise CheckpointError(f"{out_root} already holds checkpoints; grow into an empty run folder")
    old_arch = dict(meta.get("architecture") or {})
    if not old_arch:
        raise CheckpointError(f"checkpoint {src} records no architecture; it cannot be grown")
    with torch.device("meta"):
        old_names = [n for n, _ in BrainFMNet(ModelConfig.from_dict(old_arch)).named_parameters()]
    weights = _read_shards(src, meta["groups"]["model"], "cpu")
    net = build_model(cfg)
    own = net.state_dict()
    problems = [f"{k} is not in the new model" for k in weights if k not in own]
    problems += [f"{k}: checkpoint {tuple(v.shape)} vs new model {tuple(own[k].shape)}"
                 for k, v in weights.items() if k in own and own[k].shape != v.shape]
    if problems or set(old_names) - set(weights):
        raise CheckpointError(f"cannot grow {src} into the configured model (growing only adds tensors): "
                              + "; ".join(problems[:8] or ["the checkpoint's weights do not match its architecture"]))
    added = [k for k in own if k not in weights]
    init = dict(init or {})
    wrong = [f"{k} is not a tensor the growing adds" for k in init if k not in added]
    wrong += [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in init.items()
              if k in added and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise CheckpointError("cannot start the grown model from the values given: " + "; ".join(wrong[:8]))
    net.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in init.items()}, **weights}, strict=True)

    ema = None
    if cfg.optim.ema_decay > 0:
        ema = build_ema(net, decay=cfg.optim.ema_decay)
        old_avg = _read_shards(src, meta["groups"]["ema"], "cpu") if meta["groups"].get("ema") else {}
        ema.load_state_dict({**ema.state_dict(), **old_avg}, strict=True)

    optimizer, scheduler = build_optim(net.parameters(), cfg.optim)
    if "optimizer" in meta:
        old_state, groups = read_optimizer_state(src, meta)
        index = {n: i for i, n in enumerate(old_names)}
        new_names = [n for n, _ in net.named_parameters()]
        state = {j: old_state[index[n]] for j, n in enumerate(new_names) if index.get(n) in old_state}
        if len(groups) != 1:
            raise CheckpointError(f"checkpoint {src} has {len(groups)} optimizer parameter groups; "
                                  "growing handles one")
        groups[0]["params"] = list(range(len(new_names)))
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    restore_scheduler(scheduler, meta)
    gen = torch.Generator()
    if meta.get("rng"):
        restore_rng_state(meta["rng"], gen)
    extra = dict(meta.get("extra") or {})
    extra["grown_from"] = {"step": int(meta["step"]), "added": added, "fitted": sorted(init)}
    run = cfg.run
    return save_checkpoint(run_dir, model=net, optimizer=optimizer, scheduler=scheduler, step=int(meta["step"]),
                           config=cfg.to_dict(), architecture=architecture_of(cfg), generator=gen,
                           optim_dtype=meta.get("optim_dtype", run.optim_dtype), max_file_mb=run.max_file_mb,
                           keep_last=run.keep_last, averaged=ema, extra=extra)
