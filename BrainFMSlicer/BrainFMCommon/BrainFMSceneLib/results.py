"""Import a ``brainfm run`` case folder (``summary.json`` + ``<key>.nii.gz``) into MRML nodes.

Which output goes to which node (names ``"<input> <task>"``):

=====================  ===========================================================
``synth_*``, ``superres``, ``dist_*``, ``bias_*``, ``atlas_warped``  scalar volume on the input grid
``subject_in_atlas``   scalar volume on the atlas grid
``seg``                segmentation node (+ optional labelmap node)
``seg_volumes``        table node (Label, Name, Voxels, Volume (mm3))
``reg_displacement``   grid transform node (FromParent: subject point -> atlas point)
``features``, ``seg_probabilities``, ``reg_atlas_coords``  vector volumes, only when asked for
=====================  ===========================================================

Existing nodes passed in ``output_nodes`` are updated in place (they keep their identity);
nodes created by a failed import are removed again, so the scene stays consistent. A new volume in
Hounsfield units (``synth_ct``) is shown in the brain window (window 80, level 40 HU).

>>> from BrainFMSceneLib.results import output_display_name
>>> output_display_name("MRHead", "seg")
'MRHead segmentation'
"""
from __future__ import annotations

import json
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from BrainFMSceneLib._errors import InputError
from BrainFMSceneLib.scene_utils import place_next_to, remove_nodes
from BrainFMSceneLib.segmentation_nodes import SegmentationImport, add_segmentation_from_labels
from BrainFMSceneLib.table_nodes import add_structure_table, rows_from_csv, structure_rows
from BrainFMSceneLib.transform_nodes import displacement_to_grid_transform
from BrainFMSceneLib.volume_files import import_volume_file, read_volume_file

PathLike = Union[str, Path]

#: output key -> human-readable task name used in node names
OUTPUT_LABELS: Dict[str, str] = {
    "synth_t1": "synthetic T1w", "synth_t2": "synthetic T2w", "synth_flair": "synthetic FLAIR",
    "synth_ct": "synthetic CT", "superres": "super-resolution", "seg": "segmentation",
    "seg_volumes": "structure volumes", "seg_probabilities": "segmentation probabilities",
    "dist_lp": "distance left pial", "dist_lw": "distance left white",
    "dist_rp": "distance right pial", "dist_rw": "distance right white",
    "bias_field": "bias field", "bias_corrected": "bias corrected",
    "reg_displacement": "to atlas transform", "reg_atlas_coords": "atlas coordinates",
    "atlas_warped": "atlas warped", "subject_in_atlas": "in atlas space", "features": "features",
}
#: outputs that are large or rarely wanted in the scene; imported only when listed in ``keys``
OPTIONAL_KEYS = ("features", "seg_probabilities", "reg_atlas_coords")
#: outputs not on the input grid
ATLAS_GRID_KEYS = ("subject_in_atlas",)


def output_display_name(input_name: str, key: str) -> str:
    """Node name for output ``key`` of input ``input_name``: ``"<input> <task>"``."""
    return f"{input_name} {OUTPUT_LABELS.get(key, key)}".strip()


@dataclass
class ImportedResults:
    """Nodes created or updated by :func:`import_results`, by output key."""

    nodes: Dict[str, Any] = field(default_factory=dict)
    segmentation: Optional[SegmentationImport] = None
    summary: Dict[str, Any] = field(default_factory=dict)
    skipped: List[str] = field(default_factory=list)


def find_case_dir(out_dir: PathLike) -> Path:
    """The folder holding ``summary.json``: ``out_dir`` itself or its only case sub-folder."""
    out = Path(out_dir)
    if (out / "summary.json").is_file():
        return out
    cases = sorted(p.parent for p in out.glob("*/summary.json"))
    if len(cases) == 1:
        return cases[0]
    if not cases:
        raise InputError(f"no BrainFM results (summary.json) found in {out}")
    raise InputError(f"{len(cases)} cases found in {out}; pass one case folder")


def read_summary(case_dir: PathLike) -> Dict[str, Any]:
    """Parse ``summary.json``; raises :class:`InputError` when missing or malformed."""
    path = Path(case_dir) / "summary.json"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"summary.json not found in {case_dir}") from None
    except ValueError as exc:
        raise InputError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("outputs"), dict):
        raise InputError(f"{path} has no 'outputs' mapping")
    return summary


