"""Volume file input/output with exact geometry, and input validation.

>>> from brainfm.io import read_volume, write_volume, validate_image, SUPPORTED
>>> ".nii.gz" in SUPPORTED and ".mha" in SUPPORTED
True
"""
from __future__ import annotations

from brainfm.io.atomic import atomic_output, check_output_path
from brainfm.io.formats import SUPPORTED, format_of
from brainfm.io.readers import read_volume
from brainfm.io.validate import validate_image
from brainfm.io.writers import write_volume

__all__ = ["read_volume", "write_volume", "validate_image", "atomic_output", "check_output_path",
           "format_of", "SUPPORTED"]
