"""Test helper: write checkpoint files in every format ``brainfm.models.load_model`` reads, with
random weights, so tests never need the real (1-3 GB) files.

All writers build a tiny network by default (``f_maps=8, num_levels=3``: forward on 48^3 takes well
under a second on CPU) with *non-trivial* GroupNorm parameters, write it in the requested format and
return the network that wrote the file (in ``eval()`` mode) so tests can compare outputs.

Formats:

* :func:`write_official` - official BrainFM ``.pth``: ``model``, ``optimizer`` (AdamW state dict),
  ``epoch``, ``submit_args``/``gen_args``/``train_args`` (pickled ``argparse.Namespace`` trees),
  ``best_val_stats``; official head names (``T1`` ... ``segmentation`` (56) ... ``registration``).
* :func:`write_brainid` - Brain-ID pre-training ``.pth``: ``model`` (``backbone.*`` +
  ``head.final_conv_image``), ``optimizer``, ``epoch``, ``args``; features not unit-normalised.
* :func:`write_brainid_features` / :func:`write_brainid_head` - Brain-ID downstream files: a
  backbone-only checkpoint and a bare ``final_conv_<name>.*`` head file (default ``seg`` with 33
  channels; ``in_channels=f_maps + 1`` makes an unsupported DepHead).
* :func:`write_native` - ``<stem>.safetensors`` + ``<stem>.json`` via ``save_native``.
* :func:`write_forbidden_pickle` - a ``.pth`` that pickles a custom class (must be refused).
* :func:`write_os_system_pickle` - a ``.pth`` whose pickle would call ``os.system`` to create a
  marker file when unpickled unsafely (must be refused; the marker must never appear).

Example::

    from ckpt_factory import write_official
    net = write_official(tmp_path / "brainfm_pretrained.pth")
    loaded = brainfm.models.load_model(tmp_path / "brainfm_pretrained.pth")
    # loaded.net(x) equals net(x)
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import torch

from brainfm.models import BrainFMNet, ModelConfig, save_native
from brainfm.models.config import OFFICIAL_HEADS

TINY = {"f_maps": 8, "num_levels": 3}
BRAINFM56_VALUES = list(range(56))  # stand-in for the label list stored in gen_args


def random_net(config: ModelConfig, *, seed: int = 0) -> BrainFMNet:
    """``BrainFMNet(config)`` with seeded random weights, GroupNorm scale ~U(0.5, 1.5), shift ~N(0, 0.1)."""
    g = torch.Generator().manual_seed(seed)
    net = BrainFMNet(config)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "groupnorm.weight" in name:
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif "groupnorm.bias" in name or name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / fan_in) ** 0.5)
    return net.eval()


def _adamw_state(net: BrainFMNet) -> dict:
    return torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=1e-4).state_dict()


def _ns(**kw) -> argparse.Namespace:
    return argparse.Namespace(**kw)


def write_official(path: Path, *, f_maps: int = TINY["f_maps"], num_levels: int = TINY["num_levels"],
                   heads: Optional[Mapping[str, int]] = None, unit_feat: Optional[bool] = True,
                   seed: int = 0, epoch: int = 7, max_surf_distance: float = 3.0,
                   key_prefix: str = "") -> BrainFMNet:
    """Official BrainFM training checkpoint (``torch.save`` dict with Namespace args).

    ``unit_feat=None`` omits ``train_args.unit_feat`` (loader default True); ``key_prefix``
    (e.g. ``"module."``) is prepended to every state-dict key.
    """
    heads = dict(OFFICIAL_HEADS if heads is None else heads)
    net = random_net(ModelConfig(f_maps=f_maps, num_levels=num_levels, heads=heads,
                                 unit_feat=True if unit_feat is None else unit_feat), seed=seed)
    train = dict(backbone="unet3d", in_channels=1, f_maps=f_maps, num_levels=num_levels, layer_order="gcl",
                 num_groups=8, out_channels=dict(heads), task_f_maps=[f_maps], lr=1e-4)
    if unit_feat is not None:
        train["unit_feat"] = unit_feat
    gen = _ns(tasks=_ns(T1=True, T2=True, FLAIR=True, CT=True, segmentation=True, distance=True,
                        bias_field=True, registration=True, super_resolution="high_res_residual" in heads),
              n_labels=heads.get("segmentation", 0), max_surf_distance=max_surf_distance,
              label_list_segmentation=BRAINFM56_VALUES, generator=_ns(size=[128, 128, 128]),
              left_hemis_only=False)
    ckpt = {
        "model": {key_prefix + k: v for k, v in net.state_dict().items()},
        "optimizer": _adamw_state(net),
        "epoch": epoch,
        "submit_args": _ns(num_gpus=1, num_workers=0, out_dir="/tmp/out", exp_name="joint"),
        "gen_args": gen,
        "train_args": _ns(**train),
        "best_val_stats": None,
    }
    torch.save(ckpt, str(path))
    return net


def write_brainid(path: Path, *, f_maps: int = TINY["f_maps"], num_levels: int = TINY["num_levels"],
                  seed: int = 1, epoch: int = 3) -> BrainFMNet:
    """Brain-ID pre-training checkpoint (head ``image``; features not unit-normalised)."""
    net = random_net(ModelConfig(f_maps=f_maps, num_levels=num_levels, heads={"image": 1}, unit_feat=False),
                     seed=seed)
    args = _ns(task="feat-anat", backbone="unet3d", f_maps=f_maps, out_channels={"image": 1},
               dataset=_ns(size=[128, 128, 128]))
    torch.save({"model": net.state_dict(), "optimizer": _adamw_state(net), "epoch": epoch, "args": args,
                "best_val_stats": None}, str(path))
    return net


def write_brainid_features(path: Path, *, f_maps: int = TINY["f_maps"], num_levels: int = TINY["num_levels"],
                           seed: int = 2) -> BrainFMNet:
    """Brain-ID feature-extractor checkpoint: only ``backbone.*`` keys (joiner without head)."""
    net = random_net(ModelConfig(f_maps=f_maps, num_levels=num_levels, heads={}, unit_feat=False), seed=seed)
    torch.save({"model": net.state_dict(), "epoch": 1, "args": _ns(task="seg")}, str(path))
    return net


def write_brainid_head(path: Path, *, name: str = "seg", channels: int = 33,
                       in_channels: int = TINY["f_maps"], seed: int = 3) -> Dict[str, torch.Tensor]:
    """Brain-ID downstream head file: bare ``final_conv_<name>.weight/.bias`` under ``model``."""
    g = torch.Generator().manual_seed(seed)
    state = {f"final_conv_{name}.weight": torch.randn(channels, in_channels, 1, 1, 1, generator=g) * 0.3,
             f"final_conv_{name}.bias": torch.randn(channels, generator=g) * 0.1}
    torch.save({"model": state, "epoch": 1, "args": _ns(task="seg")}, str(path))
    return state


def write_native(path: Path, *, f_maps: int = TINY["f_maps"], num_levels: int = TINY["num_levels"],
                 heads: Optional[Mapping[str, int]] = None, seed: int = 4, fp16: bool = False,
                 info: Optional[Mapping[str, object]] = None) -> Tuple[BrainFMNet, Path, Path]:
    """Native model ``<path stem>.safetensors`` + ``.json``; returns ``(net, weights_path, json_path)``."""
    heads = {"T1": 1, "segmentation": 33, "distance": 4} if heads is None else dict(heads)
    net = random_net(ModelConfig(f_maps=f_maps, num_levels=num_levels, heads=heads), seed=seed)
    meta = {"name": "tiny-native", "version": "0.0.1", "label_scheme": "fs33",
            "atlas": {"name": "gca", "sha256": None},
            "provenance": {"training_runs": [{"iterations": 10, "seed": seed}]}}
    meta.update(info or {})
    w, j = save_native(net, path, info=meta, fp16=fp16)
    return net, w, j


class UntrustedObject:
    """A custom class: a pickle containing it must be refused by the loader."""

    def __init__(self) -> None:
        self.payload = "not a tensor"


def write_forbidden_pickle(path: Path) -> None:
    """A ``.pth`` whose pickle references :class:`UntrustedObject` next to valid weights."""
    net = random_net(ModelConfig(**TINY, heads={"T1": 1}))
    torch.save({"model": net.state_dict(), "train_args": _ns(unit_feat=True), "extra": UntrustedObject()},
               str(path))


class _RunsCommand:
    """Unpickles (unsafely) as ``os.system(command)``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


def write_os_system_pickle(path: Path, marker: Path, *, legacy: bool = False) -> None:
    """A ``.pth`` holding valid weights and an object whose unpickling runs ``touch <marker>``."""
    import shlex

    net = random_net(ModelConfig(**TINY, heads={"T1": 1}))
    torch.save({"model": net.state_dict(), "train_args": _ns(unit_feat=True),
                "extra": _RunsCommand(f"touch {shlex.quote(str(marker))}")}, str(path),
               _use_new_zipfile_serialization=not legacy)
