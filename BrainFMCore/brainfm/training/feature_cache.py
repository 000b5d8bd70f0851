"""Head-mode fine-tuning on cached features: the frozen backbone runs once per image, not once per step.

In mode ``head`` only a 1x1x1 head learns; the backbone's final feature of an image never changes. So
the feature of each prepared training image is computed once, on the whole image as inference sees it
(no crop, no zero padding inside the head), for a few intensity variants (the gamma augmentation of
:class:`~brainfm.training.finetune.PairedSource`, at fixed values), and stored in half precision. A
training step is then the head alone on these features. :class:`HeadOnlyNet` is the network the trainer sees: the same modules under
the same names (checkpoints and exported models are those of the full network), whose forward takes
the feature instead of the image. Since such a head sees each voxel alone, a segmentation step takes
random voxels of the whole image rather than a crop: its loss, the step's cost, runs on 27 times fewer
voxels than a 96^3 crop.

>>> import torch
>>> from brainfm.models import BrainFMNet, ModelConfig
>>> net = BrainFMNet(ModelConfig(f_maps=4, num_levels=2, num_groups=2, heads={"segmentation": 3}))
>>> head_only = HeadOnlyNet(net, heads=["segmentation"])
>>> x = torch.rand(1, 1, 8, 8, 8)
>>> with torch.no_grad():
...     same = torch.allclose(head_only(net.backbone(x))["segmentation"], net(x)["segmentation"])
>>> same, sorted(head_only.state_dict()) == sorted(net.state_dict())
(True, True)
"""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from brainfm.progress import CancelToken, ProgressCallback, ensure_callback
from brainfm.training.data import step_seed

#: intensity variants of every training image whose feature is cached (gamma of the 0-1 image: one
#: standard deviation of the per-step augmentation on either side, and the image itself)
GAMMAS: Tuple[float, ...] = (math.exp(-0.25), 1.0, math.exp(0.25))

#: voxels of one segmentation sample (a 96^3 crop has 27 times more; the loss over them is the step's cost)
VOXELS = 32768

#: share of the available memory the cache may take before it keeps fewer variants (then none)
MEMORY_SHARE = 0.25


class HeadOnlyNet(nn.Module):
    """``net`` (a :class:`~brainfm.models.BrainFMNet`) applied to its backbone's final feature: forward
    ``(N, C, X, Y, Z)`` features -> ``{head: output, "feat": features}`` for ``heads``. It holds ``net``'s
    own ``backbone`` and ``head`` modules (shared, not copied), so its state dict is ``net``'s."""

    def __init__(self, net: nn.Module, *, heads: Sequence[str]) -> None:
        super().__init__()
        self.config = net.config
        self.backbone = net.backbone
        self.head = net.head
        self.heads = list(heads)

    def forward(self, feat: torch.Tensor, *, heads: Optional[Sequence[str]] = None) -> dict:
        out = self.head(feat, names=self.heads if heads is None else list(heads))
        out["feat"] = feat
        return out


def cache_bytes(shapes: Sequence[Sequence[int]], channels: int, n_variants: int) -> int:
    """Bytes of the half-precision features of images of ``shapes`` with ``n_variants`` each.

    >>> cache_bytes([(100, 120, 100)], 16, 3)
    115200000
    """
    return int(sum(int(np.prod(s)) for s in shapes)) * int(channels) * 2 * int(n_variants)


def choose_gammas(shapes: Sequence[Sequence[int]], channels: int, available: int) -> Tuple[float, ...]:
    """The variants that fit in :data:`MEMORY_SHARE` of ``available`` bytes: all of :data:`GAMMAS`,
    else the image alone, else none (``()``: fine-tune without the cache).

    >>> choose_gammas([(100, 120, 100)], 16, 8 * 1024**3) == GAMMAS, choose_gammas([(100, 120, 100)], 16, 10**8)
    (True, ())
    """
    budget = MEMORY_SHARE * int(available)
    for gammas in (GAMMAS, (1.0,)):
        if cache_bytes(shapes, channels, len(gammas)) <= budget:
            return gammas
    return ()


