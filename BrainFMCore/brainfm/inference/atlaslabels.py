"""The model's segmentation of the atlas template, which ``reg_method="fit"`` carries a scan's
segmentation onto (:mod:`brainfm.tasks.regfit`).

Segmenting the atlas takes one prediction (about 16 s on a 2-core CPU), so the result is kept: in
memory by the :class:`~brainfm.inference.Predictor`, and on disk in the cache
(``BRAINFM_HOME/atlas-labels/<model>-<atlas>-<code>.nii.gz``, keyed by the SHA-256 of the weights, of the
atlas's voxels and geometry, and of the code that makes the labels: :func:`code_fingerprint`), so that
later processes (every ``brainfm run``, every Slicer run) read it instead. Another version of brainfm
computes it afresh, and the older file of the same model and atlas is removed. A cached file that is
not on the atlas's grid is ignored; a cache that cannot be written is skipped.

>>> import numpy as np
>>> from brainfm.volume import Volume
>>> a = Volume(np.zeros((2, 2, 2), np.float32), np.eye(4))
>>> atlas_key(a) == atlas_key(Volume(np.zeros((2, 2, 2), np.float32), np.eye(4))), len(atlas_key(a))
(True, 64)
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Optional

import numpy as np

from brainfm.volume import Volume

FOLDER = "atlas-labels"
#: folders of the package whose code makes no prediction's labels (left out of :func:`code_fingerprint`)
NOT_PREDICTION = ("cli", "evaluation", "report", "training")


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """The :func:`sources_fingerprint` of this installation of brainfm: any change to the code that
    segments (the model, the refinement, the hole rule, the resampling ...) gives another file name, so
    that no segmentation made by other code is read.

    >>> len(code_fingerprint())
    64
    """
    from brainfm._version import __version__

    return sources_fingerprint(Path(__file__).resolve().parents[1], version=__version__)


def sources_fingerprint(root: Path, *, version: str) -> str:
    """SHA-256 (hex) of ``version`` and of the Python files under the package folder ``root`` (their
    paths and bytes), but for those in the folders :data:`NOT_PREDICTION`.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = (Path(d) / "model.py").write_text("A = 1")
    ...     before = sources_fingerprint(Path(d), version="1.0")
    ...     _ = (Path(d) / "model.py").write_text("A = 2")
    ...     before == sources_fingerprint(Path(d), version="1.0")
    False
    """
    h = hashlib.sha256(version.encode())
    for f in sorted(Path(root).rglob("*.py")):
        rel = f.relative_to(root)
        if rel.parts[0] in NOT_PREDICTION:
            continue
        h.update(rel.as_posix().encode() + b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()


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

    return cache_dir() / FOLDER / f"{model_sha256[:16]}-{key[:16]}-{code_fingerprint()[:16]}.nii.gz"


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
    """Write ``labels`` to ``path`` atomically, in a private folder, and remove the files of the same
    model and atlas made by other code (:func:`cache_path`); a refused write is skipped."""
    from brainfm.errors import BrainFMError
    from brainfm.io import write_volume

    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_volume(labels, path)
    except (BrainFMError, OSError):
        return
    model_atlas = "-".join(path.name.split("-")[:2])
    for old in path.parent.glob(f"{model_atlas}*.nii.gz"):
        if old != path:
            try:
                old.unlink()
            except OSError:
                pass
