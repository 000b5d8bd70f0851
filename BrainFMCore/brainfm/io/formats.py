"""File formats known to :mod:`brainfm.io` and their detection from the file name.

>>> format_of("sub-01_T1w.nii.gz")
'nifti'
>>> format_of("scan.MHA")
'metaimage'
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Tuple, Union

from brainfm.errors import InputError

#: extension (lower case, longest first) -> (format name, library)
EXTENSIONS: Dict[str, Tuple[str, str]] = {
    ".nii.gz": ("nifti", "nibabel"),
    ".nii": ("nifti", "nibabel"),
    ".mgz": ("mgh", "nibabel"),
    ".mgh": ("mgh", "nibabel"),
    ".nrrd": ("nrrd", "sitk"),
    ".nhdr": ("nrrd", "sitk"),
    ".mha": ("metaimage", "sitk"),
    ".mhd": ("metaimage", "sitk"),
}

SUPPORTED = ", ".join(EXTENSIONS)


def split_ext(path: Union[str, "os.PathLike[str]"]) -> Tuple[str, str]:
    """``(stem, extension)`` with the extension lower-cased; raises for unknown extensions."""
    name = Path(path).name
    low = name.lower()
    for ext in sorted(EXTENSIONS, key=len, reverse=True):
        if low.endswith(ext) and len(low) > len(ext):
            return name[: -len(ext)], ext
    raise InputError(f"unsupported file type {name!r}: BrainFM reads and writes {SUPPORTED}")


def is_supported(path: Union[str, "os.PathLike[str]"]) -> bool:
    """True when the file name has an extension BrainFM reads (DICOM is recognised by content).

    >>> is_supported("a.nii.gz"), is_supported("notes.txt")
    (True, False)
    """
    try:
        split_ext(path)
        return True
    except InputError:
        return False


def format_of(path: Union[str, "os.PathLike[str]"]) -> str:
    """Format name (``nifti``, ``mgh``, ``nrrd``, ``metaimage``) of a file name."""
    return EXTENSIONS[split_ext(path)[1]][0]


def library_of(path: Union[str, "os.PathLike[str]"]) -> str:
    """``"nibabel"`` or ``"sitk"``: the library that handles this file type."""
    return EXTENSIONS[split_ext(path)[1]][1]
