"""The model's segmentation of the atlas template, which ``reg_method="fit"`` carries a scan's
segmentation onto (:mod:`brainfm.tasks.regfit`).

Segmenting the atlas takes one prediction (about 16 s on a 2-core CPU), so the result is kept: in
memory by the :class:`~brainfm.inference.Predictor`, and on disk in the cache
(``BRAINFM_HOME/atlas-labels/<model>-<atlas>-v<VERSION>.nii.gz``, keyed by the SHA-256 of the weights
and of the atlas's voxels and geometry), so that later processes (every ``brainfm run``, every Slicer run) read it
instead. A cached file that is not on the atlas's grid is ignored; a cache that cannot be written is
skipped.

>>> import numpy as np
>>> from brainfm.volume import Volume
>>> a = Volume(np.zeros((2, 2, 2), np.float32), np.eye(4))
>>> atlas_key(a) == atlas_key(Volume(np.zeros((2, 2, 2), np.float32), np.eye(4))), len(atlas_key(a))
(True, 64)
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import numpy as np

from brainfm.volume import Volume

FOLDER = "atlas-labels"
#: part of the file name: raised whenever the product's labels for the same weights change (e.g. the
#: refinement to the scan's intensities), so that no older segmentation of the atlas is read
VERSION = 1


def atlas_key(atlas: Volume) -> str:
    """SHA-256 (hex) of the atlas's voxels (as float32), shape and affine."""
    h = hashlib.sha256()
    data = np.ascontiguousarray(np.asarray(atlas.data, np.float32))
    h.update(np.asarray(data.shape, np.int64).tobytes())
    h.update(np.asarray(atlas.affine, np.float64).tobytes())
    h.update(data.tobytes())
    return h.hexdigest()


def cache_path(model_sha256: str, key: str) -> Path:
    """Where the segmentation of atlas ``key`` by the model with weights ``model_sha256`` is cached."""
    from brainfm.models.registry import cache_dir

    return cache_dir() / FOLDER / f"{model_sha256[:16]}-{key[:16]}-v{VERSION}.nii.gz"


def load_cached(path: Path, atlas: Volume) -> Optional[Volume]:
    """The cached label map at ``path`` when it exists and lies on ``atlas``'s grid, else None."""
    if not path.is_file():
        return None
    from brainfm.errors import BrainFMError
    from brainfm.io import read_volume

    try:
        vol = read_volume(path, kind="label")
    except (BrainFMError, OSError, ValueError):
        return None
    if tuple(vol.shape) != tuple(atlas.shape) or not np.allclose(vol.affine, atlas.affine, atol=1e-4):
        return None
    return vol


def store(path: Path, labels: Volume) -> None:
    """Write ``labels`` to ``path`` atomically, in a private folder; a refused write is skipped."""
    from brainfm.errors import BrainFMError
    from brainfm.io import write_volume

    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_volume(labels, path)
    except (BrainFMError, OSError):
        pass
