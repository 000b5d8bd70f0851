"""Tiny real training setups for the training tests: a 3-level, 8-feature BrainFMNet and the real
generator on 32^3 windows of code-generated toy heads (nothing from ../shared/data)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import torch

from fixtures import label_head
from brainfm.generator import Generator, GeneratorConfig, SubjectData
from brainfm.training.config import TrainConfig, apply_overrides
from brainfm.training.data import GeneratorSource

TINY = [
    "model.f_maps=4", "model.num_levels=3", "model.num_groups=4",
    "generator.size=16", "generator.n_samples=2", "data.val_samples=1",
    "optim.warmup_steps=2", "optim.lr=0.002", "run.log_every=1", "run.ckpt_every=0",
    "run.device=cpu", "run.precision=fp32",
]
SHAPES = [(40, 48, 36), (38, 44, 40), (42, 46, 34), (36, 42, 38)]


def tiny_config(out_dir: Path, *extra: str) -> TrainConfig:
    return apply_overrides(TrainConfig(), TINY + [f"run.out_dir={out_dir}"] + list(extra))


def toy_subjects(n: int = 3) -> Dict[str, SubjectData]:
    """Toy heads of different sizes (FreeSurfer numbers) as generator subjects."""
    return {f"sub{i}": SubjectData(torch.from_numpy(label_head(SHAPES[i % len(SHAPES)])).long(), name=f"sub{i}")
            for i in range(n)}


def tiny_source(cfg: TrainConfig, n_train: int = 2, n_val: int = 1, **gen: Any) -> GeneratorSource:
    subs = toy_subjects(n_train + n_val)
    names: List[Any] = list(subs)
    return GeneratorSource(names[:n_train], names[n_train:], size=cfg.generator.size,
                           n_samples=cfg.generator.n_samples, seed=cfg.run.seed, val_samples=1,
                           generator=Generator(GeneratorConfig(**gen)),
                           loader=lambda p, dev: subs[Path(p).name])


class FixedSource:
    """The same real generator batch at every step (for overfitting one subject)."""

    def __init__(self, source: GeneratorSource) -> None:
        self._b = source.batch(0)
        self.val = source.val

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> Any:
        return self._b

    def val_batches(self):
        yield self._b



def ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """One rank of the 2-process Gloo test (run through torch.multiprocessing.spawn)."""
    import hashlib
    import json
    import os

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    from brainfm.training.dist import DistInfo
    from brainfm.training.trainer import Trainer

    cfg = tiny_config(Path(out_dir) / "run", "run.max_steps=2")
    trainer = Trainer(cfg, source=tiny_source(cfg), resume="none", info=DistInfo.from_env())
    res = trainer.fit()
    flat = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps({
        "losses": res.losses, "step": res.step, "checkpoint": str(res.checkpoint) if res.checkpoint else None,
        "weights_sha": hashlib.sha256(flat.numpy().tobytes()).hexdigest()}))
