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
from brainfm.training.finetune_options import FOREGROUND_SHARE
from brainfm.training.prior_shift import PriorShift, sampling_log_ratio

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
    own ``backbone`` and ``head`` modules (shared, not copied), so its state dict is ``net``'s.

    ``standardise``: ``(mean, std)`` of each input channel of the heads (:meth:`CachedFeatureSource.channel_stats`).
    The heads then learn on standardised inputs, where one learning rate suits every channel (the
    features and the image differ in scale by a factor of ten or more): their weights are re-expressed
    for ``(feat - mean) / std`` here (the same outputs) and :meth:`plain` expresses them back for the
    raw feature. While standardised, the state dict holds the re-expressed weights (training
    checkpoints; a run resumed with the same statistics continues exactly).

    ``calibration``: a :class:`~brainfm.training.prior_shift.PriorShift` that :meth:`plain` applies, so
    the network validated and exported takes back what foreground sampling did to the class priors.

    >>> from brainfm.models import BrainFMNet, ModelConfig
    >>> net = BrainFMNet(ModelConfig(f_maps=4, num_levels=2, num_groups=2, heads={"segmentation": 3}))
    >>> feat = torch.rand(1, 4, 3, 3, 3) * 5
    >>> std = HeadOnlyNet(net, heads=["segmentation"], standardise=(feat.mean((0, 2, 3, 4)), feat.std((0, 2, 3, 4))))
    >>> with torch.no_grad():
    ...     a = std(feat)["segmentation"]
    ...     b = std.plain()(feat)["segmentation"]
    >>> bool(torch.allclose(a, b, atol=1e-5)), std.plain().standardised
    (True, False)
    """

    def __init__(self, net: nn.Module, *, heads: Sequence[str],
                 standardise: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                 calibration: Optional[PriorShift] = None) -> None:
        super().__init__()
        self.config = net.config
        self.backbone = net.backbone
        self.head = net.head
        self.heads = list(heads)
        self.standardised = standardise is not None
        self.calibration = calibration
        if standardise is not None:
            mean, std = (torch.as_tensor(t, dtype=torch.float32).reshape(-1) for t in standardise)
            self.register_buffer("mean", mean, persistent=False)
            self.register_buffer("std", std.clamp_min(1e-6), persistent=False)
            reexpress(self.head, self.heads, mean=self.mean, std=self.std, to_standard=True)

    def plain(self) -> "HeadOnlyNet":
        """A copy whose heads read the raw feature, its class priors those of the images (``calibration``):
        what is exported and validated; without standardisation or calibration, this network itself."""
        if not self.standardised and self.calibration is None:
            return self
        from brainfm.models import BrainFMNet

        net = BrainFMNet(self.config).to(next(self.head.parameters()).device)
        net.load_state_dict(self.state_dict())
        if self.standardised:
            reexpress(net.head, self.heads, mean=self.mean, std=self.std, to_standard=False)
        out = HeadOnlyNet(net, heads=self.heads)
        if self.calibration is not None:
            self.calibration.apply(out, whole=net)
            out.export_provenance = {"label_priors": self.calibration.record()}
        return out

    def forward(self, feat: torch.Tensor, *, heads: Optional[Sequence[str]] = None) -> dict:
        """``feat``: the cached feature, with the input image's channels after it when a head reads
        the image (:attr:`brainfm.models.ModelConfig.head_image`, :class:`CachedFeatureSource` ``with_image``)."""
        names = self.heads if heads is None else list(heads)
        channels = int(self.config.feature_channels)
        raw = feat[:, :channels]
        if self.standardised:
            if set(names) - set(self.heads):
                raise ValueError(f"heads {sorted(set(names) - set(self.heads))} do not read standardised features")
            view = (1, -1) + (1,) * (feat.dim() - 2)
            feat = (feat - self.mean.view(view)) / self.std.view(view)
        image = feat[:, channels:] if self.head.image_heads else None
        out = self.head(feat[:, :channels], names=names, image=image)
        out["feat"] = raw
        return out


def reexpress(head: nn.Module, names: Sequence[str], *, mean: torch.Tensor, std: torch.Tensor,
              to_standard: bool) -> None:
    """Re-express, in place, the first layers of the heads ``names`` of ``head``
    (:class:`~brainfm.models.heads.TaskHeads`) for the input ``(x - mean) / std`` (``to_standard``) or
    back for ``x``: the outputs do not change (``w x + b = (w std) (x - mean) / std + (b + w mean)``)."""
    mean, std = mean.double().reshape(-1), std.double().reshape(-1)
    with torch.no_grad():
        for name in names:
            conv = head[f"final_conv_{name}"]
            for layer in [conv] + ([conv.hidden[0]] if hasattr(conv, "hidden") else []):
                w = layer.weight.double()
                shape = (1, -1) + (1,) * (w.dim() - 2)
                new_w = w * std.view(shape) if to_standard else w / std.view(shape)
                shift = (w if to_standard else -new_w) * mean.view(shape)
                layer.weight.copy_(new_w.to(layer.weight.dtype))
                layer.bias.add_(shift.flatten(1).sum(1).to(layer.bias.dtype))


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
    :class:`~brainfm.training.finetune.PairedSource` holds them. ``backbone`` runs on ``device``.
    ``with_image``: each cached feature has the image's channel after it, for a head that reads the
    image (:attr:`brainfm.models.ModelConfig.head_image`)."""

    def __init__(self, backbone: nn.Module, train: Sequence[Tuple[np.ndarray, np.ndarray]],
                 val: Sequence[Tuple[np.ndarray, np.ndarray]] = (), *, task: str = "seg",
                 target_key: str = "segmentation", size: int = 96, n_samples: int = 2, voxels: int = VOXELS,
                 device: Union[str, torch.device] = "cpu", seed: int = 0, gammas: Sequence[float] = GAMMAS,
                 with_image: bool = False, foreground_share: float = FOREGROUND_SHARE,
                 progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> None:
        if not train:
            raise ValueError("no training images to cache")
        self.task, self.key, self.size, self.n, self.seed = task, target_key, int(size), int(n_samples), int(seed)
        self.voxels = int(voxels)
        self.device = torch.device(device)
        self.gammas = tuple(float(g) for g in gammas) or (1.0,)
        self.foreground_share = min(max(float(foreground_share), 0.0), 1.0)
        cb = ensure_callback(progress)
        total = len(train) * len(self.gammas) + len(val)
        done = 0

        def features(image: np.ndarray, gamma: float) -> torch.Tensor:
            nonlocal done
            if cancel is not None:
                cancel.raise_if_cancelled()
            cb(done / total, f"features of image {done + 1}/{total} (computed once)")
            x = np.power(image, gamma, dtype=np.float32)
            f = image_features(backbone, x, device=self.device)
            if with_image:  # the head reads the image it was computed from, after the feature
                f = torch.cat([f, torch.from_numpy(x)[None].to(f.dtype)])
            done += 1
            return f

        self._train: List[Tuple[List[torch.Tensor], torch.Tensor]] = [
            ([features(x, g) for g in self.gammas], self._target(t)) for x, t in train]
        self._val = [(features(x, 1.0), self._target(t)) for x, t in val]
        # the labelled voxels of each training image, where a share of every sample is drawn
        self._foreground = [torch.nonzero(t.reshape(-1) > 0)[:, 0] if task == "seg" else None
                            for _, t in self._train]
        cb(1.0, "features cached")

    def channel_stats(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(mean, std)`` of each cached channel over every voxel of the training images (the
        unchanged intensity variant), for :class:`HeadOnlyNet` ``standardise``."""
        k = self.gammas.index(1.0) if 1.0 in self.gammas else 0
        feats = [fs[k] for fs, _ in self._train]
        n = sum(f[0].numel() for f in feats)
        mean = torch.zeros(feats[0].shape[0], dtype=torch.float64)
        sq = torch.zeros_like(mean)
        for f in feats:
            for c in range(f.shape[0]):  # one channel at a time: float64 copies of one image channel only
                v = f[c].double()
                mean[c] += v.sum()
                sq[c] += (v * v).sum()
        mean /= n
        return mean.float(), (sq / n - mean * mean).clamp_min(0).sqrt().float()

    def sampling_log_ratio(self, n_classes: int) -> torch.Tensor:
        """What the foreground sampling does to the class priors of a segmentation head with ``n_classes``
        outputs (:func:`~brainfm.training.prior_shift.sampling_log_ratio`)."""
        return sampling_log_ratio([t for _, t in self._train], n_classes=n_classes,
                                  foreground_share=self.foreground_share)

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
        for segmentation ``voxels`` voxels, ``foreground_share`` of them drawn at random from the image's
        labelled voxels and the rest from the whole image, laid out as a ``(voxels, 1, 1)`` volume (a
        1x1x1 head sees each voxel alone, so where they lie does not matter); for an image head, whose
        loss compares neighbours, crops of at most ``size``."""
        g = np.random.default_rng(step_seed(self.seed, step, rank))
        k = int(g.integers(len(self._train)))
        (feats, t), fg = self._train[k], self._foreground[k]
        samples = []
        for _ in range(self.n):
            f = feats[int(g.integers(len(feats)))]
            if self.task == "seg":
                n = min(self.voxels, t.numel())
                n_fg = int(round(n * self.foreground_share)) if fg is not None and len(fg) else 0
                at = torch.from_numpy(g.integers(0, t.numel(), n - n_fg))
                if n_fg:
                    at = torch.cat([at, fg[torch.from_numpy(g.integers(0, len(fg), n_fg))]])
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
