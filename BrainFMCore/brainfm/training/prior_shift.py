"""Taking back what foreground sampling does to a new segmentation head's class priors.

A head trained on cached features (:class:`~brainfm.training.feature_cache.CachedFeatureSource`) sees a
share of every sample drawn from the labelled voxels, so labelled classes are more frequent in training
than in the images, and the head's logits for them rise by the log of that ratio
(:func:`sampling_log_ratio`). Taking all of it back gives the images' own priors, which suits structures
the features already tell apart: the user's hippocampus and thalamus of ``bench_finetune.py --own-labels``
(500 steps) scored held-out Dice 0.707 / 0.827 with none of it taken back and 0.768 / 0.881 with all.
A faint, rare class scores best with most of it kept: the lesions of ``bench_finetune.py --lesions``
scored 0.762 with none taken back, 0.768 with a quarter and 0.523 with all. So :class:`PriorShift`
picks the share on images (the validation images, else the training images) by their Dice.

>>> t = torch.zeros(10, 10, 10, dtype=torch.long)
>>> t[:1, :1, :5] = 1                       # 5 of 1000 voxels labelled
>>> ratio = sampling_log_ratio([t], n_classes=2, foreground_share=0.05)
>>> [round(float(r), 3) for r in ratio]     # background a little rarer, the label 11x more frequent
[-0.051, 2.393]
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

#: shares of the sampling's log ratio that :class:`PriorShift` tries taking back
PRIOR_WEIGHTS: Tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)

#: slices of an image whose logits are computed at once while choosing (bounds the memory)
SLAB = 16


def sampling_log_ratio(targets: Sequence[torch.Tensor], *, n_classes: int, foreground_share: float) -> torch.Tensor:
    """``log(sampled / true frequency)`` of each class (``n_classes``,) when a sample takes a random
    image of ``targets`` (class indices), then ``foreground_share`` of its voxels from that image's
    labelled voxels (classes > 0) and the rest from all its voxels; 0 for a class no image has."""
    f = min(max(float(foreground_share), 0.0), 1.0)
    true = torch.zeros(int(n_classes), dtype=torch.float64)
    sampled = torch.zeros_like(true)
    for t in targets:
        counts = torch.bincount(t.reshape(-1).long(), minlength=int(n_classes))[: int(n_classes)].double()
        p = counts / counts.sum().clamp_min(1)
        labelled = counts[1:].sum()
        q = p.clone()
        if labelled > 0:  # an image without labelled voxels is sampled uniformly
            q = (1 - f) * p
            q[1:] += f * counts[1:] / labelled
        true += p
        sampled += q
    ratio = torch.where(true > 0, torch.log(sampled.clamp_min(1e-300) / true.clamp_min(1e-300)), torch.zeros_like(true))
    return ratio.float()


class PriorShift:
    """Lowers the output biases of the segmentation head ``head`` by a share (:data:`PRIOR_WEIGHTS`) of
    ``log_ratio`` (:func:`sampling_log_ratio`): the share whose mean Dice of the labelled classes over
    ``images`` (``(feature, target)`` pairs as the head reads them: the feature, then the image's channels
    when the head reads it) is highest; none when no share beats taking nothing back.
    :class:`~brainfm.training.feature_cache.HeadOnlyNet` applies it to the network it exports.
    After :meth:`apply`, ``weight`` is the share taken back and ``dice`` the mean Dice of each share."""

    def __init__(self, head: str, log_ratio: torch.Tensor, images: Sequence[Tuple[torch.Tensor, torch.Tensor]], *,
                 weights: Sequence[float] = PRIOR_WEIGHTS) -> None:
        self.head = str(head)
        self.log_ratio = torch.as_tensor(log_ratio, dtype=torch.float32).reshape(-1)
        self.images = list(images)
        self.weights = tuple(float(w) for w in weights)
        self.weight: Optional[float] = None
        self.dice: Dict[float, float] = {}

    def _scores(self, net: nn.Module) -> Dict[float, float]:
        """Mean Dice of the labelled classes over the images for every weight (logits by slabs)."""
        k = len(self.log_ratio)
        inter = torch.zeros(len(self.weights), k, dtype=torch.float64)
        pred_n, true_n = torch.zeros_like(inter), torch.zeros(k, dtype=torch.float64)
        shifts = [w * self.log_ratio for w in self.weights]
        with torch.no_grad():
            for feat, target in self.images:
                for i in range(0, int(target.shape[0]), SLAB):
                    f = feat[:, i:i + SLAB].float()[None]
                    t = target[i:i + SLAB].reshape(-1).long()
                    logits = net(f, heads=[self.head])[self.head][0].float().reshape(k, -1)
                    true_n += torch.bincount(t, minlength=k)[:k].double()
                    for j, shift in enumerate(shifts):
                        p = (logits - shift.to(logits)[:, None]).argmax(0)
                        pred_n[j] += torch.bincount(p, minlength=k)[:k].double()
                        inter[j] += torch.bincount(p[p == t], minlength=k)[:k].double()
        present = true_n[1:] > 0
        dice = (2 * inter[:, 1:] / (pred_n[:, 1:] + true_n[1:]).clamp_min(1))[:, present]
        return {w: float(d.mean()) if d.numel() else 0.0 for w, d in zip(self.weights, dice)}

    def apply(self, net: nn.Module) -> float:
        """Choose the weight for ``net`` (a :class:`~brainfm.training.feature_cache.HeadOnlyNet` on the raw
        feature), lower the head's output biases by it and return it."""
        self.dice = self._scores(net)
        best = max(self.dice.values())
        self.weight = next(w for w in self.weights if self.dice[w] >= best)  # the smallest of the best
        conv = net.head[f"final_conv_{self.head}"]
        with torch.no_grad():
            conv.bias -= (self.weight * self.log_ratio).to(conv.bias)
        return self.weight