class _FileReader:
    """Reads result files on one worker thread, one file ahead of the importer.

    Decompressing the next ``.nii.gz`` (zlib releases the GIL) then overlaps with building the
    current node on the calling thread. ``get`` must be called in the order of ``jobs``.
    """

    def __init__(self, jobs: List[Tuple[str, Path, bool]]) -> None:
        self._jobs = list(jobs)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="BrainFM-read")
        self._futures: Dict[str, Future] = {}
        self._next = 0
        self._fill()

    def _fill(self) -> None:
        while self._next < len(self._jobs) and len(self._futures) < 2:  # the current file + one ahead
            key, path, labelmap = self._jobs[self._next]
            self._futures[key] = self._pool.submit(read_volume_file, path, labelmap=labelmap)
            self._next += 1

    def get(self, key: str) -> Tuple[Any, Any]:
        """``(array, affine)`` of ``key``'s file (raises what ``read_volume_file`` raised)."""
        future = self._futures.pop(key)
        try:
            return future.result()
        finally:
            self._fill()

    def close(self) -> None:
        """Drop reads not started yet and wait for the one in progress."""
        for future in self._futures.values():
            future.cancel()
        self._futures.clear()
        self._pool.shutdown(wait=True)


def _output_path(case_dir: Path, key: str, info: Mapping[str, Any]) -> Path:
    raw = info.get("path") if isinstance(info, Mapping) else None
    path = Path(raw) if raw else case_dir / f"{key}.nii.gz"
    return path if path.is_absolute() else case_dir / path


def _set_units(node: Any, units: Optional[str]) -> None:
    if units:
        node.SetAttribute("BrainFM.Units", str(units))


#: window and level (HU) of a new volume in Hounsfield units (a synthetic CT): the brain window, as
#: Slicer's CT-Brain preset draws a head CT; the automatic window of an image whose air is -1000 HU
#: shows the brain white
CT_BRAIN_WINDOW_LEVEL = (80.0, 40.0)


def _set_display(node: Any, units: Optional[str]) -> None:
    """The grey scale a new node is shown in: the brain window for Hounsfield units, else Slicer's own."""
    display = node.GetDisplayNode()
    if units == "HU" and display is not None and hasattr(display, "SetWindowLevel"):
        display.AutoWindowLevelOff()
        display.SetWindowLevel(*CT_BRAIN_WINDOW_LEVEL)


def own_label_table(scene: Any, case_dir: Path, summary: Mapping[str, Any], info: Mapping[str, Any]) -> Any:
    """The colour-table node of a segmentation of a model's own labels (a model fine-tuned for labels of
    the user's own: the case folder holds their names and colours, ``info["label_table"]``), one per
    model; None for FreeSurfer's labels (the engine's table)."""
    table = info.get("label_table")
    if not table:
        return None
    from BrainFMSceneLib.label_tables import load_color_table_node

    model = summary.get("model") or {}
    name = f"{model.get('name') or 'model'} labels ({str(model.get('sha256') or '')[:8]})"
    return load_color_table_node(scene, csv_path=case_dir / str(table), name=name)


