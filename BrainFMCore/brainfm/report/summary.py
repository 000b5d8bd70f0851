"""The machine-readable record of a case (``summary.json``) and of a run (``run_summary.json``).

>>> import numpy as np
>>> jsonable({"a": np.float32(1.5), "b": np.arange(3), "c": (1, None)})
{'a': 1.5, 'b': [0, 1, 2], 'c': [1, None]}
>>> output_kind("seg", np.zeros((2, 2, 2), np.int32)), output_kind("reg_displacement", np.zeros((2, 2, 2, 3)))
('labelmap', 'vector')
>>> output_kind("synth_t1", np.zeros((2, 2, 2), np.float32))
'image'
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import numpy as np

from brainfm._version import __version__
from brainfm.io.atomic import atomic_output
from brainfm.volume import Volume

PathLike = Union[str, "os.PathLike[str]"]

#: units of the outputs whose Volume.meta does not say (DESIGN.md, brainfm.inference)
DEFAULT_UNITS = {
    "synth_ct": "HU",
    "seg": "FreeSurfer label",
    "seg_probabilities": "probability",
    "dist_lp": "mm", "dist_lw": "mm", "dist_rp": "mm", "dist_rw": "mm",
    "bias_field": "ratio",
    "reg_atlas_coords": "mm (atlas RAS)",
    "reg_displacement": "mm (RAS)",
}


def jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, paths, tuples and dataclass-like objects to JSON types."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "__dataclass_fields__"):
        return jsonable({k: getattr(obj, k) for k in obj.__dataclass_fields__})
    if hasattr(obj, "to_dict"):
        return jsonable(obj.to_dict())
    return str(obj)


def output_kind(key: str, data: np.ndarray) -> str:
    """``image``, ``labelmap`` or ``vector`` (any X,Y,Z,C field: displacement, probabilities,
    features; Slicer loads them as vector volumes)."""
    arr = np.asarray(data)
    if arr.ndim == 4:
        return "vector"
    if np.issubdtype(arr.dtype, np.integer) or key == "seg":
        return "labelmap"
    return "image"


#: what :func:`brainfm.io.read_volume` records about the file (``Volume.meta``) that the summary repeats
FILE_META = ("source_format", "original_dtype", "scl_slope", "scl_inter", "header", "dicom_series",
             "dicom_series_uid", "n_files", "frame", "n_frames")


def describe_volume(vol: Volume) -> Dict[str, Any]:
    """Shape, spacing, dtype, origin and orientation of a volume (for the summary), plus what was
    read from its file: format, on-disk voxel type, intensity scaling (``scl_slope``/``scl_inter``),
    header transforms (``header``: qform/sform codes, which one the results follow, their disagreement)."""
    import nibabel as nib

    out = {
        "shape": list(vol.data.shape),
        "spacing_mm": [round(s, 6) for s in vol.spacing],
        "dtype": str(vol.data.dtype),
        "origin_mm": [round(float(v), 4) for v in vol.affine[:3, 3]],
        "orientation": "".join(nib.orientations.aff2axcodes(vol.affine)),
        "affine": [[round(float(v), 6) for v in row] for row in vol.affine],
    }
    for key in FILE_META:
        if vol.meta.get(key) is not None:
            out["on_disk_dtype" if key == "original_dtype" else key] = vol.meta[key]
    return out


def utc_now() -> str:
    """Current UTC time, ISO 8601 with seconds."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def environment() -> Dict[str, Any]:
    """brainfm/python versions and the host (no user names or paths)."""
    return {"brainfm": __version__, "python": platform.python_version(), "platform": platform.platform()}


def build_summary(metadata: Mapping[str, Any], *, outputs: Mapping[str, Dict[str, Any]],
                  tables: Mapping[str, str], structure_volumes: Optional[List[Dict[str, Any]]],
                  input_path: Optional[PathLike], input_volume: Optional[Volume],
                  extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Assemble the ``summary.json`` content of one case (JSON-safe)."""
    meta = dict(metadata)
    model = meta.pop("model", None)
    summary: Dict[str, Any] = {
        "format": "brainfm-case-summary/1",
        "created": utc_now(),
        "environment": environment(),
        "input": {
            "path": os.fspath(input_path) if input_path is not None else None,
            **(describe_volume(input_volume) if input_volume is not None else {}),
        },
        "model": model,
        "device": meta.pop("device", None),
        "precision": meta.pop("precision", None),
        "tiled": meta.pop("tiled", None),
        "timings": meta.pop("timings", {}),
        "warnings": list(meta.pop("warnings", [])),
        "outputs": dict(outputs),
        "tables": dict(tables),
        "structure_volumes": structure_volumes,
        "metadata": meta,
    }
    if extra:
        summary.update(extra)
    return jsonable(summary)


def write_json(data: Mapping[str, Any], path: PathLike) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(target) as tmp:
        tmp.write_text(json.dumps(jsonable(data), indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return target


def read_summary(path: PathLike) -> Dict[str, Any]:
    """The case summary ``path`` (a ``summary.json`` that :func:`build_summary` made) as a dict;
    :class:`~brainfm.errors.InputError` naming the file when it cannot be read or is no JSON object.

    >>> import tempfile, pathlib
    >>> p = write_json({"case": "a"}, pathlib.Path(tempfile.mkdtemp()) / "summary.json")
    >>> read_summary(p)["case"]
    'a'
    """
    from brainfm.errors import InputError

    try:
        summary = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot be read as a BrainFM case summary ({exc})") from None
    if not isinstance(summary, dict):
        raise InputError(f"{path}: not a BrainFM case summary (a JSON object is expected)")
    return summary
