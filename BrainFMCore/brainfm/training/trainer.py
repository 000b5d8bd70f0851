"""The training loop: AdamW + warm-up/step decay, bf16 autocast on CUDA, gradient clipping, an optional
moving average of the weights (exported and validated instead of the last weights), a time box, atomic checkpoints with exact resume, validation (Dice + PSNR) on held-out subjects, CSV/TensorBoard
logs, a loss-curve PNG, torchrun DDP (one process per GPU; Gloo on CPU) and clear OOM messages.

The data come from a *batch source* (see :mod:`brainfm.training.data`): ``source.batch(step, rank,
world_size)`` returns a generator batch that depends only on (seed, step, rank), so an interrupted run
resumed from its checkpoint sees exactly the batches it would have seen.

>>> from brainfm.training.config import TrainConfig, apply_overrides
>>> cfg = apply_overrides(TrainConfig(), ["model.f_maps=4", "model.num_levels=3", "model.num_groups=2"])
>>> net = build_model(cfg)
>>> architecture_of(cfg)["f_maps"], sorted(net.config.heads)[:3]
(4, ['CT', 'FLAIR', 'T1'])

A run: ``Trainer(cfg, source=source_from_config(cfg, "cpu")).fit()`` (see :mod:`brainfm.training.data`).
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Protocol, runtime_checkable

import torch

from brainfm.errors import BrainFMError, CheckpointError, ResourceError
from brainfm.progress import CancelToken, ProgressCallback, ensure_callback
from brainfm.training import checkpoint as ckpt
from brainfm.training import dist as D
from brainfm.training.config import TrainConfig
from brainfm.training.ema import build_ema
from brainfm.training.evaluate import evaluate_batches, summarize
from brainfm.training.memory_format import to_channels_last
from brainfm.training.objectives import build_objective
from brainfm.training.optim import from_config as build_optim
from brainfm.training.runlog import CsvLog, TensorBoard, plot_loss_curve


@runtime_checkable
class Reparametrised(Protocol):
    """A network that trains in another parametrisation than the one it is used in, and gives its plain
    form (the same outputs) with :meth:`plain`: :class:`~brainfm.training.feature_cache.HeadOnlyNet`
    with standardised inputs. A plain form's ``export_provenance`` (a dict), when it has one, is
    added to the exported model's provenance."""

    def plain(self) -> torch.nn.Module:
        """The network in the parametrisation it is validated, exported and used in."""
        ...


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` did."""

    step: int
    start_step: int
    losses: List[float] = field(default_factory=list)
    checkpoint: Optional[Path] = None
    native_model: Optional[Path] = None
    stopped: str = "max_steps"
    val: Dict[str, float] = field(default_factory=dict)
    log_csv: Optional[Path] = None
    curve_png: Optional[Path] = None
    seconds: float = 0.0


def oom_error(cfg: TrainConfig, device: torch.device, where: str) -> ResourceError:
    """The message users read when the device runs out of memory."""
    g = cfg.generator
    return ResourceError(
        f"out of memory on {device} during {where} (generator.size={g.size}, generator.n_samples="
        f"{g.n_samples}, model.f_maps={cfg.model.f_maps}, model.num_levels={cfg.model.num_levels}). "
        f"Lower generator.size (e.g. {max(32, (g.size * 3 // 4) // 16 * 16)}) or generator.n_samples "
        f"(e.g. {max(1, g.n_samples // 2)}), e.g. --set generator.size=... --set generator.n_samples=...")


def build_model(cfg: TrainConfig) -> torch.nn.Module:
    """A fresh :class:`brainfm.models.BrainFMNet` from the ``model`` section."""
    from brainfm.models import BrainFMNet, ModelConfig

    m = cfg.model
    return BrainFMNet(ModelConfig(f_maps=m.f_maps, num_levels=m.num_levels, num_groups=m.num_groups,
                                  unit_feat=m.unit_feat, heads=dict(m.heads), head_hidden=dict(m.head_hidden),
                                  refine=list(m.refine), head_image=list(m.head_image)))


def architecture_of(cfg: TrainConfig) -> Dict[str, Any]:
    """The architecture a checkpoint records and a resume compares (the optional parts,
    ``brainfm.models.config.OPTIONAL_FIELDS``, only when set)."""
    from brainfm.models.config import OPTIONAL_FIELDS

    m = cfg.model
    arch = {"f_maps": m.f_maps, "num_levels": m.num_levels, "num_groups": m.num_groups,
            "unit_feat": m.unit_feat, "heads": dict(m.heads)}
    arch.update({k: copy.copy(getattr(m, k)) for k in OPTIONAL_FIELDS if getattr(m, k)})
    return arch


class Trainer:
    """Runs ``cfg`` on ``source``; ``resume`` is ``"auto"`` (latest checkpoint of the run, if any),
    ``"none"`` or a checkpoint folder. ``init_from`` loads weights only (e.g. continue from a native
    model or another run) when there is nothing to resume. ``export_info``: fields of the exported
    model's description that come from elsewhere than ``cfg`` (a fine-tuned model's base:
    :func:`brainfm.training.finetune.inherited_info`)."""

    def __init__(self, cfg: TrainConfig, *, source: Any, model: Optional[torch.nn.Module] = None,
                 resume: str = "auto", init_from: Optional[str] = None,
                 progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
                 info: Optional[D.DistInfo] = None, export_info: Optional[Dict[str, Any]] = None) -> None:
        self.cfg, self.source, self.resume, self.init_from = cfg, source, resume, init_from
        self.export_info = dict(export_info or {})
        self.progress, self.cancel = ensure_callback(progress), cancel
        self.info = info or D.DistInfo.from_env()
        self._model = model
        self.model: Optional[torch.nn.Module] = model  # the (unwrapped) network after fit()
        self.ema: Optional[torch.nn.Module] = None  # its moving average (optim.ema_decay > 0)
        self.out_dir = Path(cfg.run.out_dir)

    # ------------------------------------------------------------------------------------------ setup
    def _precision(self, device: torch.device) -> Optional[torch.dtype]:
        p = self.cfg.run.precision
        if p == "auto":  # bf16 on CUDA and on CPUs with native bfloat16 (emulated bf16 is slower)
            from brainfm.inference.device import cpu_has_native_bf16

            cpu_bf16 = device.type == "cpu" and cpu_has_native_bf16()
            return torch.bfloat16 if device.type == "cuda" or cpu_bf16 else None
        if p == "bf16":
            return torch.bfloat16
        if p == "fp32":
            return None
        raise BrainFMError(f"unknown precision {p!r} (auto, bf16, fp32)")

    def _channels_last(self, device: torch.device) -> bool:
        c = str(self.cfg.run.channels_last).lower()
        if c == "auto":
            return device.type == "cpu"  # measured: 1.6x per training step on CPU (fp32, 64^3 x 2)
        if c in ("true", "1", "yes"):
            return True
        if c in ("false", "0", "no"):
            return False
        raise BrainFMError(f"unknown run.channels_last {self.cfg.run.channels_last!r} (auto, true, false)")

    def fit(self) -> TrainResult:
        """Train until ``run.max_steps``, the ``run.minutes`` time box, or cancellation."""
        cfg, info = self.cfg, self.info
        t_start = time.monotonic()
        device = D.select_device(cfg.run.device, info)
        created = D.init_process_group(info, device)
        try:
            return self._fit(device, t_start)
        finally:
            if created:
                D.shutdown()

    def _fit(self, device: torch.device, t_start: float) -> TrainResult:
        cfg, info, run = self.cfg, self.info, self.cfg.run
        if run.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        torch.manual_seed(run.seed + info.rank)
        model = (self._model or build_model(cfg)).to(device)
        cl = self._channels_last(device)
        if cl:
            model = to_channels_last(model)
        self.model = model
        self.ema = build_ema(model, decay=cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
        objective = build_objective(cfg.loss)
        optimizer, scheduler = build_optim(model.parameters(), cfg.optim)
        amp = self._precision(device)
        gen = torch.Generator().manual_seed(run.seed)
        start = 0
        self._cpu_base = 0.0  # process CPU seconds of the run (on CPU devices) before this invocation
        self._gpu_base = 0.0  # wall seconds of the run on GPUs before this invocation
        self._on_gpu = device.type == "cuda"
        resume_from = self._resume_path()
        if resume_from is not None:
            meta = ckpt.load_checkpoint(resume_from, model=model, optimizer=optimizer, scheduler=scheduler,
                                        generator=gen, architecture=architecture_of(cfg), averaged=self.ema)
            start = int(meta["step"])
            self._cpu_base = float((meta.get("extra") or {}).get("cpu_seconds", 0.0))
            self._gpu_base = float((meta.get("extra") or {}).get("gpu_seconds", 0.0))
            if info.rank:  # the saved RNG states are rank 0's; other ranks get their own stream
                torch.manual_seed(run.seed + info.rank + 7919 * start)
        elif self.init_from:
            self._load_init(model, self.init_from)
        if info.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        else:
            net = model
        res = TrainResult(step=start, start_step=start)
        main = info.is_main
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
        log = CsvLog(self.out_dir / "log.csv", truncate_after_step=start) if main else None
        tb = TensorBoard(self.out_dir / "tb", enabled=main)
        res.log_csv = self.out_dir / "log.csv" if main else None
        step, last_ckpt, bad = start, start, 0
        deadline = t_start + run.minutes * 60 if run.minutes > 0 else None
        self._cpu0, self._wall0 = time.process_time(), time.monotonic()
        t_ckpt = time.monotonic()
        t_log, n_log, t_data = time.monotonic(), 0, 0.0
        net.train()
        while True:
            stop = None
            if run.max_steps and step >= run.max_steps:
                stop = "max_steps"
            elif deadline is not None and time.monotonic() >= deadline:
                stop = "time"
            elif run.max_cpu_minutes > 0 and self.cpu_seconds() >= run.max_cpu_minutes * 60:
                stop = "cpu_budget"
            elif self.cancel is not None and self.cancel.cancelled:
                stop = "cancelled"
            if D.any_flag(stop is not None, device):
                res.stopped = stop or "peer"
                break
            try:
                t_b = time.monotonic()
                batch = self.source.batch(step, info.rank, info.world_size)
                t_data += time.monotonic() - t_b
                inputs = batch.inputs.contiguous(memory_format=torch.channels_last_3d) if cl else batch.inputs
                with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                    out = net(inputs)
                    loss, parts = objective(out, batch, generator=gen)
                if info.distributed:  # keep every head in the graph so DDP sees a gradient for all
                    # parameters (on one process this would cost 12 % of a CPU step for nothing)
                    loss = loss + sum(v.float().mean() * 0.0 for v in out.values())
                finite = bool(torch.isfinite(loss).item())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # always: under DDP every rank must join the gradient all-reduce
            except torch.cuda.OutOfMemoryError:
                raise oom_error(cfg, device, f"training step {step}") from None
            except RuntimeError as e:
                if "out of memory" in str(e).lower() or "can't allocate memory" in str(e).lower():
                    raise oom_error(cfg, device, f"training step {step}") from None
                raise
            finite = D.any_flag(not finite, device) is False
            if not finite:  # skip the update on every rank, keep the schedule moving
                bad += 1
                if bad >= 20:
                    raise BrainFMError(f"loss was NaN/Inf for {bad} consecutive steps at step {step}; "
                                       "lower optim.lr or check the data")
                optimizer.zero_grad(set_to_none=True)
            else:
                bad = 0
                if cfg.optim.clip_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.optim.clip_grad_norm)
                optimizer.step()
                if self.ema is not None:
                    self.ema.update_parameters(model)
            lr_used = optimizer.param_groups[0]["lr"]
            scheduler.step()
            step += 1
            lv = float(loss.detach()) if finite else float("nan")
            res.losses.append(lv)
            n_log += 1
            if step % max(1, run.log_every) == 0 or step == run.max_steps:
                mean = D.mean_scalar(lv, device)
                if main:
                    dt = time.monotonic() - t_log
                    row = {"step": step, "loss": mean, "lr": lr_used,
                           "it_per_s": n_log / dt if dt > 0 else 0.0, "elapsed_s": time.monotonic() - t_start,
                           "cpu_s": round(self.cpu_seconds(), 1),
                           "data_share": round(t_data / dt, 3) if dt > 0 else 0.0}
                    row.update({k: float(v.detach()) for k, v in parts.items()})
                    log.write(row)  # type: ignore[union-attr]
                    tb.scalars(step, {k: v for k, v in row.items() if isinstance(v, float)})
                t_log, n_log, t_data = time.monotonic(), 0, 0.0
            if run.max_steps or deadline is not None:
                frac = [(step - start) / max(1, run.max_steps - start)] if run.max_steps else []
                if deadline is not None:
                    frac.append((time.monotonic() - t_start) / (run.minutes * 60))
                self.progress(min(1.0, max(frac)), f"step {step}: loss {lv:.4f}")
            due = bool(run.ckpt_every and step % run.ckpt_every == 0)
            if run.ckpt_minutes > 0:  # every rank must agree (the save ends with a barrier)
                due = D.any_flag(due or time.monotonic() - t_ckpt >= run.ckpt_minutes * 60, device)
            if due:
                res.checkpoint = self._save(model, optimizer, scheduler, gen, step)
                last_ckpt, t_ckpt = step, time.monotonic()
            if run.val_every and step % run.val_every == 0:
                res.val = self._validate(self.exported_net(), amp, step, log)
        res.step = step
        if step != last_ckpt or res.checkpoint is None:
            res.checkpoint = self._save(model, optimizer, scheduler, gen, step)
        final = self.exported_net()  # once: a plain form may be a copy, its priors chosen on images
        res.val = self._validate(final, amp, step, log) if step > start or not res.val else res.val
        if main:
            res.native_model = self._export(final, step)
            res.curve_png = Path(plot_loss_curve(self.out_dir / "log.csv", self.out_dir / "loss_curve.png"))
        tb.close()
        res.seconds = time.monotonic() - t_start
        return res

    def exported_net(self) -> torch.nn.Module:
        """The network a run validates and exports: the moving average of the weights when the run keeps
        one (``optim.ema_decay`` > 0), else the trained network itself; a network that trains in another
        parametrisation gives its plain form (``plain()``, :class:`~brainfm.training.feature_cache.HeadOnlyNet`)."""
        net = self.ema.module if self.ema is not None else self.model
        return net.plain() if isinstance(net, Reparametrised) else net

    def cpu_seconds(self) -> float:
        """Process CPU seconds (all threads, generator included) spent training on the CPU, across resumes."""
        base = getattr(self, "_cpu_base", 0.0)
        if getattr(self, "_on_gpu", False):
            return base
        return base + (time.process_time() - getattr(self, "_cpu0", time.process_time()))

    def gpu_seconds(self) -> float:
        """Wall seconds spent training on GPUs (per process), across resumes."""
        base = getattr(self, "_gpu_base", 0.0)
        if not getattr(self, "_on_gpu", False):
            return base
        return base + (time.monotonic() - getattr(self, "_wall0", time.monotonic()))

    # ------------------------------------------------------------------------------------------ pieces
    def _resume_path(self) -> Optional[Path]:
        if self.resume in ("none", "", None):
            return None
        if self.resume == "auto":
            return ckpt.latest_checkpoint(self.out_dir)
        p = Path(self.resume)
        found = ckpt.latest_checkpoint(p) if not (p / "meta.json").is_file() else p
        if found is None:
            raise CheckpointError(f"no training checkpoint found in {p}")
        return found

    def _load_init(self, model: torch.nn.Module, path: str) -> None:
        p = Path(path)
        if (p / "meta.json").is_file() or (p / "checkpoints").is_dir():
            found = p if (p / "meta.json").is_file() else ckpt.latest_checkpoint(p)
            if found is None:
                raise CheckpointError(f"no training checkpoint found in {p}")
            ckpt.load_checkpoint(found, model=model, restore_rng=False, use_average=True)
            return
        from brainfm.models import load_model

        loaded = load_model(p).net
        own, theirs = model.state_dict(), loaded.state_dict()
        problems = [f"{k}: {tuple(theirs[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                    if k in theirs and theirs[k].shape != v.shape]
        missing = [k for k in own if k not in theirs]
        if problems or len(missing) == len(own):
            raise CheckpointError(f"cannot initialise from {p}: architecture differs ("
                                  + "; ".join(problems[:8] or ["no common tensors"]) + ")")
        model.load_state_dict({k: theirs.get(k, v) for k, v in own.items()})

    def _save(self, model, optimizer, scheduler, gen, step: int) -> Optional[Path]:
        path = None
        if self.info.is_main:
            r = self.cfg.run
            path = ckpt.save_checkpoint(self.out_dir, model=model, optimizer=optimizer, scheduler=scheduler,
                                        step=step, config=self.cfg.to_dict(), architecture=architecture_of(self.cfg),
                                        generator=gen, optim_dtype=r.optim_dtype, max_file_mb=r.max_file_mb,
                                        keep_last=r.keep_last, averaged=self.ema,
                                        extra={"world_size": self.info.world_size,
                                               "cpu_seconds": round(self.cpu_seconds(), 1),
                                               "gpu_seconds": round(self.gpu_seconds(), 1),
                                               **({"export_info": self.export_info} if self.export_info else {})})
        D.barrier()
        return path

    def _validate(self, model, amp, step: int, log: Optional[CsvLog]) -> Dict[str, float]:
        val: Dict[str, float] = {}
        if self.info.is_main and hasattr(self.source, "val_batches"):
            try:
                val = evaluate_batches(model, self.source.val_batches(), autocast_dtype=amp)
            except torch.cuda.OutOfMemoryError:
                raise oom_error(self.cfg, next(model.parameters()).device, "validation") from None
            if val:
                if log is not None:
                    log.write({"step": step, **{f"val_{k}": v for k, v in val.items()}})
                with open(self.out_dir / "val.jsonl", "a") as f:
                    f.write(json.dumps({"step": step, **{k: (v if math.isfinite(v) else None)
                                                         for k, v in val.items()}}) + "\n")
                self.progress(1.0, f"validation at step {step}: {summarize(val)}")
        D.barrier()
        return val

    def _export(self, model: torch.nn.Module, step: int) -> Optional[Path]:
        from brainfm.training.export import export_native

        return export_native(model, self.out_dir / "model", cfg=self.cfg, step=step,
                             dtype=self.cfg.run.export_dtype, inherit=self.export_info,
                             provenance=getattr(model, "export_provenance", None))
