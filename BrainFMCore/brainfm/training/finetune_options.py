"""Options of a fine-tuning run (``brainfm finetune``): given values > a YAML config file > defaults.

>>> o = finetune_options({"steps": 50, "lr": 0.002})
>>> o["steps"], o["lr"], o["mode"]
(50, 0.002, 'head')
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

from brainfm.errors import InputError

#: width of the hidden layer of a new head by default (0: a plain 1x1x1 head). With the user's labels
#: "Hippocampus" and "Thalamus" (both sides each) it raised their held-out Dice from 0.683 / 0.865 to
#: 0.724 / 0.882 after 500 steps; FreeSurfer's labels scored the same (0.761 / 0.791 against 0.762 / 0.791)
HEAD_HIDDEN = 32

#: whether a new segmentation head reads the input image beside the feature by default: the lesions of
#: ``bench_finetune.py --lesions`` (500 steps) score held-out Dice 0.77 with it and 0.04 without, since
#: the backbone's features look through lesions
HEAD_IMAGE = True

#: learning rate of a new head trained on cached, standardised features (mode ``head``, the default): on the
#: lesions of ``bench_finetune.py --lesions`` it reached held-out Dice 0.72 / 0.81 in 200 steps, where
#: 1e-3 labelled no voxel
HEAD_LR = 1e-2

#: share of the steps after which the learning rate of such a head drops tenfold: the same lesions after 500
#: steps scored 0.74 / 0.80 with the drop at step 300, 0.65 (mean) without
HEAD_LR_DROP_AT = 0.6

#: share of a segmentation sample's voxels drawn from the labelled voxels (classes other than 0) rather
#: than from the whole image, so that a label the user drew on a thousandth of the image (a lesion) is in
#: every sample. Lesions of ``bench_finetune.py --lesions``, 200 steps at lr 1e-2, held-out Dice: 0.25 / 0.54
#: with none, 0.72 / 0.81 with 0.05; with a third (at lr 1e-3) the label spread far beyond the lesions
FOREGROUND_SHARE = 0.05

#: learning rate of every other fine-tuning (modes ``encoder`` and ``full``, or without the feature cache)
LR = 1e-3

#: option -> default (the keyword arguments of :func:`brainfm.training.finetune.finetune`, plus
#: ``model``, the base model)
FINETUNE_DEFAULTS: Dict[str, Any] = {
    "model": "default", "task": "seg", "mode": "head", "head": None, "label_scheme": "fs33",
    "steps": 500, "minutes": 0.0, "lr": None, "size": 96, "n_samples": 2, "name": "brainfm-finetuned",
    "device": "auto", "resume": "auto", "feature_cache": True, "head_hidden": HEAD_HIDDEN, "head_image": HEAD_IMAGE,
    "foreground_share": FOREGROUND_SHARE}


def read_finetune_config(path: Union[str, Path]) -> Dict[str, Any]:
    """The options of a fine-tuning YAML file; :class:`InputError` when it cannot be read or names
    unknown options."""
    import yaml

    try:
        with open(path) as fh:
            conf = yaml.safe_load(fh) or {}
    except (OSError, yaml.YAMLError) as e:
        raise InputError(f"cannot read fine-tuning config {path}: {e}") from None
    unknown = sorted(set(conf) - set(FINETUNE_DEFAULTS))
    if unknown:
        raise InputError(f"unknown fine-tuning config keys {unknown}; known: {sorted(FINETUNE_DEFAULTS)}")
    return conf


def finetune_options(given: Mapping[str, Any], *, config: Optional[Union[str, Path]] = None) -> Dict[str, Any]:
    """Every option of :data:`FINETUNE_DEFAULTS`: from ``given`` where it is not None, else from the
    YAML file ``config``, else the default."""
    conf = read_finetune_config(config) if config else {}
    out: Dict[str, Any] = {}
    for key, default in FINETUNE_DEFAULTS.items():
        value = given.get(key)
        out[key] = value if value is not None else conf.get(key, default)
    return out
