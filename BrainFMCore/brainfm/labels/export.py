"""Write label tables: Slicer colour-table CSV (with SNOMED CT terminology) and FreeSurfer LUT.

Slicer (>= 5.10) reads a ``.csv`` colour table with the columns ``LabelValue, Name, Color_R,
Color_G, Color_B, Color_A`` and optional terminology columns ``Category_*``, ``Type_*``,
``TypeModifier_*``, ``Region_*``, ``RegionModifier_*`` (each ``CodingScheme``, ``CodeValue``,
``CodeMeaning``); background (0) is left out, as Slicer's documentation recommends.

>>> import tempfile, pathlib, csv
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> p = write_slicer_color_csv(d / "fs33.csv", scheme="fs33")
>>> rows = list(csv.DictReader(open(p)))
>>> len(rows), rows[0]["LabelValue"], rows[0]["Name"], rows[0]["Type_CodeValue"]
(32, '2', 'Left-Cerebral-White-Matter', '68523003')
>>> write_freesurfer_lut(d / "lut.txt", scheme="fs33").read_text().splitlines()[2].split()
['0', 'Unknown', '0', '0', '0', '0']
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from brainfm.io.atomic import atomic_output
from brainfm.labels.freesurfer import fs_color, fs_name
from brainfm.labels.schemes import LabelScheme, all_fs_values, get_scheme
from brainfm.labels.terminology import CATEGORY, modifier_code, type_code

PathLike = Union[str, "os.PathLike[str]"]

_TERMS = ("Category", "Type", "TypeModifier", "Region", "RegionModifier")
SLICER_CSV_COLUMNS: Tuple[str, ...] = ("LabelValue", "Name", "Color_R", "Color_G", "Color_B", "Color_A") + tuple(
    f"{t}_{part}" for t in _TERMS for part in ("CodingScheme", "CodeValue", "CodeMeaning")
)


def _entries(scheme: Union[None, str, LabelScheme]) -> List[Tuple[int, str, Tuple[int, int, int, int]]]:
    """(FreeSurfer number, name, RGBA) of the scheme's labels (all schemes when None), sorted."""
    if scheme is None:
        values: Sequence[int] = all_fs_values()
        names = {v: fs_name(v) for v in values}
    else:
        sch = get_scheme(scheme) if isinstance(scheme, str) else scheme
        values = sorted(sch.fs_values)
        names = {v: sch.name_of_fs(v) for v in values}
        colors = {v: tuple(sch.colors[sch.fs_values.index(v)]) + (255,) if v else fs_color(0) for v in values}
        return [(v, names[v], colors[v]) for v in values]  # type: ignore[misc]
    return [(v, names[v], fs_color(v)) for v in values]


def write_slicer_color_csv(path: PathLike, *, scheme: Union[None, str, LabelScheme] = None,
                           terminology: bool = True) -> Path:
    """Write a Slicer colour-table CSV for ``scheme`` (default: every label of every scheme).

    Terminology columns hold SNOMED CT codes where a verified code exists
    (:mod:`brainfm.labels.terminology`), otherwise (or without ``terminology``: the labels of a
    user's own, whose names need not mean FreeSurfer's structures) they are empty. Written atomically.
    Returns the path written.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(target) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(SLICER_CSV_COLUMNS)
            for value, name, (r, g, b, a) in _entries(scheme):
                if value == 0:
                    continue
                row: List[object] = [value, name, r, g, b, a]
                t = type_code(name) if terminology else None
                if t is not None:
                    m = modifier_code(name)
                    row += list(CATEGORY)
                    row += ["SCT", t[0], t[1]]
                    row += ["SCT", m[0], m[1]] if m else ["", "", ""]
                    row += [""] * 6
                else:
                    row += [""] * 15
                w.writerow(row)
    return target


def write_freesurfer_lut(path: PathLike, *, scheme: Union[None, str, LabelScheme] = None) -> Path:
    """Write a FreeSurferColorLUT-format text file (``No. Name R G B A``, A written as 0 as in
    FreeSurfer's own file) for ``scheme`` (default: every label of every scheme). Atomic."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# BrainFM label table (FreeSurferColorLUT format)", "#No. Label Name:                            R    G    B    A"]
    entries = _entries(scheme)
    if all(v != 0 for v, _, _ in entries):
        entries.insert(0, (0, "Unknown", (0, 0, 0, 0)))
    for value, name, (r, g, b, _a) in entries:
        lines.append(f"{value:<4} {name:<40} {r:>4} {g:>4} {b:>4}    0")
    with atomic_output(target) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


def read_freesurfer_lut(path: PathLike) -> dict:
    """Parse a FreeSurferColorLUT-format file -> ``{number: (name, (r, g, b))}``.

    >>> import tempfile, pathlib
    >>> p = write_freesurfer_lut(pathlib.Path(tempfile.mkdtemp()) / "l.txt", scheme="fs33")
    >>> read_freesurfer_lut(p)[53]
    ('Right-Hippocampus', (220, 216, 20))
    """
    out = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if not parts or parts[0].startswith("#") or len(parts) < 5:
            continue
        out[int(parts[0])] = (parts[1], (int(parts[2]), int(parts[3]), int(parts[4])))
    return out


def read_label_table(path: PathLike) -> Tuple[Dict[int, str], Dict[int, Tuple[int, int, int]]]:
    """``(names, colours)`` by label value of a label table: a Slicer colour-table CSV (``LabelValue,
    Name, Color_R, Color_G, Color_B``...) or a FreeSurfer LUT (``value name r g b a`` lines).
    :class:`~brainfm.errors.InputError` naming the file when it is neither or has no label.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "mine.csv"
    >>> _ = p.write_text("LabelValue,Name,Color_R,Color_G,Color_B,Color_A\\n1,Lesion,255,0,0,255\\n")
    >>> read_label_table(p)
    ({1: 'Lesion'}, {1: (255, 0, 0)})
    """
    from brainfm.errors import InputError

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the label table {p}: {exc}") from None
    names: Dict[int, str] = {}
    colors: Dict[int, Tuple[int, int, int]] = {}
    try:
        if p.suffix.lower() == ".csv":
            for row in csv.DictReader(text.splitlines()):
                v = int(row["LabelValue"])
                names[v] = str(row.get("Name") or f"Label {v}")
                colors[v] = tuple(int(float(row[f"Color_{c}"])) for c in "RGB")  # type: ignore[assignment]
        else:
            for v, (name, rgb) in read_freesurfer_lut(p).items():
                names[v], colors[v] = name, tuple(rgb)  # type: ignore[assignment]
    except (KeyError, ValueError, TypeError) as exc:
        raise InputError(f"{p} is not a label table (a Slicer colour-table CSV or a FreeSurfer LUT): {exc}") from None
    names.pop(0, None)
    colors.pop(0, None)
    if not names:
        raise InputError(f"the label table {p} has no label besides the background")
    return names, colors


def scheme_table(scheme: Union[str, LabelScheme]) -> List[dict]:
    """Rows ``{channel, value, fs_value, name, color, lr_partner}`` describing a scheme."""
    sch: Optional[LabelScheme] = get_scheme(scheme) if isinstance(scheme, str) else scheme
    assert sch is not None
    return [
        {"channel": c, "value": sch.values[c], "fs_value": sch.fs_values[c], "name": sch.names[c],
         "color": list(sch.colors[c]), "lr_partner": sch.lr_partner[c]}
        for c in range(sch.n_channels)
    ]
