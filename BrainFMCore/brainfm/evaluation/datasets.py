"""Where the evaluation table's data live inside the shared data folder, and their loaders.

Every path is relative to the data root (``--data``, e.g. ``../shared/data``; see its README).
A missing file raises :class:`brainfm.errors.InputError` naming it, so a row can be reported as
"skipped: data missing" instead of failing the whole table.

>>> DATA["stroke_t1"]
'VolumeRenderingData/stroke/T1.nii.gz'
>>> held_out_names()
('training_seg_19', 'training_seg_20')
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple, Union

import numpy as np

from brainfm.errors import InputError
from brainfm.volume import Volume

PathLike = Union[str, Path]

DATA: Dict[str, str] = {
    "voxelmorph_vol": "voxelmorph/data/nifti_converted/test_scan_vol.nii.gz",
    "voxelmorph_seg": "voxelmorph/data/nifti_converted/test_scan_seg.nii.gz",
    "stroke_t1": "VolumeRenderingData/stroke/T1.nii.gz",
    "stroke_t2": "VolumeRenderingData/stroke/T2.nii.gz",
    "stroke_flair": "VolumeRenderingData/stroke/FLAIR.nii.gz",
    "seg3d_mr": "VolumeRenderingData/seg3D/MR.nii.gz",
    "label_dir": "SynthSeg/data/training_label_maps",
    "atlas": "BrainFM/files/gca.mgz",
    "ct": "dcm_qa_ct/In/GE_as_nifti/GE_head_CT_2_Tilt_Eq_1.nii.gz",
}
HELD_OUT = ("training_seg_19", "training_seg_20")


def held_out_names() -> Tuple[str, ...]:
    """Names of the 2 label maps never used in training (the registration pair)."""
    return HELD_OUT


def data_path(root: PathLike, key: str) -> Path:
    """Absolute path of ``DATA[key]`` (or a held-out label map name) under ``root``; InputError if absent."""
    rel = DATA.get(key)
    if rel is None and key in HELD_OUT:
        rel = f"{DATA['label_dir']}/{key}.nii.gz"
    if rel is None:
        raise InputError(f"unknown evaluation data key {key!r}")
    p = Path(root) / rel
    if not p.exists():
        raise InputError(f"evaluation data missing: {p}")
    return p


def load(root: PathLike, key: str) -> Volume:
    """Read one evaluation volume with :func:`brainfm.io.read_volume`."""
    from brainfm.io import read_volume

    return read_volume(data_path(root, key))


def load_labels(root: PathLike, key: str) -> Volume:
    """Read a label map as int32 (some SynthSeg maps are stored as float32)."""
    v = load(root, key)
    data = np.asarray(v.data)
    if not np.issubdtype(data.dtype, np.integer):
        data = np.rint(data)
    return v.with_data(data.astype(np.int32))
