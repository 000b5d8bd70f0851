"""Batch sources for the trainer: prepared label-map subjects -> synthetic generator batches.

Every batch depends only on ``(seed, step, rank)`` (a fresh RNG is derived per step), so resumed runs
and DDP ranks are reproducible without saving loader state. Subjects are loaded once (on the training
device) and cached.

>>> from brainfm.training.data import step_seed
>>> step_seed(0, 5, 0) == step_seed(0, 5, 0), step_seed(0, 5, 0) != step_seed(0, 5, 1)
(True, True)
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from brainfm.errors import InputError

PathLike = Union[str, Path]


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """A well-mixed 63-bit seed for (run seed, step, rank)."""
    h = hashlib.sha256(f"brainfm:{seed}:{step}:{rank}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def list_prepared(folder: PathLike) -> List[Path]:
    """Prepared subject files in ``folder`` (sorted), via ``brainfm.training.prepare`` when it offers a
    listing function; raises :class:`InputError` for a missing or empty folder."""
    d = Path(folder)
    if not d.is_dir():
        raise InputError(f"prepared-data folder not found: {d} (run `brainfm train --prepare` or "
                         "`brainfm prepare` first)")
    try:
        from brainfm.training import prepare as P

        lister = getattr(P, "list_prepared", None) or getattr(P, "list_subjects", None)
    except ImportError:
        lister = None
    if lister is not None:
        files = [Path(p) for p in lister(d)]
    else:
        files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix in (".safetensors", ".npz", ".pt"))
    if not files:
        raise InputError(f"no prepared subjects in {d}; prepare label maps first")
    return sorted(files)


def split_subjects(files: Sequence[Path], *, n_val: int = 2,
                   val_names: Sequence[str] = ()) -> Tuple[List[Path], List[Path]]:
    """Held-out validation subjects: those named in ``val_names`` (file name or stem), else the last
    ``n_val`` files. At least one subject is always kept for training.

    >>> split_subjects([Path("a.npz"), Path("b.npz"), Path("c.npz")], n_val=1)
    ([PosixPath('a.npz'), PosixPath('b.npz')], [PosixPath('c.npz')])
    """
    files = list(files)
    if val_names:
        names = set(val_names)
        val = [f for f in files if f.name in names or f.name.split(".")[0] in names]
        unknown = names - {f.name for f in val} - {f.name.split(".")[0] for f in val}
        if unknown:
            raise InputError(f"validation subjects not found among the prepared files: {sorted(unknown)}")
    else:
        val = files[len(files) - n_val:] if 0 < n_val < len(files) else []
    train = [f for f in files if f not in val]
    if not train:
        raise InputError(f"no training subjects left after holding out {len(val)} for validation")
    return train, val


class GeneratorSource:
    """Synthetic batches from prepared subjects through :class:`brainfm.generator.Generator`."""

    def __init__(self, train: Sequence[PathLike], val: Sequence[PathLike] = (), *, size: int = 128,
                 n_samples: int = 4, device: Union[str, torch.device] = "cpu", seed: int = 0,
                 options: Optional[Dict[str, Any]] = None, val_size: int = 0, val_samples: int = 2,
                 cache_size: int = 64, generator: Any = None, loader: Any = None,
                 voxel_mm: float = 1.0) -> None:
        if not train:
            raise InputError("no training subjects")
        if size < 16:
            raise InputError(f"generator.size must be at least 16 voxels, got {size}")
        if n_samples < 1:
            raise InputError(f"generator.n_samples must be at least 1, got {n_samples}")
        self.train = [Path(p) for p in train]
        self.val = [Path(p) for p in val]
        self.size, self.n_samples, self.seed = int(size), int(n_samples), int(seed)
        self.voxel_mm = float(voxel_mm)
        self.device = torch.device(device)
        self.val_size, self.val_samples = int(val_size or size), int(val_samples)
        self._cache: "OrderedDict[Path, Any]" = OrderedDict()
        self._cache_size = cache_size
        if generator is None:
            from brainfm.generator import Generator, GeneratorConfig

            generator = Generator(GeneratorConfig(**(options or {})))
        self.generator = generator
        if loader is None:
            from brainfm.training.prepare import load_subject as loader
        self._loader = loader

    def subject(self, path: Path) -> Any:
        """Loaded subject (cached, on the source's device)."""
        if path in self._cache:
            self._cache.move_to_end(path)
            return self._cache[path]
        subj = self._loader(path, self.device)
        self._cache[path] = subj
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return subj

    @staticmethod
    def _rng(seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)  # the generator draws its scalars on the CPU

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> Any:
        """The batch of optimizer step ``step`` for process ``rank``."""
        s = step_seed(self.seed, step, rank)
        pick = torch.Generator().manual_seed(s)
        idx = int(torch.randint(len(self.train), (1,), generator=pick))
        return self.generator.sample(self.subject(self.train[idx]), n_samples=self.n_samples, size=self.size,
                                     generator=self._rng(s ^ 0x5DEECE66D), device=self.device,
                                     voxel_mm=self.voxel_mm)

    def val_batches(self) -> Iterator[Any]:
        """Fixed batches (same seeds every time) of the held-out subjects."""
        for i, path in enumerate(self.val):
            yield self.generator.sample(self.subject(path), n_samples=self.val_samples, size=self.val_size,
                                        generator=self._rng(step_seed(self.seed, -1 - i, 0)), device=self.device,
                                        voxel_mm=self.voxel_mm)


def source_from_config(cfg: Any, device: Union[str, torch.device]) -> GeneratorSource:
    """:class:`GeneratorSource` for a :class:`~brainfm.training.config.TrainConfig`."""
    if not cfg.data.prepared:
        raise InputError("no training data: set data.prepared (a folder written by `brainfm prepare`)")
    files = list_prepared(cfg.data.prepared)
    train, val = split_subjects(files, n_val=cfg.data.n_val, val_names=cfg.data.val_subjects)
    g = cfg.generator
    return GeneratorSource(train, val, size=g.size, n_samples=g.n_samples, device=device, seed=cfg.run.seed,
                           options=g.options, val_size=cfg.data.val_size, val_samples=cfg.data.val_samples,
                           voxel_mm=cfg.model.voxel_mm)
