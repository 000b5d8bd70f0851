"""Structure volumes of a label map and hemisphere merging for evaluation.

>>> import numpy as np
>>> from brainfm.volume import Volume
>>> lab = np.zeros((4, 4, 4), np.int32); lab[:2] = 17; lab[2:, :1] = 53
>>> rows = structure_volumes(Volume(lab, np.diag([0.5, 1.0, 2.0, 1.0])))
>>> [(r["value"], r["name"], r["voxels"], r["volume_mm3"]) for r in rows]
[(17, 'Left-Hippocampus', 32, 32.0), (53, 'Right-Hippocampus', 8, 8.0)]
>>> merge_hemispheres(np.array([17, 53, 2, 41, 24, 14])).tolist()
[17, 17, 2, 2, 24, 14]
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

import numpy as np

from brainfm.errors import InputError
from brainfm.labels.freesurfer import freesurfer_lut, fs_name
from brainfm.labels.schemes import LabelScheme, get_scheme
from brainfm.volume import Volume

#: The 17 structures of the hemisphere-merged evaluation (SynthSeg 2.0 classes without
#: background and CSF, each left/right pair merged onto its left FreeSurfer number).
EVAL17_FS = (2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 26, 28)


def _as_scheme(scheme: Union[None, str, LabelScheme]) -> Optional[LabelScheme]:
    if scheme is None or isinstance(scheme, LabelScheme):
        return scheme
    return get_scheme(scheme)


def _integer_labels(data: np.ndarray) -> np.ndarray:
    if data.ndim != 3:
        raise InputError(f"a label map must be 3D, got shape {data.shape}")
    if np.issubdtype(data.dtype, np.integer):
        return data.astype(np.int64, copy=False)
    if not np.all(np.isfinite(data)) or not np.all(np.mod(data, 1) == 0):
        raise InputError("label map contains non-integer values; is this an image rather than a label map?")
    return data.astype(np.int64)


def structure_volumes(labels: Volume, *, scheme: Union[None, str, LabelScheme] = None,
                      include_absent: bool = True) -> List[Dict[str, Any]]:
    """Voxel count and volume (mm^3, from ``|det affine|``) of every non-zero label.

    Labels are FreeSurfer numbers. With a ``scheme``, every structure of the scheme is listed
    (``include_absent``: with 0 voxels when missing) in scheme order, followed by any other value
    found; without one, the values present are listed in increasing order. Names come from the
    scheme or the FreeSurfer table (``label-<n>`` for unknown numbers).
    """
    if not isinstance(labels, Volume):
        raise InputError("structure_volumes expects a brainfm Volume (label map with its affine)")
    lab = _integer_labels(np.asarray(labels.data))
    voxel_mm3 = float(abs(np.linalg.det(labels.affine[:3, :3])))
    values, counts = np.unique(lab, return_counts=True)
    return rows_from_counts(dict(zip(values.tolist(), counts.tolist())), voxel_mm3,
                            scheme=_as_scheme(scheme), include_absent=include_absent)


def rows_from_counts(counts: Dict[int, int], voxel_mm3: float, *, scheme: Optional[LabelScheme] = None,
                     include_absent: bool = True) -> List[Dict[str, Any]]:
    """Rows ``{value, name, voxels, volume_mm3}`` from voxel counts per FreeSurfer number: every
    structure of ``scheme`` first (in scheme order; with 0 voxels when absent and ``include_absent``),
    then any other value found; background 0 left out.

    >>> rows_from_counts({0: 5, 17: 8}, 0.5)
    [{'value': 17, 'name': 'Left-Hippocampus', 'voxels': 8, 'volume_mm3': 4.0}]
    """
    found = {int(v): int(c) for v, c in counts.items() if v != 0 and c > 0}
    order: List[int] = []
    if scheme is not None:
        order = [int(v) for v in scheme.fs_values if v != 0 and (include_absent or v in found)]
    order += [v for v in sorted(found) if v not in order]
    rows = []
    for v in order:
        n = found.get(v, 0)
        name = scheme.name_of_fs(v) if scheme is not None else fs_name(v)
        rows.append({"value": v, "name": name, "voxels": n, "volume_mm3": round(n * voxel_mm3, 6)})
    return rows


def merge_hemispheres(labels: Union[np.ndarray, Volume], *,
                      scheme: Union[None, str, LabelScheme] = None) -> Union[np.ndarray, Volume]:
    """Map every ``Right-*`` FreeSurfer number onto its ``Left-*`` partner (e.g. 53 -> 17).

    Pairs come from ``scheme`` (its ``lr_partner``) or, by default, from the names of the
    FreeSurfer table. Midline labels are unchanged. Returns the same type it was given (a new
    array/Volume; the input is not modified). Use with :data:`EVAL17_FS` for the 17-class Dice.
    """
    data = labels.data if isinstance(labels, Volume) else np.asarray(labels)
    sch = _as_scheme(scheme)
    mapping: Dict[int, int] = {}
    if sch is not None:
        for c, p in enumerate(sch.lr_partner):
            if sch.names[c].startswith("Right-"):
                mapping[sch.fs_values[c]] = sch.fs_values[p]
    else:
        by_name = {name: num for num, (name, _) in freesurfer_lut().items()}
        for num, (name, _) in freesurfer_lut().items():
            if name.startswith("Right-") and "Left-" + name[6:] in by_name:
                mapping[num] = by_name["Left-" + name[6:]]
    out = np.array(data, copy=True)
    for right, left in mapping.items():
        out[data == right] = left
    if isinstance(labels, Volume):
        return labels.with_data(out)
    return out
