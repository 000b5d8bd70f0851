"""Process-group helpers for torchrun / multi-process training (env RANK, WORLD_SIZE, LOCAL_RANK).

Backend: NCCL when training on CUDA, Gloo on CPU. Single-process runs need no process group and every
helper degrades to a no-op.

>>> from brainfm.training.dist import DistInfo
>>> d = DistInfo.from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
>>> (d.rank, d.world_size, d.is_main, d.distributed)
(1, 2, False, True)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping, Optional

import torch
import torch.distributed as dist

from brainfm.errors import InputError, ResourceError


@dataclass(frozen=True)
class DistInfo:
    """Rank, world size and local rank of this process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "DistInfo":
        """Read ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (torchrun); defaults to a single process."""
        e = os.environ if env is None else env
        try:
            world = int(e.get("WORLD_SIZE", "1"))
            rank = int(e.get("RANK", "0"))
            local = int(e.get("LOCAL_RANK", str(rank)))
        except ValueError:
            raise InputError("RANK / WORLD_SIZE / LOCAL_RANK must be integers") from None
        if world < 1 or not 0 <= rank < world:
            raise InputError(f"invalid distributed setting RANK={rank} WORLD_SIZE={world}")
        return cls(rank, world, local)


def select_device(spec: str, info: DistInfo) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else CPU; explicit specs are checked."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ResourceError(f"device {spec!r} requested but CUDA is not available; use --device cpu")
        idx = int(spec.split(":")[1]) if ":" in spec else info.local_rank % max(1, torch.cuda.device_count())
        torch.cuda.set_device(idx)
        return torch.device("cuda", idx)
    if spec != "cpu":
        raise InputError(f"unknown device {spec!r} (auto, cpu, cuda, cuda:N)")
    return torch.device("cpu")


def init_process_group(info: DistInfo, device: torch.device, *, timeout_min: float = 30.0) -> bool:
    """Join the torchrun process group (``MASTER_ADDR``/``MASTER_PORT`` from the environment).

    Returns True when this call created the group (the caller should :func:`shutdown` it).
    """
    if not info.distributed or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    kw = {"device_id": device} if device.type == "cuda" else {}
    try:
        dist.init_process_group(backend, rank=info.rank, world_size=info.world_size,
                                timeout=timedelta(minutes=timeout_min), **kw)
    except TypeError:  # older torch without device_id
        dist.init_process_group(backend, rank=info.rank, world_size=info.world_size,
                                timeout=timedelta(minutes=timeout_min))
    return True


def shutdown() -> None:
    """Destroy the process group if one exists."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def any_flag(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is True on any rank (e.g. the time box ran out)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_scalar(value: float, device: torch.device) -> float:
    """Average of a float over ranks (the value itself on one process)."""
    if not dist.is_initialized():
        return float(value)
    t = torch.tensor([float(value)], device=device, dtype=torch.float64 if device.type == "cpu" else torch.float32)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()
