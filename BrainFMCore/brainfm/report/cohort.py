"""One table of structure volumes for every case of an output folder, ready for statistics.

``brainfm run scans/ -o out/`` writes each case's ``seg_volumes.csv`` into its own folder. The cohort
table gathers them: one row per case folder of ``out/`` (a folder holding ``summary.json`` and
``seg_volumes.csv``), one column per structure (FreeSurfer name, volume in mm³; 0 when the case has
none of it), in label order. Columns before the structures say what made each row, because a folder
may hold cases from several runs: ``case``, ``model`` (name and version), ``model_sha256``,
``seg_method`` (how the labels were made, as the case's ``summary.json`` says) and ``output_frame``
(``input``: volumes measured on the scan's grid, ``1mm``: on the 1 mm grid), and ``checks``: what
:func:`brainfm.labels.checks.volume_checks` finds implausible in the case's volumes (a missing
structure, a lopsided hemisphere, a labelled volume no brain has), empty when nothing. The last column,
``Labelled-Total``, is the sum of every structure: brain, ventricles and the CSF around the brain, an
estimate of the intracranial volume on a whole-head scan (not on a skull-stripped one, whose outer CSF
is gone).

>>> import tempfile, json
>>> from pathlib import Path
>>> out = Path(tempfile.mkdtemp())
>>> wm = "2,Left-Cerebral-White-Matter,1,{}\\n41,Right-Cerebral-White-Matter,1,{}\\n17,Left-Hippocampus,1,{}\\n"
>>> for case, rows in {"sub-01": wm.format(250e3, 260e3, 4e3), "sub-02": wm.format(240e3, 250e3, 0.0)}.items():
...     (out / case).mkdir()
...     _ = (out / case / "summary.json").write_text(json.dumps({"case": case, "model": {"name": "m", "version": "1"}}))
...     _ = (out / case / "seg_volumes.csv").write_text("value,name,voxels,volume_mm3\\n" + rows)
>>> path = write_cohort_table(out)
>>> print(path.read_text().strip())
case,model,model_sha256,seg_method,output_frame,checks,Left-Cerebral-White-Matter,Left-Hippocampus,Right-Cerebral-White-Matter,Labelled-Total
sub-01,m 1,,,,,250000.0,4000.0,260000.0,514000.0
sub-02,m 1,,,,Left-Hippocampus found nowhere,240000.0,0.0,250000.0,490000.0
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

COHORT_TABLE = "seg_volumes_all.csv"  #: the table's file name in the output folder
TOTAL_COLUMN = "Labelled-Total"
_CASE_COLUMNS = ("case", "model", "model_sha256", "seg_method", "output_frame", "checks")

PathLike = Union[str, Path]


def case_volumes(case_dir: PathLike) -> Optional[Dict[str, Any]]:
    """What one case folder says: ``{"case", "model", "model_sha256", "seg_method", "output_frame", "checks",
    "volumes": {(value, name): mm³}}``, or None when it holds no ``summary.json`` and ``seg_volumes.csv``
    (not a segmented case). Raises :class:`~brainfm.errors.InputError` naming the file when one of
    them cannot be read."""
    from brainfm.errors import InputError
    from brainfm.labels.checks import volume_checks
    from brainfm.report.save import SUMMARY_NAME
    from brainfm.report.summary import read_summary

    folder = Path(case_dir)
    summary_path, table_path = folder / SUMMARY_NAME, folder / "seg_volumes.csv"
    if not (summary_path.is_file() and table_path.is_file()):
        return None
    summary = read_summary(summary_path)
    try:
        with open(table_path, newline="", encoding="utf-8") as f:
            volumes = {(int(r["value"]), str(r["name"])): float(r["volume_mm3"]) for r in csv.DictReader(f)}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{table_path}: cannot be read as a structure-volume table (value, name, voxels, "
                         f"volume_mm3): {exc!r}") from None
    model = summary.get("model") or {}
    meta = summary.get("metadata") or {}
    own_labels = isinstance(model.get("label_scheme"), dict)  # a user's own labels: no anatomy to check
    return {"case": str(summary.get("case") or folder.name),
            "model": " ".join(str(model[k]) for k in ("name", "version") if model.get(k)),
            "model_sha256": str(model.get("sha256") or ""),
            "seg_method": str(meta.get("seg_method") or ""),
            "output_frame": str(meta.get("output_frame") or ""),
            "checks": "" if own_labels else "; ".join(volume_checks({v: mm3 for (v, _), mm3 in volumes.items()})),
            "volumes": volumes}


def cohort_rows(out_root: PathLike) -> Tuple[List[str], List[Dict[str, Any]]]:
    """``(columns, rows)`` of the cohort table of ``out_root`` (see the module docstring); cases in the
    order of their folder names."""
    cases = [c for c in (case_volumes(d) for d in sorted(Path(out_root).iterdir()) if d.is_dir()) if c is not None]
    structures = sorted({key for c in cases for key in c["volumes"]})
    names = [name for _, name in structures]
    rows = []
    for c in cases:
        row: Dict[str, Any] = {k: c[k] for k in _CASE_COLUMNS}
        row.update({name: round(c["volumes"].get(key, 0.0), 3) for key, name in zip(structures, names)})
        row[TOTAL_COLUMN] = round(sum(c["volumes"].values()), 3)
        rows.append(row)
    return [*_CASE_COLUMNS, *names, TOTAL_COLUMN], rows


def write_cohort_table(out_root: PathLike, *, path: Optional[PathLike] = None,
                       table: Optional[Tuple[List[str], List[Dict[str, Any]]]] = None) -> Optional[Path]:
    """Write the cohort table of ``out_root`` (default ``out_root/seg_volumes_all.csv``, replaced
    atomically; ``table``: its :func:`cohort_rows`, when already read); returns its path, or None (nothing
    written) when no case folder holds structure volumes."""
    from brainfm.io.atomic import atomic_output

    columns, rows = cohort_rows(out_root) if table is None else table
    if not rows:
        return None
    target = Path(path) if path is not None else Path(out_root) / COHORT_TABLE
    with atomic_output(target) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
    return target
