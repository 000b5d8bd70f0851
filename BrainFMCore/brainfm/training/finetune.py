"""Fine-tuning a pretrained BrainFM / Brain-ID model on real images with labels or target images.

Modes: ``head`` (one-layer adaptation: frozen backbone, new 1x1x1 head; the model keeps its other
heads, which give the same results as the base's), ``encoder`` (frozen encoder, decoder + new head
trained), ``full`` (everything trained; the other heads are dropped because the features change). The
result is a native model (``<out>/model/<name>.safetensors + .json``) with its label scheme, usable by
``brainfm run`` and the Slicer modules.

Data folder layout: ``<folder>/images/*`` with ``<folder>/labels/*`` (task ``seg``, FreeSurfer label
numbers, mapped to the classes of ``label_scheme``) or ``<folder>/targets/*`` (task ``image``),
paired by file name.

>>> from brainfm.training.finetune import build_finetune_model
>>> from brainfm.models import BrainFMNet, ModelConfig
>>> base = BrainFMNet(ModelConfig(f_maps=4, num_levels=3, num_groups=4, heads={"image": 1}))
>>> net = build_finetune_model(base, head="segmentation", channels=33, mode="head")
>>> sorted(net.config.heads.items()), [n for n, p in net.named_parameters() if p.requires_grad]
([('image', 1), ('segmentation', 33)], ['head.final_conv_segmentation.weight', 'head.final_conv_segmentation.bias'])
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from brainfm.errors import InputError
from brainfm.training.data import step_seed
from brainfm.training.finetune_options import (FOREGROUND_SHARE, HEAD_HIDDEN, HEAD_IMAGE, HEAD_LR,  # noqa: F401
                                               HEAD_LR_DROP_AT, LR)

PathLike = Union[str, Path]
MODES = ("head", "encoder", "full")
IMAGE_EXTS = (".nii.gz", ".nii", ".mgz", ".mgh", ".nrrd", ".nhdr", ".mha", ".mhd")


def _stem(p: Path) -> str:
    n = p.name
    for e in IMAGE_EXTS:
        if n.endswith(e):
            return n[: -len(e)]
    return p.stem


def pair_folder(folder: PathLike, *, task: str = "seg") -> List[Tuple[Path, Path]]:
    """``(image, target)`` pairs of ``folder/images`` and ``folder/labels`` (seg) or ``folder/targets``
    (image), matched by file name without extension; clear errors for empty or unmatched folders."""
    root = Path(folder)
    sub = "labels" if task == "seg" else "targets"
    img_dir, tgt_dir = root / "images", root / sub
    for d in (img_dir, tgt_dir):
        if not d.is_dir():
            raise InputError(f"fine-tuning data needs {d} (layout: {root}/images/ and {root}/{sub}/, "
                             "files paired by name)")
    imgs = {_stem(p): p for p in sorted(img_dir.iterdir()) if p.name.endswith(IMAGE_EXTS)}
    tgts = {_stem(p): p for p in sorted(tgt_dir.iterdir()) if p.name.endswith(IMAGE_EXTS)}
    if not imgs:
        raise InputError(f"no images in {img_dir} (supported: {', '.join(IMAGE_EXTS)})")
    missing = sorted(set(imgs) - set(tgts))
    if missing:
        raise InputError(f"no {sub[:-1]} for image(s) {missing[:5]} in {tgt_dir}")
    return [(imgs[k], tgts[k]) for k in sorted(imgs)]


def build_finetune_model(base: torch.nn.Module, *, head: str, channels: int, mode: str = "head",
                         hidden: int = 0, image: bool = False) -> torch.nn.Module:
    """A copy of ``base`` (BrainFMNet) with a new 1x1x1 head ``head`` and the right parts frozen; with
    ``hidden`` > 0 the new head also has a per-voxel hidden layer of that width
    (:class:`~brainfm.models.heads.ResidualHead`, which starts as the 1x1x1 head alone); with ``image``
    it reads the input image beside the feature (:attr:`brainfm.models.ModelConfig.head_image`), through
    weights that start at zero, so that it too starts as a head of the feature alone.

    >>> from brainfm.models import BrainFMNet, ModelConfig
    >>> base = BrainFMNet(ModelConfig(f_maps=4, num_levels=2, num_groups=2, heads={"T1": 1}))
    >>> net = build_finetune_model(base, head="segmentation", channels=3, hidden=8, image=True)
    >>> net.config.head_image, tuple(net.state_dict()["head.final_conv_segmentation.weight"].shape)
    (['segmentation'], (3, 5, 1, 1, 1))
    """
    from brainfm.models import BrainFMNet, ModelConfig

    if mode not in MODES:
        raise InputError(f"unknown fine-tuning mode {mode!r}; use one of {MODES}")
    bc = base.config
    heads = dict(bc.heads) if mode == "head" else {}
    heads[head] = int(channels)
    kept_hidden = {k: v for k, v in bc.head_hidden.items() if k in heads and k != head}
    if int(hidden) < 0:
        raise InputError(f"the hidden layer of a head needs a width of at least 1 (or 0: none), got {hidden}")
    hidden_widths = {**kept_hidden, **({head: int(hidden)} if int(hidden) > 0 else {})}
    kept_image = [k for k in bc.head_image if k in heads and k != head]
    cfg = ModelConfig(in_channels=bc.in_channels, f_maps=bc.f_maps, num_levels=bc.num_levels,
                      num_groups=bc.num_groups, unit_feat=bc.unit_feat, heads=heads, head_hidden=hidden_widths,
                      refine=list(bc.refine), head_image=kept_image + ([head] if image else []))
    net = BrainFMNet(cfg)
    own = net.state_dict()
    keep = {k: v for k, v in base.state_dict().items()
            if k in own and own[k].shape == v.shape and not k.startswith(f"head.final_conv_{head}.")}
    net.load_state_dict({**own, **keep})
    if image:
        with torch.no_grad():
            getattr(net.head, f"final_conv_{head}").weight[:, cfg.feature_channels:].zero_()
    for name, p in net.named_parameters():
        if mode == "head":
            p.requires_grad = name.startswith(f"head.final_conv_{head}.")
        elif mode == "encoder":
            p.requires_grad = not name.startswith("backbone.encoders.")
        else:
            p.requires_grad = True
    return net






#: measured reliability of a head (``ModelInfo.quality``) that a head-mode fine-tune keeps unchanged
KEPT_QUALITY = {"bias_field_log": "bias_applied_corr", "registration": "reg_carried_dice17"}


def inherited_info(info: Any, *, mode: str, head: str) -> Dict[str, Any]:
    """What a model fine-tuned from a base described by ``info`` (:class:`brainfm.models.ModelInfo`)
    keeps of it: how inputs reach the network (``voxel_mm``, ``input_antialias``), the test-time flip,
    the meaning of its outputs (``output_units``, ``atlas``) and, in mode ``head`` (every other head
    unchanged), the measured reliability of the heads it did not retrain. Its segmentation quality is
    not kept: the fine-tuned head has not been measured. The base's identity goes to ``provenance``.

    >>> from brainfm.models import ModelConfig, ModelInfo
    >>> base = ModelInfo(name="compact", version="s1", format="native", sha256="ab", config=ModelConfig(),
    ...                  voxel_mm=2.0, input_antialias=False, test_time_flip=True,
    ...                  quality={"level": "release", "bias_applied_corr": 0.04})
    >>> kept = inherited_info(base, mode="head", head="segmentation")
    >>> kept["voxel_mm"], kept["input_antialias"], kept["quality"], kept["provenance"]["base_model"]["name"]
    (2.0, False, {'bias_applied_corr': 0.04}, 'compact')
    """
    quality = dict(getattr(info, "quality", None) or {})
    kept = {key: quality[key] for h, key in KEPT_QUALITY.items() if mode == "head" and h != head and key in quality}
    return {
        "voxel_mm": float(getattr(info, "voxel_mm", 1.0) or 1.0),
        "input_antialias": bool(getattr(info, "input_antialias", True)),
        "test_time_flip": bool(getattr(info, "test_time_flip", False)),
        "output_units": dict(getattr(info, "output_units", None) or {}),
        "atlas": getattr(info, "atlas", None),
        "quality": kept,
        "provenance": {"base_model": {k: getattr(info, k, None) for k in ("name", "version", "format", "sha256")},
                       "fine_tuning_mode": mode},
    }


def _head_weights(net: torch.nn.Module, base: torch.nn.Module, head: str) -> Optional[Tuple[torch.Tensor, ...]]:
    """``(base weight, base bias, new weight, new bias)`` of the 1x1x1 ``head`` of ``base`` and ``net``
    (the new ones are the live parameters; a new head that also reads the input image gives the part of
    its weight that reads the feature), or None when either lacks it or their features differ."""
    key = f"head.final_conv_{head}."
    old, new = base.state_dict(), net.state_dict()
    parts = [d.get(key + p) for d in (old, new) for p in ("weight", "bias")]
    if any(t is None for t in parts):
        return None
    if head in getattr(net.config, "head_image", ()) and head not in getattr(base.config, "head_image", ()):
        parts[2] = parts[2][:, : net.config.feature_channels]
    if tuple(parts[0].shape[1:]) != tuple(parts[2].shape[1:]):
        return None
    return tuple(parts)  # type: ignore[arg-type]


def carry_classes(net: torch.nn.Module, base: torch.nn.Module, *, head: str, scheme: Any, base_scheme: Any
                  ) -> List[int]:
    """Start each class of ``net``'s new ``head`` from the class of ``base``'s head with the same label
    (FreeSurfer number and name: a user's label 2 named "Thalamus" is not FreeSurfer's white matter), so
    that fine-tuning adapts what the base knows instead of learning every class anew; the other classes
    keep their initial weights (:func:`start_new_classes`). Returns the classes carried (none when the
    base has no such 1x1x1 head or a scheme is unknown).

    >>> from brainfm.labels import get_scheme
    >>> from brainfm.models import BrainFMNet, ModelConfig
    >>> base = BrainFMNet(ModelConfig(f_maps=4, num_levels=2, num_groups=2, heads={"segmentation": 33}))
    >>> net = build_finetune_model(base, head="segmentation", channels=33)
    >>> len(carry_classes(net, base, head="segmentation", scheme=get_scheme("brainid33"),
    ...                   base_scheme=get_scheme("fs33")))
    31
    >>> key = "head.final_conv_segmentation.weight"
    >>> w, old = net.state_dict()[key], base.state_dict()[key]
    >>> bool((w[7] == old[1]).all())   # brainid33's class 7 and fs33's class 1: cerebral white matter (2)
    True
    """
    weights = _head_weights(net, base, head)
    if weights is None or scheme is None or base_scheme is None:
        return []
    w, b, new_w, new_b = weights
    row = {(int(v), n): i for i, (v, n) in enumerate(zip(base_scheme.fs_values, base_scheme.names)) if i < w.shape[0]}
    carried = []
    with torch.no_grad():
        for c, (v, n) in enumerate(zip(scheme.fs_values, scheme.names)):
            i = row.get((int(v), n))
            if i is not None:
                new_w[c].copy_(w[i])
                new_b[c].copy_(b[i])
                carried.append(c)
    return carried


def carry_image_head(net: torch.nn.Module, base: torch.nn.Module, *, head: str) -> bool:
    """Start an image head that the base has too (``T2`` fine-tuned on your T2 targets) from the base's,
    when both are 1x1x1 of the same shape; returns whether it was carried.

    >>> from brainfm.models import BrainFMNet, ModelConfig
    >>> base = BrainFMNet(ModelConfig(f_maps=4, num_levels=2, num_groups=2, heads={"T2": 1}))
    >>> net = build_finetune_model(base, head="T2", channels=1)
    >>> carry_image_head(net, base, head="T2"), bool((net.state_dict()["head.final_conv_T2.weight"]
    ...                                               == base.state_dict()["head.final_conv_T2.weight"]).all())
    (True, True)
    """
    weights = _head_weights(net, base, head)
    if weights is None or weights[0].shape != weights[2].shape:
        return False
    w, b, new_w, new_b = weights
    with torch.no_grad():
        new_w.copy_(w)
        new_b.copy_(b)
    return True


def start_new_classes(net: torch.nn.Module, base: torch.nn.Module,
                      pairs: Sequence[Tuple[np.ndarray, np.ndarray]], *, head: str, skip: Sequence[int] = (),
                      size: int = 96, max_images: int = 4) -> List[int]:
    """Start each class of ``net``'s new ``head`` that is not in ``skip`` (the classes
    :func:`carry_classes` carried) from what the base sees inside it: the base head's classes, weighted
    by their share of the class's voxels in the training ``pairs`` (images and channel-index targets
    on the model's grid; the base's arg-max in a ``size`` window around the new classes of each of the
    first ``max_images``). A user's "Hippocampus" of both sides starts near FreeSurfer's left and right
    hippocampus; fine-tuning then has to learn the difference, not the whole class. Returns the
    classes started this way (a class found in none of the windows keeps its initial weights)."""
    weights = _head_weights(net, base, head)
    if weights is None:
        return []
    w, b, new_w, new_b = weights
    todo = [c for c in range(int(new_w.shape[0])) if c not in set(skip)]
    if not todo:
        return []
    multiple = 2 ** (int(getattr(base.config, "num_levels", 5)) - 1)
    side = max(multiple, int(np.ceil(int(size) / multiple)) * multiple)
    counts = np.zeros((int(new_w.shape[0]), int(w.shape[0])))
    was_training = base.training
    base.eval()
    try:
        with torch.no_grad():
            for x, t in list(pairs)[:max_images]:
                where = np.argwhere(np.isin(t, todo))
                if not len(where):
                    continue
                starts = [max(0, min(int(c) - side // 2, n - side)) for c, n in zip(where.mean(0), x.shape)]
                box = tuple(slice(a, a + side) for a in starts)
                xs, ts = x[box], t[box]
                pad = [(0, side - n) for n in xs.shape]
                logits = base(torch.from_numpy(np.pad(xs, pad))[None, None].float(), heads=[head])[head][0]
                arg = logits.argmax(0).numpy()[tuple(slice(0, n) for n in xs.shape)]
                for c in todo:
                    inside = arg[ts == c]
                    if inside.size:
                        counts[c] += np.bincount(inside.ravel(), minlength=counts.shape[1])[: counts.shape[1]]
    finally:
        base.train(was_training)
    started = []
    with torch.no_grad():
        for c in todo:
            total = counts[c].sum()
            if total <= 0:
                continue
            share = torch.from_numpy(counts[c] / total).to(w.dtype)
            new_w[c].copy_((share.view(-1, *([1] * (w.dim() - 1))) * w).sum(0))
            new_b[c].copy_((share * b).sum())
            started.append(c)
    return started


def fine_tuning_scheme(label_scheme: Any, pairs: Sequence[Tuple[Path, Path]]) -> Any:
    """The classes of a new segmentation head: a :class:`~brainfm.labels.LabelScheme` as it is; a
    built-in scheme's name (``fs33``: the labels are FreeSurfer numbers); ``auto``: every label value
    found in the label maps of ``pairs``, one class each (:func:`brainfm.labels.custom_scheme`:
    FreeSurfer's names where it has them); or the path of a label table (Slicer colour-table CSV or
    FreeSurfer LUT): its labels, names and colours (values of the maps that it does not list are
    background)."""
    from brainfm.io import read_volume
    from brainfm.labels import LabelScheme, custom_scheme, get_scheme, read_label_table

    if isinstance(label_scheme, LabelScheme):
        return label_scheme
    text = str(label_scheme)
    if text == "auto":
        found: set = set()
        for _image, labels in pairs:
            data = np.asarray(read_volume(labels, kind="label").data)
            found.update(int(v) for v in np.unique(data))
        if len(found - {0}) > MAX_AUTO_LABELS:
            raise InputError(f"the label maps hold {len(found - {0})} different values, more than "
                             f"{MAX_AUTO_LABELS}: are they label maps? Give a label table listing the labels to learn")
        return custom_scheme(found)
    if text.lower().endswith((".csv", ".txt", ".lut", ".ctbl")) or Path(text).is_file():
        names, colors = read_label_table(text)
        return custom_scheme(names, names=names, colors=colors, name=Path(text).stem)
    return get_scheme(text)


#: most label values ``label_scheme="auto"`` accepts (a continuous image has thousands)
MAX_AUTO_LABELS = 255


def _load_pair(image: Path, target: Path, task: str, scheme: Any, *, voxel_mm: float = 1.0,
               antialias: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """``image`` as the model sees it at inference (:func:`brainfm.inference.preprocess.prepare`:
    normalised, the CT window for CT, on the model's ``voxel_mm`` grid, cropped to the head) and
    ``target`` on that grid (labels: channel indices of ``scheme``, read as label maps are read everywhere,
    :func:`brainfm.io.read_volume` ``kind="label"``; images: min-max normalised)."""
    from brainfm.geometry import resample_to_grid
    from brainfm.inference.preprocess import prepare
    from brainfm.io import read_volume

    try:
        net = prepare(image, spacing=voxel_mm, antialias=antialias, allow_anisotropic=True).net
    except InputError as exc:
        raise InputError(str(exc) if str(image) in str(exc) else f"{image}: {exc}") from None
    if task == "seg":
        tv = read_volume(target, kind="label")
        lab = np.asarray(resample_to_grid(tv, net.affine, net.shape, order="nearest").data)
        tgt = scheme.channel_of_fs(lab)  # values outside the scheme: background
        if len(np.unique(tgt)) <= 1:
            raise InputError(f"label map {target} has no label of the {scheme.name} scheme "
                             f"(values found: {np.unique(lab)[:12].tolist()})")
    else:
        tv = read_volume(target)
        t = resample_to_grid(tv, net.affine, net.shape, order="linear").data.astype(np.float32)
        lo, hi = float(t.min()), float(t.max())
        if hi <= lo:
            raise InputError(f"target image {target} is constant")
        tgt = (t - lo) / (hi - lo)
    return np.asarray(net.data, np.float32), tgt


#: share of the training crops of :class:`PairedSource` centred on a labelled voxel (nnU-Net's foreground
#: oversampling: a third)
FOREGROUND_CROPS = 1 / 3


class PairedSource:
    """Random crops of real image/target pairs on the model's grid (network frame, RAS, ``voxel_mm``),
    with a random gamma."""

    def __init__(self, pairs: Sequence[Tuple[Path, Path]], *, task: str = "seg", target_key: str = "segmentation",
                 label_scheme: Any = "fs33", size: int = 96, n_samples: int = 2, device: Union[str, torch.device] = "cpu",
                 seed: int = 0, n_val: int = 0, voxel_mm: float = 1.0, antialias: bool = True) -> None:
        from brainfm.labels import LabelScheme, get_scheme

        if not pairs:
            raise InputError("no fine-tuning pairs")
        self.task, self.key, self.size, self.n, self.seed = task, target_key, int(size), int(n_samples), int(seed)
        self.device = torch.device(device)
        scheme = None
        if task == "seg":
            scheme = label_scheme if isinstance(label_scheme, LabelScheme) else get_scheme(label_scheme)
        data = [_load_pair(a, b, task, scheme, voxel_mm=voxel_mm, antialias=antialias) for a, b in pairs]
        n_val = min(int(n_val), len(data) - 1)
        self._train = data[: len(data) - n_val]
        self._val = data[len(data) - n_val:] if n_val else []
        self._foreground = [np.argwhere(t > 0) if task == "seg" else None for _, t in self._train]

    @property
    def train(self) -> List[Tuple[np.ndarray, np.ndarray]]:
        """The training pairs ``(image, target)`` on the model's grid."""
        return self._train

    @property
    def val(self) -> List[Tuple[np.ndarray, np.ndarray]]:
        """The validation pairs ``(image, target)`` on the model's grid (held out of training)."""
        return self._val

    def _crop(self, arr: np.ndarray, origin: Sequence[int]) -> np.ndarray:
        s = self.size
        out = np.zeros((s, s, s), arr.dtype)
        src = tuple(slice(o, o + s) for o in origin)
        part = arr[src]
        out[tuple(slice(0, n) for n in part.shape)] = part
        return out

    def _make(self, items: List[Tuple[np.ndarray, np.ndarray, Sequence[int], float]]) -> Any:
        xs, ts = [], []
        for x, t, origin, gam in items:
            xs.append(self._crop(x, origin) ** gam)
            ts.append(self._crop(t, origin))
        x = torch.from_numpy(np.stack(xs)[:, None]).to(self.device)
        t = torch.from_numpy(np.stack(ts)).to(self.device)
        t = t.long() if self.task == "seg" else t[:, None].float()
        return SimpleNamespace(inputs=x, targets={self.key: t})

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> Any:
        """``n_samples`` random crops of one training image, each with a random gamma; for segmentation
        a share of them (:data:`FOREGROUND_CROPS`) centred on a random labelled voxel, so that a small
        label the user drew is in the crops that often."""
        g = np.random.default_rng(step_seed(self.seed, step, rank))
        k = int(g.integers(len(self._train)))
        (x, t), fg = self._train[k], self._foreground[k]
        items = []
        for _ in range(self.n):
            origin = [int(g.integers(0, max(1, d - self.size + 1))) for d in x.shape]
            if fg is not None and len(fg) and g.random() < FOREGROUND_CROPS:
                centre = fg[int(g.integers(len(fg)))]
                origin = [int(min(max(0, c - self.size // 2), max(0, d - self.size))) for c, d in zip(centre, x.shape)]
            items.append((x, t, origin, float(np.exp(g.normal(0, 0.25)))))
        return self._make(items)

    def val_batches(self):
        for x, t in self._val:
            origin = [max(0, (d - self.size) // 2) for d in x.shape]
            yield self._make([(x, t, origin, 1.0)])


#: fewest pairs from which fine-tuning holds one image out for validation by default
MIN_PAIRS_FOR_VALIDATION = 4


def calibration_scans(pairs: Sequence[Tuple[Path, Path]], *, n_val: int, scheme: Any, info: Any,
                      device: Any = "cpu", progress: Any = None) -> Any:
    """The :class:`~brainfm.training.prior_shift.ScanDice` of a fine-tuning run: its ``n_val``
    validation pairs (the last ones, as :class:`PairedSource` holds them out), else its first training
    pairs (at most :data:`~brainfm.training.prior_shift.MAX_SCANS`)."""
    from brainfm.training.prior_shift import MAX_SCANS, ScanDice

    n_val = validation_images(len(pairs), n_val)
    chosen = list(pairs[len(pairs) - n_val:]) if n_val > 0 else list(pairs[:MAX_SCANS])
    return ScanDice(chosen, scheme=scheme, info=info, device=device, progress=progress)


def validation_images(n_pairs: int, n_val: Optional[int] = None) -> int:
    """Images of ``n_pairs`` held out for validation: ``n_val`` when given (at least one image is left to
    train on), else one from :data:`MIN_PAIRS_FOR_VALIDATION` pairs on and none below.

    >>> validation_images(2), validation_images(3), validation_images(4), validation_images(2, 1), validation_images(1, 1)
    (0, 0, 1, 1, 0)
    """
    if n_val is None:
        return 1 if n_pairs >= MIN_PAIRS_FOR_VALIDATION else 0
    return max(0, min(int(n_val), int(n_pairs) - 1))


#: share of the progress bar of a head-mode fine-tune that computing the cached features takes
CACHE_SHARE = 0.2


def _cached_source(net: torch.nn.Module, source: PairedSource, *, task: str, key: str, size: int,
                   n_samples: int, device: torch.device, seed: int, foreground_share: float, progress: Any,
                   cancel: Any) -> Any:
    """A :class:`~brainfm.training.feature_cache.CachedFeatureSource` of ``source``'s images (features
    of ``net``'s backbone on ``device``, with the image after them when a head reads it), or None when
    they would not fit in memory."""
    from brainfm.inference.device import available_memory_bytes
    from brainfm.progress import ensure_callback, scaled
    from brainfm.training.feature_cache import CachedFeatureSource, choose_gammas

    cfg = net.config
    channels = max(cfg.head_input_channels(h) for h in cfg.heads)
    shapes = [x.shape for x, _ in list(source.train) + list(source.val)]
    gammas = choose_gammas(shapes, channels, available_memory_bytes(torch.device("cpu")))
    if not gammas:
        ensure_callback(progress)(0.0, "the features of the images do not fit in memory: "
                                       "the backbone runs at every step")
        return None
    net.to(device)
    return CachedFeatureSource(net.backbone, source.train, source.val, task=task, target_key=key, size=size,
                               n_samples=n_samples, device=device, seed=seed, gammas=gammas,
                               with_image=channels > cfg.feature_channels, foreground_share=foreground_share,
                               progress=scaled(progress, 0.0, CACHE_SHARE), cancel=cancel)


@dataclass
class FinetuneResult:
    """Where the fine-tuned model went and how training ended."""

    native_model: Optional[Path]
    checkpoint: Optional[Path]
    step: int
    val: Dict[str, float]
    losses: List[float]
    #: share of the foreground sampling's prior shift taken back in the exported head
    #: (:class:`~brainfm.training.prior_shift.PriorShift`); None when there was none to take back
    prior_weight: Optional[float] = None


def finetune(base_model: Union[str, PathLike, torch.nn.Module], data_folder: PathLike, out_dir: PathLike, *,
             task: str = "seg", mode: str = "head", head: Optional[str] = None, label_scheme: Any = "fs33",
             steps: int = 500, minutes: float = 0.0, lr: Optional[float] = None, size: int = 96, n_samples: int = 2,
             n_val: Optional[int] = None, device: str = "auto", seed: int = 0, name: str = "brainfm-finetuned",
             resume: str = "auto", overrides: Sequence[str] = (), progress: Any = None, cancel: Any = None,
             feature_cache: bool = True, head_hidden: int = HEAD_HIDDEN,
             head_image: bool = HEAD_IMAGE, foreground_share: float = FOREGROUND_SHARE) -> FinetuneResult:
    """Fine-tune ``base_model`` (a path/registry id or a BrainFMNet) on ``data_folder``.

    ``task`` ``seg``: new ``segmentation`` head with the classes of ``label_scheme``; ``image``: new
    1-channel image head (``head``, default ``T1``) regressing min-max normalised target images.
    The images are prepared as the model prepares them at inference, on its grid (a 2 mm model
    trains and predicts on 2 mm), and the fine-tuned model keeps what its base says about its inputs
    and outputs (:func:`inherited_info`; a bare network as ``base_model``: 1 mm, the defaults). A new
    segmentation head starts from the base's classes of the same labels (:func:`carry_classes`), its
    other classes from the base's classes inside them (:func:`start_new_classes`); an image head the
    base has starts from the base's (:func:`carry_image_head`). ``label_scheme``:
    see :func:`fine_tuning_scheme` (labels of your own: a label table or ``auto``).
    ``n_val``: images held out for validation (the last ones by name; default
    :func:`validation_images`: one from four pairs on, none below, where every image is worth more
    for training). ``feature_cache`` (mode ``head``): compute the frozen backbone's feature of each image once and
    train the head on it (:mod:`brainfm.training.feature_cache`; whole images, three intensity
    variants); without it, or when the features would not fit in memory, every step runs the backbone
    on random crops. ``head_hidden`` > 0 (default :data:`HEAD_HIDDEN`) gives the new head a per-voxel
    hidden layer of that width (:class:`~brainfm.models.heads.ResidualHead`): it starts as the 1x1x1
    head and can learn what one linear layer cannot, such as one label for the left and the right
    structure; 0 keeps the plain 1x1x1 head. ``lr``: the learning rate; default :data:`HEAD_LR` for a
    head on cached features (they are standardised: :class:`~brainfm.training.feature_cache.HeadOnlyNet`),
    tenfold lower after :data:`HEAD_LR_DROP_AT` of the steps, else :data:`LR`. ``head_image`` (segmentation; default :data:`HEAD_IMAGE`): the
    new head reads the input image beside the feature, so it can learn what the feature does not keep,
    such as the brightness of a lesion. ``foreground_share`` (segmentation on cached features; default
    :data:`FOREGROUND_SHARE`, a share from 0 to 1): share of each sample's voxels drawn from the labelled
    voxels; the exported head takes back the share of what that does to the class priors with which the
    product's labels of the validation scans (else of the first training scans, :func:`calibration_scans`)
    score best (:class:`~brainfm.training.prior_shift.PriorShift`, ``FinetuneResult.prior_weight``).
    """
    from brainfm.training.config import TrainConfig, apply_overrides
    from brainfm.training.trainer import Trainer

    if task not in ("seg", "image"):
        raise InputError(f"unknown fine-tuning task {task!r} (seg or image)")
    if not 0.0 <= float(foreground_share) <= 1.0:  # NaN fails too
        raise InputError(f"foreground_share must be a share from 0 to 1, got {foreground_share!r}")
    info: Any = None
    if isinstance(base_model, torch.nn.Module):
        base = base_model
    else:
        from brainfm.models import load_model
        from brainfm.models.registry import resolve_model

        base, info = load_model(resolve_model(str(base_model)))
    head = head or ("segmentation" if task == "seg" else "T1")
    pairs = pair_folder(data_folder, task=task)
    scheme = fine_tuning_scheme(label_scheme, pairs) if task == "seg" else None
    channels = scheme.n_channels if scheme is not None else 1
    net = build_finetune_model(base, head=head, channels=channels, mode=mode, hidden=head_hidden,
                               image=bool(head_image) and task == "seg")
    if task == "seg":
        from brainfm.labels import decide_scheme

        base_channels = base.head.channels().get(head)
        try:
            base_scheme = (decide_scheme(getattr(info, "label_scheme", None), n_channels=base_channels)
                           if base_channels else None)
        except InputError:
            base_scheme = None
        carried = carry_classes(net, base, head=head, scheme=scheme, base_scheme=base_scheme)
    else:
        carry_image_head(net, base, head=head)
    keep = inherited_info(info, mode=mode, head=head) if info is not None else {}
    if scheme is not None and not scheme.anatomical:  # a user's own labels travel with the model
        keep["label_scheme"] = scheme.to_dict()
    voxel_mm = float(keep.get("voxel_mm", 1.0))
    antialias = bool(keep.get("input_antialias", True))
    c = net.config
    heads_yaml = "{" + ", ".join(f"{k}: {v}" for k, v in c.heads.items()) + "}"
    hidden_yaml = "{" + ", ".join(f"{k}: {v}" for k, v in c.head_hidden.items()) + "}"
    cfg = apply_overrides(TrainConfig(), [
        f"model.f_maps={c.f_maps}", f"model.num_levels={c.num_levels}", f"model.num_groups={c.num_groups}",
        f"model.unit_feat={str(c.unit_feat).lower()}", f"model.heads={heads_yaml}",
        f"model.head_hidden={hidden_yaml}", f"model.refine={list(c.refine)}",
        f"model.head_image=[{', '.join(c.head_image)}]",
        f"model.label_scheme={scheme.name if scheme is not None else 'none'}", f"model.name={name}",
        f"model.voxel_mm={voxel_mm}",
        f"generator.size={size}", f"generator.n_samples={n_samples}",
        "optim.warmup_steps=0", f"run.max_steps={steps}", f"run.minutes={minutes}", f"run.out_dir={out_dir}",
        f"run.device={device}", f"run.seed={seed}", "run.ckpt_every=100", "run.log_every=5",
        f"loss.objective={'brainfm' if head in ('T1', 'T2', 'FLAIR', 'CT', 'segmentation') else 'brainid'}",
    ] + list(overrides))
    if task == "seg" and head != "segmentation":
        raise InputError("segmentation fine-tuning writes the 'segmentation' head (omit --head)")
    from brainfm.training.dist import DistInfo, select_device

    dev = select_device(device, DistInfo.from_env())
    key = "segmentation" if task == "seg" else (head if cfg.loss.objective == "brainfm" else "T1")
    source_val = validation_images(len(pairs), n_val)
    source = PairedSource(pairs, task=task, target_key=key, label_scheme=scheme, size=size,
                          n_samples=n_samples, device=dev, seed=seed, n_val=source_val,
                          voxel_mm=voxel_mm, antialias=antialias)
    if task == "seg":  # the classes the base does not have start from what it sees there
        start_new_classes(net, base, source.train, head=head, skip=carried, size=size)
    if cfg.loss.objective == "brainid" and head != "image":
        raise InputError(f"image heads must be one of T1, T2, FLAIR, CT or image, got {head!r}")
    model: torch.nn.Module = net
    calibration = None
    cached = _cached_source(net, source, task=task, key=key, size=size, n_samples=n_samples,
                            device=dev, seed=seed, foreground_share=foreground_share, progress=progress,
                            cancel=cancel) \
        if mode == "head" and feature_cache else None
    if cached is not None:
        from brainfm.progress import scaled
        from brainfm.training.feature_cache import HeadOnlyNet

        if task == "seg" and cached.foreground_share > 0:
            from brainfm.training.export import native_info
            from brainfm.training.prior_shift import PriorShift

            calibration = PriorShift(head, cached.sampling_log_ratio(channels), scans=calibration_scans(
                pairs, n_val=source_val, scheme=scheme, device=dev, progress=scaled(progress, 1.0, 1.0),  # after training
                info=native_info(net, cfg=cfg, inherit=keep)))
        model = HeadOnlyNet(net, heads=[head], standardise=cached.channel_stats(), calibration=calibration)
        source, progress = cached, scaled(progress, CACHE_SHARE, 1.0)
    schedule = [f"optim.lr={float(lr) if lr is not None else HEAD_LR if cached is not None else LR}"]
    if cached is not None:  # the standardised head: a tenfold drop of the learning rate late in the run
        schedule.append(f"optim.lr_drops=[{max(1, int(HEAD_LR_DROP_AT * int(steps)))}]")
    cfg = apply_overrides(cfg, schedule + [o for o in overrides if o.split("=")[0].strip().startswith("optim.lr")])
    trainer = Trainer(cfg, source=source, model=model, resume=resume, progress=progress, cancel=cancel,
                      export_info=keep)
    res = trainer.fit()
    return FinetuneResult(res.native_model, res.checkpoint, res.step, res.val, res.losses,
                          prior_weight=calibration.weight if calibration is not None else None)
