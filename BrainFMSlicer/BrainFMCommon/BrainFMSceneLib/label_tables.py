"""Label names, colors and terminology for BrainFM label maps (FreeSurfer numbers).

Source of truth, in order: an explicit Slicer color-table CSV; the table exported by the engine
(``brainfm.labels.write_slicer_color_csv``) when ``brainfm`` is importable; the CSV shipped in the
common module's ``Resources`` folder. The CSV is the Slicer >= 5.10 color-table format
(``LabelValue,Name,Color_R,Color_G,Color_B,Color_A`` + optional terminology columns
``Category_*``, ``Type_*``, ``TypeModifier_*``, ``Region_*``, ``RegionModifier_*`` with
``_CodingScheme``, ``_CodeValue``, ``_CodeMeaning``).

>>> import tempfile, os
>>> from BrainFMSceneLib.label_tables import read_color_csv
>>> path = os.path.join(tempfile.mkdtemp(), "t.csv")
>>> _ = open(path, "w").write("LabelValue,Name,Color_R,Color_G,Color_B,Color_A\\n17,Left-Hippocampus,220,216,20,255\\n")
>>> e = read_color_csv(path)[17]
>>> e.name, e.rgba_255
('Left-Hippocampus', (220, 216, 20, 255))
"""
from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from BrainFMSceneLib._errors import InputError

PathLike = Union[str, Path]
#: Attribute set on color-table nodes created here (so repeated imports reuse one node).
COLOR_NODE_ATTRIBUTE = "BrainFM.LabelTable"
#: File name of the table shipped with the Slicer module (``BrainFMCommon/Resources``).
RESOURCE_CSV_NAME = "BrainFMLabels.csv"
_TERM_PARTS = ("Category", "Type", "TypeModifier", "Region", "RegionModifier")


@dataclass(frozen=True)
class LabelEntry:
    """One label: FreeSurfer ``value``, ``name``, RGBA color in 0..1 and a terminology string.

    ``terminology`` uses Slicer's serialisation
    ``context~category~type~typeModifier~anatomicContext~region~regionModifier`` where each coded
    part is ``scheme^value^meaning``; empty when the table has no codes for the label.
    """

    value: int
    name: str
    color: Tuple[float, float, float, float]
    terminology: str = ""

    @property
    def rgba_255(self) -> Tuple[int, int, int, int]:
        return tuple(int(round(c * 255)) for c in self.color)  # type: ignore[return-value]

    @property
    def has_codes(self) -> bool:
        """True when the terminology names a coded type (e.g. SNOMED CT)."""
        parts = self.terminology.split("~")
        return len(parts) > 2 and parts[2].strip("^") != ""


def _code(row: Dict[str, str], part: str) -> str:
    vals = [(row.get(f"{part}_{k}") or "").strip() for k in ("CodingScheme", "CodeValue", "CodeMeaning")]
    return "^".join(vals)


def terminology_string(row: Dict[str, str], *, context: str = "") -> str:
    """Slicer terminology string from the ``Category_*``/``Type_*``/... columns of one CSV row."""
    cat, typ, mod, reg, regmod = (_code(row, p) for p in _TERM_PARTS)
    return "~".join([context, cat, typ, mod, "", reg, regmod])


