"""Structure volumes -> ``vtkMRMLTableNode`` (columns Label, Name, Voxels, Volume (mm3)).

Rows come from the engine's ``seg_volumes.csv`` (:func:`rows_from_csv`), from
``Prediction.tables["seg_volumes"]`` (dicts with ``value, name, voxels, volume_mm3``) or are
computed here from a label array (:func:`structure_rows`).

>>> import numpy as np, slicer
>>> from BrainFMSceneLib.table_nodes import structure_rows, add_structure_table
>>> lab = np.zeros((4, 4, 4), np.int32); lab[:2] = 17
>>> rows = structure_rows(lab, np.diag([2.0, 1.0, 1.0, 1.0]), names={17: "Left-Hippocampus"})
>>> rows[0]["volume_mm3"]
64.0
>>> node = add_structure_table(slicer.vtkMRMLScene(), rows, name="volumes")
>>> node.GetCellText(0, 1)
'Left-Hippocampus'
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from BrainFMSceneLib._errors import InputError
from BrainFMSceneLib.scene_utils import place_next_to

COLUMNS = ("Label", "Name", "Voxels", "Volume (mm3)")
_ALIASES = {
    "value": ("value", "label", "Label", "LabelValue", "label_value"),
    "name": ("name", "Name", "structure", "Structure"),
    "voxels": ("voxels", "Voxels", "n_voxels", "count"),
    "volume_mm3": ("volume_mm3", "Volume (mm3)", "volume", "Volume", "volume_mm^3"),
}


def _pick(row: Mapping[str, Any], key: str) -> Any:
    for alias in _ALIASES[key]:
        if alias in row and row[alias] not in (None, ""):
            return row[alias]
    raise InputError(f"structure-volume row has no {key!r} column (got {sorted(row)})")


def normalize_rows(rows: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Rows as ``{value:int, name:str, voxels:int, volume_mm3:float}``, sorted by label value."""
    out = []
    for row in rows:
        out.append({
            "value": int(float(_pick(row, "value"))),
            "name": str(_pick(row, "name")),
            "voxels": int(float(_pick(row, "voxels"))),
            "volume_mm3": float(_pick(row, "volume_mm3")),
        })
    return sorted(out, key=lambda r: r["value"])


def rows_from_csv(path: Union[str, Path]) -> List[Dict[str, Any]]:
    """Read the engine's ``seg_volumes.csv`` (lines starting with ``#`` are ignored)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"structure volume table not found: {path}")
    with open(path, newline="", encoding="utf-8") as fh:
        lines = [ln for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
    return normalize_rows(list(csv.DictReader(lines)))


def structure_rows(labels_ijk: Any, affine: Any, *, names: Optional[Mapping[int, str]] = None,
                   include_background: bool = False) -> List[Dict[str, Any]]:
    """Voxel counts and volumes (mm^3 = count * |det affine|) of every label present."""
    lab = np.asarray(labels_ijk)
    if lab.ndim != 3:
        raise InputError(f"a label map must be 3D, got shape {lab.shape}")
    voxel_mm3 = float(abs(np.linalg.det(np.asarray(affine, float)[:3, :3])))
    values, counts = np.unique(lab.astype(np.int64), return_counts=True)
    names = names or {}
    rows = []
    for v, c in zip(values.tolist(), counts.tolist()):
        if v == 0 and not include_background:
            continue
        rows.append({"value": int(v), "name": names.get(int(v), f"Label {v}"), "voxels": int(c),
                     "volume_mm3": float(c) * voxel_mm3})
    return rows


def add_structure_table(scene: Any, rows: Sequence[Mapping[str, Any]], *, name: str,
                        node: Any = None, reference_node: Any = None) -> Any:
    """Fill ``node`` (or a new ``vtkMRMLTableNode``) with one row per structure.

    Columns: ``Label`` (int), ``Name`` (string), ``Voxels`` (int), ``Volume (mm3)`` (double,
    unit label ``mm3``). The table is placed next to ``reference_node`` in the subject hierarchy.
    """
    import vtk

    data = normalize_rows(rows)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    table = vtk.vtkTable()
    columns = [vtk.vtkIntArray(), vtk.vtkStringArray(), vtk.vtkIntArray(), vtk.vtkDoubleArray()]
    for col, title in zip(columns, COLUMNS):
        col.SetName(title)
        col.SetNumberOfValues(len(data))
        table.AddColumn(col)
    for r, row in enumerate(data):
        columns[0].SetValue(r, row["value"])
        columns[1].SetValue(r, row["name"])
        columns[2].SetValue(r, row["voxels"])
        columns[3].SetValue(r, row["volume_mm3"])
    was = node.StartModify()
    try:
        node.SetAndObserveTable(table)
        node.SetUseColumnTitleAsColumnHeader(True)
        node.SetLocked(True)
        descriptions = ("FreeSurfer label number", "Structure name", "Number of voxels",
                        "Structure volume")
        for title, text in zip(COLUMNS, descriptions):
            node.SetColumnDescription(title, text)
        node.SetColumnUnitLabel("Volume (mm3)", "mm3")
        node.SetColumnUnitLabel("Voxels", "voxels")
    finally:
        node.EndModify(was)
    if reference_node is not None:
        place_next_to(node, reference_node)
    return node


def table_rows(node: Any) -> List[Dict[str, Any]]:
    """Read a table made by :func:`add_structure_table` back as normalized rows."""
    table = node.GetTable()
    cols = {table.GetColumnName(c): table.GetColumn(c) for c in range(table.GetNumberOfColumns())}
    missing = [c for c in COLUMNS if c not in cols]
    if missing:
        raise InputError(f"table {node.GetName()!r} lacks columns {missing}")
    return [{"value": int(cols["Label"].GetValue(r)), "name": str(cols["Name"].GetValue(r)),
             "voxels": int(cols["Voxels"].GetValue(r)), "volume_mm3": float(cols["Volume (mm3)"].GetValue(r))}
            for r in range(table.GetNumberOfRows())]
