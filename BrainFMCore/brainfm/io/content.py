"""Open an image file by what it holds, compressed or not, whatever its name says.

A NIfTI named ``.nii.gz`` whose bytes are not compressed (some converters write those) opens in ITK and
so in 3D Slicer, which look at the bytes; nibabel goes by the name and refuses it. BrainFM reads such a
file by what it holds, and so a compressed file named ``.nii`` or ``.mgh`` too.

>>> import tempfile, os, numpy as np, nibabel as nib
>>> d = tempfile.mkdtemp()
>>> p = os.path.join(d, "plain.nii")
>>> nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), p)
>>> misnamed = os.path.join(d, "scan.nii.gz")
>>> os.rename(p, misnamed)
>>> is_gzip(misnamed), name_misleads(misnamed)
(False, True)
>>> with open_by_content(misnamed) as fh:
...     len(fh.read(348))
348
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import BinaryIO, Union

PathLike = Union[str, "os.PathLike[str]"]

#: the first two bytes of every gzip stream
GZIP_MAGIC = b"\x1f\x8b"

#: endings of file names that nibabel opens as gzip streams
GZIP_NAMES = (".gz", ".mgz")


def is_gzip(path: PathLike) -> bool:
    """Whether the file's bytes are a gzip stream (its first two bytes)."""
    with open(path, "rb") as fh:
        return fh.read(2) == GZIP_MAGIC


def name_misleads(path: PathLike) -> bool:
    """Whether the file's name says compressed (``.gz``, ``.mgz``) where its bytes are not, or the
    reverse; False for a file that cannot be opened (the reader then says why)."""
    try:
        return Path(path).name.lower().endswith(GZIP_NAMES) != is_gzip(path)
    except OSError:
        return False


def open_by_content(path: PathLike) -> BinaryIO:
    """The file opened for reading, decompressed when its bytes are a gzip stream (whatever its name);
    a context manager."""
    if is_gzip(path):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")