def image_features(backbone: nn.Module, image: np.ndarray, *, device: torch.device) -> torch.Tensor:
    """The backbone's final feature ``(C, X, Y, Z)`` of the whole ``image`` (X, Y, Z), float16 on the CPU."""
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None].to(device)
            return backbone(x)[0].to("cpu", torch.float16)
    finally:
        backbone.train(was_training)


class CachedFeatureSource:
    """Training batches of cached features of the prepared ``train`` images with their targets (see
    :meth:`batch`); ``val_batches`` from the ``val`` images (variant gamma 1). ``train``/``val``: ``(image, target)`` arrays on the model's grid, as
    :class:`~brainfm.training.finetune.PairedSource` holds them. ``backbone`` runs on ``device``."""

    def __init__(self, backbone: nn.Module, train: Sequence[Tuple[np.ndarray, np.ndarray]],
                 val: Sequence[Tuple[np.ndarray, np.ndarray]] = (), *, task: str = "seg",
                 target_key: str = "segmentation", size: int = 96, n_samples: int = 2, voxels: int = VOXELS,
                 device: Union[str, torch.device] = "cpu", seed: int = 0, gammas: Sequence[float] = GAMMAS,
                 progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> None:
        if not train:
            raise ValueError("no training images to cache")
        self.task, self.key, self.size, self.n, self.seed = task, target_key, int(size), int(n_samples), int(seed)
        self.voxels = int(voxels)
        self.device = torch.device(device)
        self.gammas = tuple(float(g) for g in gammas) or (1.0,)
        cb = ensure_callback(progress)
        total = len(train) * len(self.gammas) + len(val)
        done = 0

        def features(image: np.ndarray, gamma: float) -> torch.Tensor:
            nonlocal done
            if cancel is not None:
                cancel.raise_if_cancelled()
            cb(done / total, f"features of image {done + 1}/{total} (computed once)")
            f = image_features(backbone, np.power(image, gamma, dtype=np.float32), device=self.device)
            done += 1
            return f

        self._train: List[Tuple[List[torch.Tensor], torch.Tensor]] = [
            ([features(x, g) for g in self.gammas], self._target(t)) for x, t in train]
        self._val = [(features(x, 1.0), self._target(t)) for x, t in val]
        cb(1.0, "features cached")

    def _target(self, t: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(t))
        return t.long() if self.task == "seg" else t.float()

    def _stack(self, crops: List[Tuple[torch.Tensor, torch.Tensor]]) -> Any:
        x = torch.stack([f for f, _ in crops]).to(self.device, torch.float32)
        t = torch.stack([t for _, t in crops]).to(self.device)
        if self.task != "seg":
            t = t[:, None]
        return SimpleNamespace(inputs=x, targets={self.key: t})

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> Any:
        """``n_samples`` samples of one training image's features (random image, variant and voxels):
        for segmentation ``voxels`` voxels drawn at random from the whole image, laid out as a
        ``(voxels, 1, 1)`` volume (a 1x1x1 head sees each voxel alone, so where they lie does not
        matter); for an image head, whose loss compares neighbours, crops of at most ``size``."""
        g = np.random.default_rng(step_seed(self.seed, step, rank))
        feats, t = self._train[int(g.integers(len(self._train)))]
        samples = []
        for _ in range(self.n):
            f = feats[int(g.integers(len(feats)))]
            if self.task == "seg":
                at = torch.from_numpy(g.integers(0, t.numel(), min(self.voxels, t.numel())))
                samples.append((f.reshape(f.shape[0], -1)[:, at][..., None, None], t.reshape(-1)[at][..., None, None]))
                continue
            origin = [int(g.integers(0, max(1, d - self.size + 1))) for d in t.shape]
            box = tuple(slice(o, o + min(self.size, d)) for o, d in zip(origin, t.shape))
            samples.append((f[(slice(None),) + box], t[box]))
        return self._stack(samples)

    def val_batches(self) -> Iterator[Any]:
        """One batch per validation image: all its voxels (segmentation) or its centre crop (gamma 1)."""
        for f, t in self._val:
            if self.task == "seg":
                yield self._stack([(f, t)])
                continue
            box = tuple(slice(max(0, (d - self.size) // 2), max(0, (d - self.size) // 2) + min(self.size, d))
                        for d in t.shape)
            yield self._stack([(f[(slice(None),) + box], t[box])])