def import_results(scene: Any, out_dir: PathLike, input_node: Any, *, keys: Optional[Iterable[str]] = None,
                   output_nodes: Optional[Mapping[str, Any]] = None, create_labelmap: bool = False,
                   csv_path: Optional[PathLike] = None) -> ImportedResults:
    """Load the outputs of one case into the scene next to ``input_node``.

    :param out_dir: the ``-o`` folder of ``brainfm run`` (or the case folder itself).
    :param input_node: the volume the run was made from (geometry reference, names, SH folder).
    :param keys: output keys to import (default: every output except ``OPTIONAL_KEYS``);
        ``"seg_labelmap"`` asks for the labelmap node that comes with ``seg``.
    :param output_nodes: ``{key: node}`` of existing nodes to fill in place; ``"seg_labelmap"``
        names a labelmap node for the segmentation.
    :param create_labelmap: also create a labelmap node for ``seg``.
    :param csv_path: explicit label table CSV (default: the engine's table).
    """
    case_dir = find_case_dir(out_dir)
    summary = read_summary(case_dir)
    outputs: Dict[str, Any] = dict(summary["outputs"])
    if (case_dir / "seg_volumes.csv").is_file() and "seg_volumes" not in outputs:
        outputs["seg_volumes"] = {"path": "seg_volumes.csv", "kind": "table", "units": "mm3"}
    wanted = list(outputs) if keys is None else [k for k in keys]
    if "seg_labelmap" in wanted:  # not a file of its own: the labelmap comes with "seg"
        wanted = [k for k in wanted if k != "seg_labelmap"]
        create_labelmap = True
        if "seg" not in wanted:
            wanted.append("seg")
    if keys is None:
        wanted = [k for k in wanted if k not in OPTIONAL_KEYS]
    missing = [k for k in wanted if k not in outputs]
    if missing and keys is not None:
        raise InputError(f"the run did not produce {', '.join(missing)} (found: {', '.join(sorted(outputs))})")
    given = dict(output_nodes or {})
    base = input_node.GetName() or "volume"
    result = ImportedResults(summary=summary)
    created: List[Any] = []

    def new_or_given(key: str, node: Any) -> Any:
        if given.get(key) is None:
            created.append(node)
        result.nodes[key] = node
        return node

    reads: List[Tuple[str, Path, bool]] = []
    for key in wanted:
        info = outputs[key] if isinstance(outputs[key], Mapping) else {}
        kind = info.get("kind", "image")
        if kind != "table" and key != "seg_volumes":
            reads.append((key, _output_path(case_dir, key, info), kind == "labelmap" or key == "seg"))
    reader = _FileReader(reads)
    try:
        for key in wanted:
            info = outputs[key] if isinstance(outputs[key], Mapping) else {}
            kind = info.get("kind", "image")
            path = _output_path(case_dir, key, info)
            name = output_display_name(base, key)
            if kind == "table" or key == "seg_volumes":
                continue  # after the segmentation (rows may be computed from it)
            if kind == "labelmap" or key == "seg":
                labels, affine = reader.get(key)
                seg = add_segmentation_from_labels(
                    scene, labels, affine, name=name, reference_node=input_node,
                    segmentation_node=given.get(key), create_labelmap=create_labelmap,
                    labelmap_node=given.get("seg_labelmap"), csv_path=csv_path,
                    color_node=None if csv_path is not None else own_label_table(scene, case_dir, summary, info))
                result.segmentation = seg
                new_or_given(key, seg.segmentation_node)
                if seg.labelmap_node is not None:
                    new_or_given("seg_labelmap", seg.labelmap_node)
                continue
            if key == "reg_displacement":
                field_, affine = reader.get(key)
                node = displacement_to_grid_transform(scene, field_, affine, name, node=given.get(key),
                                                      reference_node=input_node)
                new_or_given(key, node)
                continue
            on_input_grid = key not in ATLAS_GRID_KEYS
            node = import_volume_file(scene, path, name=name, reference_node=input_node if on_input_grid else None,
                                      node=given.get(key), data=reader.get(key))
            _set_units(node, info.get("units"))
            if given.get(key) is None:  # a node of the user's keeps its display settings
                _set_display(node, info.get("units"))
            place_next_to(node, input_node)
            new_or_given(key, node)
        if "seg_volumes" in wanted:
            info = outputs["seg_volumes"] if isinstance(outputs["seg_volumes"], Mapping) else {}
            path = _output_path(case_dir, "seg_volumes", {"path": info.get("path") or "seg_volumes.csv"})
            if path.is_file():
                rows = rows_from_csv(path)
            elif result.segmentation is not None:
                labels, affine = read_volume_file(_output_path(case_dir, "seg", outputs.get("seg", {})), labelmap=True)
                names = {v: s.GetName() for v, s in _segments_by_value(result.segmentation.segmentation_node).items()}
                rows = structure_rows(labels, affine, names=names)
            else:
                raise InputError(f"structure volumes table not found: {path}")
            node = add_structure_table(scene, rows, name=output_display_name(base, "seg_volumes"),
                                       node=given.get("seg_volumes"), reference_node=input_node)
            new_or_given("seg_volumes", node)
    except Exception:
        remove_nodes(scene, created)
        raise
    finally:
        reader.close()
    return result


def _segments_by_value(segmentation_node: Any) -> Dict[int, Any]:
    seg = segmentation_node.GetSegmentation()
    return {int(seg.GetNthSegment(i).GetLabelValue()): seg.GetNthSegment(i) for i in range(seg.GetNumberOfSegments())}
