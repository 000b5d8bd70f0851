"""Taking back what foreground sampling does to a new segmentation head's class priors.

A head trained on cached features (:class:`~brainfm.training.feature_cache.CachedFeatureSource`) sees a
share of every sample drawn from the labelled voxels, so labelled classes are more frequent in training
than in the images, and the head's logits for them rise by the log of that ratio
(:func:`sampling_log_ratio`). Taking all of it back gives the images' own priors, which suits structures
the features already tell apart: the user's hippocampus and thalamus of ``bench_finetune.py --own-labels``
(500 steps) scored held-out Dice 0.707 / 0.827 with none of it taken back and 0.768 / 0.881 with all.
A faint, rare class scores best with most of it kept: the lesions of ``bench_finetune.py --lesions``
scored 0.762 with none taken back, 0.768 with a quarter and 0.523 with all. So :class:`PriorShift`
picks the share on images (the validation images, else the training images) by their Dice: the Dice of
the labels the product makes of those scans (:class:`ScanDice`) where it is given one, since the product
decides labels otherwise than the network's grid shows them (logits averaged with the mirrored scan's,
interpolated to 1 mm, the head mask), and a faint class comes out smaller there than on that grid.

>>> t = torch.zeros(10, 10, 10, dtype=torch.long)
>>> t[:1, :1, :5] = 1                       # 5 of 1000 voxels labelled
>>> ratio = sampling_log_ratio([t], n_classes=2, foreground_share=0.05)
>>> [round(float(r), 3) for r in ratio]     # background a little rarer, the label 11x more frequent
[-0.051, 2.393]
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

#: shares of the sampling's log ratio that :class:`PriorShift` tries taking back
PRIOR_WEIGHTS: Tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)

#: slices of an image whose logits are computed at once while choosing (bounds the memory)
SLAB = 16

#: training scans :class:`ScanDice` reads at most when there are no validation scans (each costs one
#: prediction per share)
MAX_SCANS = 4


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


def _mean_dice(inter: torch.Tensor, pred_n: torch.Tensor, true_n: torch.Tensor) -> List[float]:
    """Mean Dice of the labelled classes (1..k-1) present in the truth, per row of the pooled counts
    ``inter`` / ``pred_n`` (rows: shares) and ``true_n``."""
    present = true_n[1:] > 0
    dice = (2 * inter[:, 1:] / (pred_n[:, 1:] + true_n[1:]).clamp_min(1))[:, present]
    return [float(d.mean()) if d.numel() else 0.0 for d in dice]


class ScanDice:
    """The mean Dice of the labelled classes in the labels the product makes of scans: ``pairs`` of
    (image file, label file), read as ``brainfm finetune`` reads them; ``scheme`` (a
    :class:`~brainfm.labels.LabelScheme`) maps label values to the head's classes; ``info``: the
    :class:`~brainfm.models.ModelInfo` the network will be exported with
    (:func:`~brainfm.training.export.native_info`), so that the :class:`~brainfm.inference.Predictor`
    treats it as it will treat the exported file (grid, test-time flip, label decision, head mask).
    Labels are compared on the scan's grid (the label file resampled to it, nearest neighbour).
    ``progress`` (``(fraction, message)``) hears of each prediction: one per scan and share, about as long
    as a prediction of the scan by the fine-tuned model (seconds on a CPU)."""

    def __init__(self, pairs: Sequence[Tuple[Union[str, Path], Union[str, Path]]], *, scheme: Any, info: Any,
                 device: Union[str, torch.device] = "cpu", progress: Optional[Callable[[float, str], None]] = None) -> None:
        self.pairs = [(Path(a), Path(b)) for a, b in pairs]
        self.scheme, self.info, self.device, self.progress = scheme, info, str(device), progress

    def __call__(self, net: nn.Module, head: str, shifts: Sequence[torch.Tensor]) -> List[float]:
        """Mean Dice for each of ``shifts`` taken from the output biases of ``net``'s ``head`` (a
        :class:`~brainfm.models.BrainFMNet`; its biases are as they were afterwards)."""
        from brainfm.geometry import resample_to_grid
        from brainfm.inference import Predictor
        from brainfm.inference.preprocess import load_image
        from brainfm.io import read_volume
        from brainfm.models.common import LoadedModel

        conv = net.head[f"final_conv_{head}"]
        k = int(conv.bias.shape[0])
        bias = conv.bias.detach().clone()
        predictor = Predictor(LoadedModel(net, self.info), device=self.device, channels_last=False)
        inter = torch.zeros(len(shifts), k, dtype=torch.float64)
        pred_n, true_n = torch.zeros_like(inter), torch.zeros(k, dtype=torch.float64)
        done, total = 0, len(self.pairs) * len(shifts)
        for image, labels in self.pairs:
            img = load_image(image)
            truth = resample_to_grid(read_volume(labels, kind="label"), img.affine, img.shape, order="nearest")
            t = torch.from_numpy(self.scheme.channel_of_fs(np.asarray(truth.data))).reshape(-1)
            true_n += torch.bincount(t, minlength=k)[:k].double()
            for j, shift in enumerate(shifts):
                if self.progress is not None:
                    self.progress(done / total, f"choosing the label priors: {image.name}, {j + 1} of {len(shifts)}")
                done += 1
                with torch.no_grad():
                    conv.bias.copy_(bias - shift.to(bias))
                try:
                    seg = predictor.predict(img, tasks=["seg"], allow_anisotropic=True)["seg"]
                finally:
                    with torch.no_grad():
                        conv.bias.copy_(bias)
                p = torch.from_numpy(self.scheme.channel_of_fs(np.asarray(seg.data))).reshape(-1)
                pred_n[j] += torch.bincount(p, minlength=k)[:k].double()
                inter[j] += torch.bincount(p[p == t], minlength=k)[:k].double()
        return _mean_dice(inter, pred_n, true_n)


class PriorShift:
    """Lowers the output biases of the segmentation head ``head`` by a share (:data:`PRIOR_WEIGHTS`) of
    ``log_ratio`` (:func:`sampling_log_ratio`): the share whose mean Dice of the labelled classes is
    highest; none when no share beats taking nothing back. The Dice is that of ``scans`` (a
    :class:`ScanDice`: the product's labels of scans) when given, else of ``images`` (``(feature,
    target)`` pairs as the head reads them: the feature, then the image's channels when the head reads
    it; labels decided on the network's grid).
    :class:`~brainfm.training.feature_cache.HeadOnlyNet` applies it to the network it exports.
    After :meth:`apply`, ``weight`` is the share taken back and ``dice`` the mean Dice of each share."""

    def __init__(self, head: str, log_ratio: torch.Tensor, images: Sequence[Tuple[torch.Tensor, torch.Tensor]] = (), *,
                 weights: Sequence[float] = PRIOR_WEIGHTS, scans: Optional[ScanDice] = None) -> None:
        self.head = str(head)
        self.log_ratio = torch.as_tensor(log_ratio, dtype=torch.float32).reshape(-1)
        self.images = list(images)
        self.scans = scans
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
        return dict(zip(self.weights, _mean_dice(inter, pred_n, true_n)))

    def record(self) -> Dict[str, Any]:
        """What the last :meth:`apply` chose, for the exported model's provenance: the share taken back
        (``weight``), the mean Dice of each share (``dice``) and where it was measured (``measured_on``:
        the scans' file names, or the number of images)."""
        where: Any = [a.name for a, _ in self.scans.pairs] if self.scans is not None else len(self.images)
        return {"weight": self.weight, "dice": {str(w): round(d, 4) for w, d in self.dice.items()},
                "measured_on": where}

    def apply(self, net: nn.Module, *, whole: Optional[nn.Module] = None) -> float:
        """Choose the weight for ``net`` (a :class:`~brainfm.training.feature_cache.HeadOnlyNet` on the raw
        feature), lower the head's output biases by it and return it. ``whole``: the
        :class:`~brainfm.models.BrainFMNet` whose head ``net`` holds (needed with ``scans``)."""
        if self.scans is not None:
            if whole is None:
                raise ValueError("PriorShift with scans needs the whole network (whole=)")
            shifts = [w * self.log_ratio for w in self.weights]
            self.dice = dict(zip(self.weights, self.scans(whole, self.head, shifts)))
        else:
            self.dice = self._scores(net)
        best = max(self.dice.values())
        self.weight = next(w for w in self.weights if self.dice[w] >= best)  # the smallest of the best
        conv = net.head[f"final_conv_{self.head}"]
        with torch.no_grad():
            conv.bias -= (self.weight * self.log_ratio).to(conv.bias)
        return self.weight
