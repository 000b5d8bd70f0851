"""Training objectives: multi-task BrainFM, anatomy-only Brain-ID, and contrastive terms.

An objective maps network outputs (``{head: (N,C,X,Y,Z)}`` plus ``"feat"``) and a generator batch
(``inputs`` (N,1,X,Y,Z), ``targets`` dict) to ``(total_loss, {part: value})``. Targets that are
absent (``None``, missing key, or a modality the subject does not have) are skipped, so a subject
without CT simply contributes no CT loss. Targets with a leading dimension of 1 are shared by all N
samples of the subject (same deformation), per-sample targets (bias field, SR residual) have N.

>>> import torch
>>> from types import SimpleNamespace
>>> from brainfm.training.objectives import BrainFMObjective
>>> b = SimpleNamespace(inputs=torch.rand(2, 1, 8, 8, 8), targets={"T1": torch.rand(1, 1, 8, 8, 8)})
>>> total, parts = BrainFMObjective()({"T1": torch.zeros(2, 1, 8, 8, 8)}, b)
>>> sorted(parts)
['T1', 'T1_grad']
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from brainfm.training import losses as L

IMAGE_HEADS = ("T1", "T2", "FLAIR", "CT")
Parts = Dict[str, torch.Tensor]


def target_of(batch: Any, name: str, n: int) -> Optional[torch.Tensor]:
    """Target ``name`` broadcast to ``n`` samples, or None when the batch does not have it."""
    targets = getattr(batch, "targets", None) or {}
    t = targets.get(name) if isinstance(targets, Mapping) else None
    if t is None or not torch.is_tensor(t) or t.dim() < 4:
        return None
    if t.dim() == 4:  # (N, X, Y, Z) class map or a single-channel image without channel axis
        t = t.unsqueeze(1)
    if t.shape[0] == 1 and n > 1:
        t = t.expand(n, *t.shape[1:])
    return t if t.shape[0] == n else None


def mask_of(batch: Any, name: str, n: int) -> Optional[torch.Tensor]:
    """Per-voxel mask ``batch.targets['masks'][name]`` (or ``targets[name + '_mask']``), if present."""
    targets = getattr(batch, "targets", None) or {}
    masks = targets.get("masks") if isinstance(targets, Mapping) else None
    m = masks.get(name) if isinstance(masks, Mapping) else None
    if m is None and isinstance(targets, Mapping):
        m = targets.get(name + "_mask")
    if m is None or not torch.is_tensor(m):
        return None
    if m.dim() == 4:
        m = m.unsqueeze(1)
    if m.shape[0] == 1 and n > 1:
        m = m.expand(n, *m.shape[1:])
    return m


class BrainFMObjective:
    """Weighted sum of the BrainFM task losses (as in the reference BrainFM code, its bugs fixed; see ``losses``).

    ``weights`` keys: image, image_grad, seg_ce, seg_dice, bias_field_log, distance, registration,
    registration_grad, sr, sr_grad.
    """

    def __init__(self, weights: Optional[Mapping[str, float]] = None) -> None:
        w = {"image": 1.0, "image_grad": 1.0, "seg_ce": 1.0, "seg_dice": 1.0, "bias_field_log": 1.0,
             "distance": 1.0, "registration": 1.0, "registration_grad": 1.0, "sr": 1.0, "sr_grad": 1.0}
        w.update(weights or {})
        self.w = w

    def parts(self, out: Mapping[str, torch.Tensor], batch: Any) -> Tuple[Parts, Dict[str, float]]:
        """Individual losses and the weight of each."""
        n = int(batch.inputs.shape[0])
        parts: Parts = {}
        wts: Dict[str, float] = {}
        for name in IMAGE_HEADS:
            pred, tgt = out.get(name), target_of(batch, name, n)
            if pred is None or tgt is None or tgt.shape[1:] != pred.shape[1:]:
                continue
            dm = mask_of(batch, name, n)  # defacing mask: 1 where the face was removed
            w = None if dm is None else (1.0 - dm.float())
            parts[name], wts[name] = L.l1_loss(pred, tgt, w), self.w["image"]
            parts[name + "_grad"], wts[name + "_grad"] = L.gradient_l1_loss(pred, tgt, w), self.w["image_grad"]
        seg_t = target_of(batch, "segmentation", n)
        pred = out.get("segmentation")
        if pred is not None and seg_t is not None and seg_t.shape[2:] == pred.shape[2:]:
            if int(seg_t.max()) >= pred.shape[1] or int(seg_t.min()) < 0:
                raise ValueError(f"segmentation target has class {int(seg_t.max())} but the head has "
                                 f"{pred.shape[1]} channels (label scheme mismatch)")
            parts["seg_ce"], parts["seg_dice"] = L.segmentation_losses(pred, seg_t)
            wts["seg_ce"], wts["seg_dice"] = self.w["seg_ce"], self.w["seg_dice"]
        pred, tgt = out.get("bias_field_log"), target_of(batch, "bias_field_log", n)
        if pred is not None and tgt is not None and tgt.shape == pred.shape:
            brain = mask_of(batch, "brain", n)
            if brain is None and seg_t is not None:
                brain = (seg_t > 0)
            parts["bias_field_log"], wts["bias_field_log"] = L.masked_mse(pred, tgt, brain), self.w["bias_field_log"]
        pred, tgt = out.get("distance"), target_of(batch, "distance", n)
        if pred is not None and tgt is not None and tgt.shape == pred.shape:
            parts["distance"], wts["distance"] = L.l1_loss(pred, tgt), self.w["distance"]
        pred, tgt = out.get("registration"), target_of(batch, "registration", n)
        if pred is not None and tgt is not None and tgt.shape == pred.shape:
            parts["registration"], wts["registration"] = L.l1_loss(pred, tgt), self.w["registration"]
            parts["registration_grad"] = L.gradient_l1_loss(pred, tgt)
            wts["registration_grad"] = self.w["registration_grad"]
        pred, tgt = out.get("high_res_residual"), target_of(batch, "high_res_residual", n)
        if pred is not None and tgt is not None and tgt.shape == pred.shape:
            parts["sr"], wts["sr"] = L.l1_loss(pred, tgt), self.w["sr"]
            parts["sr_grad"], wts["sr_grad"] = L.gradient_l1_loss(pred, tgt), self.w["sr_grad"]
        return parts, wts

    def __call__(self, out: Mapping[str, torch.Tensor], batch: Any) -> Tuple[torch.Tensor, Parts]:
        parts, wts = self.parts(out, batch)
        if not parts:
            raise ValueError("no head of the model has a matching target in the batch "
                             f"(heads {sorted(k for k in out if k != 'feat')}, targets "
                             f"{sorted(getattr(batch, 'targets', {}) or {})})")
        total = sum(wts[k] * v for k, v in parts.items())
        return total, parts  # type: ignore[return-value]


class BrainIDObjective:
    """Anatomy-only Brain-ID objective: head ``image`` (or ``T1``) -> T1 target, L1 + gradient L1."""

    def __init__(self, weights: Optional[Mapping[str, float]] = None, *, head: str = "image") -> None:
        self.w = {"image": 1.0, "image_grad": 1.0}
        self.w.update(weights or {})
        self.head = head

    def __call__(self, out: Mapping[str, torch.Tensor], batch: Any) -> Tuple[torch.Tensor, Parts]:
        n = int(batch.inputs.shape[0])
        pred = out.get(self.head, out.get("T1"))
        tgt = target_of(batch, "T1", n)
        if pred is None or tgt is None:
            raise ValueError(f"Brain-ID objective needs head {self.head!r} and a T1 target")
        parts = {"anat": L.l1_loss(pred, tgt), "anat_grad": L.gradient_l1_loss(pred, tgt)}
        return self.w["image"] * parts["anat"] + self.w["image_grad"] * parts["anat_grad"], parts


class ContrastiveTerm:
    """Contrast between views = samples of one subject simulated with different sequences.

    All samples of a subject share the deformation, so voxel ``v`` is the same anatomy in every view:
    ``simclr`` draws ``n_voxels`` voxels and applies NT-Xent to their feature vectors (positives = same
    voxel in two views); ``cifl`` applies the CIFL channel contrast to the sampled feature maps.
    """

    def __init__(self, kind: str = "simclr", *, temperature: float = 0.5,
                 taus: Tuple[float, float, float] = (1.0, 1.0, 1.0), n_voxels: int = 2048) -> None:
        if kind not in ("simclr", "cifl"):
            raise ValueError(f"unknown contrastive loss {kind!r} (simclr or cifl)")
        self.kind, self.temperature, self.taus, self.n_voxels = kind, temperature, tuple(taus), n_voxels

    def __call__(self, feat: torch.Tensor, *, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        n, c = feat.shape[:2]
        if n < 2:
            raise ValueError("contrastive training needs at least 2 samples per subject (generator.n_samples >= 2)")
        flat = feat.float().flatten(2)  # (N, C, V)
        v = flat.shape[2]
        k = min(self.n_voxels, v)
        idx = torch.randperm(v, generator=generator, device="cpu")[:k].to(feat.device)
        f = flat[:, :, idx]
        total = feat.new_zeros((), dtype=torch.float32)
        pairs = 0
        for i in range(n - 1):
            a, b = f[i], f[i + 1]
            if self.kind == "simclr":
                total = total + L.nt_xent_loss(a.t(), b.t(), temperature=self.temperature)
            else:
                total = total + L.cifl_loss(a, b, taus=self.taus)
            pairs += 1
        return total / pairs


class CombinedObjective:
    """A supervised objective (or None) plus a weighted contrastive term on ``out['feat']``."""

    def __init__(self, base: Any = None, contrastive: Optional[ContrastiveTerm] = None,
                 contrastive_weight: float = 1.0) -> None:
        if base is None and contrastive is None:
            raise ValueError("empty objective")
        self.base, self.contrastive, self.cw = base, contrastive, contrastive_weight

    def __call__(self, out: Mapping[str, torch.Tensor], batch: Any,
                 generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, Parts]:
        total, parts = (self.base(out, batch) if self.base is not None
                        else (out["feat"].new_zeros((), dtype=torch.float32), {}))
        if self.contrastive is not None:
            parts = dict(parts)
            parts["contrastive"] = self.contrastive(out["feat"], generator=generator)
            total = total + self.cw * parts["contrastive"]
        return total, parts


def build_objective(loss_cfg: Any) -> CombinedObjective:
    """Objective from a :class:`brainfm.training.config.LossSection`.

    >>> from brainfm.training.config import LossSection
    >>> obj = build_objective(LossSection(objective="contrastive", contrastive="cifl"))
    >>> obj.base is None, obj.contrastive.kind
    (True, 'cifl')
    """
    name = loss_cfg.objective
    if name == "brainfm":
        base: Any = BrainFMObjective(loss_cfg.weights)
    elif name == "brainid":
        base = BrainIDObjective(loss_cfg.weights)
    elif name == "contrastive":
        base = None
    else:
        raise ValueError(f"unknown objective {name!r} (brainfm, brainid or contrastive)")
    kind = loss_cfg.contrastive if loss_cfg.contrastive != "none" else ("simclr" if base is None else None)
    term = (ContrastiveTerm(kind, temperature=loss_cfg.temperature, taus=tuple(loss_cfg.cifl_taus),
                            n_voxels=loss_cfg.contrast_voxels) if kind else None)
    return CombinedObjective(base, term, float(loss_cfg.weights.get("contrastive", 1.0)))
