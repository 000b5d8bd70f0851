"""Brain templates installed with other packages, found without importing them.

The MNI ICBM152 2009a symmetric T1 template (1 mm, brain only) ships inside the ``nilearn`` wheel (the
``demo`` extra). The demo scan is made from it (:mod:`brainfm.demo`), and a fitted registration uses it as
its atlas when the default atlas (``gca.mgz``) can be neither found nor downloaded: a fitted map carries
the scan's segmentation onto the model's segmentation of whatever T1 template it is given
(:mod:`brainfm.tasks.regfit`), so its atlas coordinates are then MNI ICBM152 2009a millimetres.
The official models' registration head predicts coordinates of ``gca.mgz`` only and never uses it.

>>> from brainfm.models.templates import icbm_template_path
>>> p = icbm_template_path()
>>> p is None or p.name == ICBM_TEMPLATE_FILE
True
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

#: the template's file inside the nilearn package (``nilearn/datasets/data``)
ICBM_TEMPLATE_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
#: how outputs and warnings name it
ICBM_TEMPLATE_NAME = "MNI ICBM152 2009a T1 template (from nilearn)"


def icbm_template_path() -> Optional[Path]:
    """Path of the MNI ICBM152 2009a T1 template inside the installed ``nilearn`` package, or None when
    nilearn (``pip install brainfm[demo]``) is not installed or holds no such file."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        p = Path(root) / "datasets" / "data" / ICBM_TEMPLATE_FILE
        if p.is_file():
            return p
    return None
