"""Label schemes, FreeSurfer names/colours, label-table export and structure volumes.

>>> from brainfm.labels import get_scheme, freesurfer_lut
>>> get_scheme("fs33").n_channels, freesurfer_lut()[24][0]
(33, 'CSF')
"""
from __future__ import annotations

from brainfm.labels.export import (
    SLICER_CSV_COLUMNS,
    read_freesurfer_lut,
    read_label_table,
    scheme_table,
    write_freesurfer_lut,
    write_slicer_color_csv,
)
from brainfm.labels.freesurfer import freesurfer_lut, fs_color, fs_name
from brainfm.labels.schemes import (
    SCHEMES,
    LabelScheme,
    all_fs_values,
    custom_scheme,
    decide_scheme,
    get_scheme,
    scheme_for_channels,
    scheme_from_dict,
    scheme_text,
)
from brainfm.labels.volumes import EVAL17_FS, merge_hemispheres, structure_volumes

__all__ = [
    "LabelScheme",
    "SCHEMES",
    "get_scheme",
    "scheme_for_channels",
    "decide_scheme",
    "custom_scheme",
    "scheme_from_dict",
    "scheme_text",
    "read_label_table",
    "all_fs_values",
    "freesurfer_lut",
    "fs_name",
    "fs_color",
    "write_slicer_color_csv",
    "write_freesurfer_lut",
    "read_freesurfer_lut",
    "scheme_table",
    "SLICER_CSV_COLUMNS",
    "structure_volumes",
    "merge_hemispheres",
    "EVAL17_FS",
]