def read_color_csv(path: PathLike) -> Dict[int, LabelEntry]:
    """Parse a Slicer color-table CSV into ``{value: LabelEntry}`` (pure Python, no Slicer needed).

    Raises :class:`InputError` when the file misses ``LabelValue``/``Name``/color columns or holds
    a non-integer label value.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"label table not found: {path}")
    entries: Dict[int, LabelEntry] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        needed = {"LabelValue", "Name", "Color_R", "Color_G", "Color_B"}
        missing = needed - set(reader.fieldnames or [])
        if missing:
            raise InputError(f"{path.name} is not a Slicer color table CSV (missing columns {sorted(missing)})")
        for line_no, row in enumerate(reader, start=2):
            try:
                value = int(str(row["LabelValue"]).strip())
                rgba = [int(float(row[k])) for k in ("Color_R", "Color_G", "Color_B")]
                rgba.append(int(float(row.get("Color_A") or 255)))
            except (TypeError, ValueError) as exc:
                raise InputError(f"{path.name} line {line_no}: bad label value or color ({exc})") from None
            entries[value] = LabelEntry(value, (row.get("Name") or f"Label {value}").strip(),
                                        tuple(c / 255.0 for c in rgba),  # type: ignore[arg-type]
                                        terminology_string(row))
    return entries


def resource_csv_path() -> Optional[Path]:
    """The CSV shipped in the common module's Resources folder, if present."""
    common = Path(__file__).resolve().parents[1]
    for candidate in (common / "Resources" / RESOURCE_CSV_NAME,
                      common / "Resources" / "ColorTables" / RESOURCE_CSV_NAME):
        if candidate.is_file():
            return candidate
    return None


def engine_csv_path(directory: PathLike, *, scheme: Optional[str] = None) -> Optional[Path]:
    """Write the engine's table (``brainfm.labels``) into ``directory``; None without brainfm."""
    try:
        from brainfm.labels import write_slicer_color_csv
    except ImportError:
        return None
    out = Path(directory) / RESOURCE_CSV_NAME
    result = write_slicer_color_csv(out, scheme=scheme) if scheme else write_slicer_color_csv(out)
    return Path(result) if result else out


def resolve_csv(directory: PathLike, *, csv_path: Optional[PathLike] = None) -> Path:
    """The label table to use: explicit path > engine export into ``directory`` > Resources CSV."""
    if csv_path is not None:
        return Path(csv_path)
    path = engine_csv_path(directory)
    if path is not None and path.is_file():
        return path
    path = resource_csv_path()
    if path is None:
        raise InputError(
            "No label table available: install the brainfm package or restore "
            f"BrainFMCommon/Resources/{RESOURCE_CSV_NAME}.")
    return path


def load_color_table_node(scene: Any, *, csv_path: Optional[PathLike] = None,
                          name: str = "BrainFM labels", reuse: bool = True) -> Any:
    """A ``vtkMRMLColorTableNode`` holding the label table (names, colors, terminology).

    An existing BrainFM color node with the same ``name`` is reused when ``reuse``.
    """
    import slicer

    from BrainFMSceneLib.volume_files import private_temp_dir

    if reuse:
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode")):
            node = scene.GetNthNodeByClass(i, "vtkMRMLColorTableNode")
            if node.GetAttribute(COLOR_NODE_ATTRIBUTE) == "1" and node.GetName() == name:
                return node
    tmp = private_temp_dir()
    try:
        path = resolve_csv(tmp, csv_path=csv_path)
        read_color_csv(path)  # clear error for a malformed file before VTK logs its own
        node = slicer.vtkMRMLColorTableNode()
        node.SetName(name)
        node.SetAttribute(COLOR_NODE_ATTRIBUTE, "1")
        scene.AddNode(node)
        storage = slicer.vtkMRMLColorTableStorageNode()
        storage.SetFileName(str(path))
        if not storage.ReadData(node):
            scene.RemoveNode(node)
            raise InputError(f"Slicer could not read the label table {path}")
        node.SetName(name)
        return node
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def entries_from_color_node(color_node: Any) -> Dict[int, LabelEntry]:
    """``{value: LabelEntry}`` for every defined color of a color-table node (value 0 skipped)."""
    entries: Dict[int, LabelEntry] = {}
    for value in range(1, color_node.GetNumberOfColors()):
        if hasattr(color_node, "GetColorDefined") and not color_node.GetColorDefined(value):
            continue
        rgba = [0.0, 0.0, 0.0, 0.0]
        color_node.GetColor(value, rgba)
        term = color_node.GetTerminologyAsString(value) if hasattr(color_node, "GetTerminologyAsString") else ""
        entries[value] = LabelEntry(value, color_node.GetColorName(value), tuple(rgba), term)  # type: ignore[arg-type]
    return entries
