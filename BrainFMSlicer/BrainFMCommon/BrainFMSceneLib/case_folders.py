"""Open a case folder of ``brainfm run`` in the scene: the scan it was made from, and its results.

After a batch on the command line (``brainfm run scans/ -o out/``), a case is reviewed in Slicer with
its segmentation named and coloured as FreeSurfer does, its structure-volume table and its other
results, all placed on the scan: e.g. the cases that ``out/seg_volumes_all.csv`` flags in its
``checks`` column.

>>> import json, tempfile
>>> case = Path(tempfile.mkdtemp()) / "sub-07"
>>> case.mkdir()
>>> _ = (case / "summary.json").write_text(json.dumps({"input": {"path": "/scans/sub-07.nii.gz"}, "outputs": {}}))
>>> case_input_path(case).as_posix()            # where the scan was when the case was made
'/scans/sub-07.nii.gz'
>>> loaded = load_case_folder(slicer.mrmlScene, "out/sub-07")  # doctest: +SKIP
>>> loaded.input_node.GetName(), sorted(loaded.results.nodes)  # doctest: +SKIP
('sub-07', ['seg', 'seg_volumes', 'synth_t1'])
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from BrainFMSceneLib._errors import InputError
from BrainFMSceneLib.results import ImportedResults, find_case_dir, import_results, read_summary
from BrainFMSceneLib.scene_utils import remove_nodes
from BrainFMSceneLib.volume_files import import_volume_file

PathLike = Union[str, "Path"]


@dataclass
class LoadedCase:
    """What :func:`load_case_folder` put in the scene: the scan (``input_node``) and its results."""

    input_node: Any
    results: ImportedResults


def case_input_path(case_dir: PathLike, *, summary: Optional[dict] = None) -> Path:
    """The scan a case folder was made from, as its ``summary.json`` records it (``input.path``;
    ``summary``: that file, when already read).

    Raises :class:`InputError` naming the folder when the summary does not say.
    """
    folder = find_case_dir(case_dir)
    recorded = ((read_summary(folder) if summary is None else summary).get("input") or {}).get("path")
    if not recorded:
        raise InputError(f"{folder / 'summary.json'} does not name the scan the case was made from; "
                         "give the scan (input_path=) or its volume node (input_node=)")
    return Path(str(recorded))


def load_case_folder(scene: Any, case_dir: PathLike, *, input_node: Any = None,
                     input_path: Optional[PathLike] = None) -> LoadedCase:
    """Load a ``brainfm run`` case folder: the scan and every result of it (see the module docstring).

    :param case_dir: the case folder (``out/<case>``), or an output folder holding a single case.
    :param input_node: the scan's volume node when it is already in the scene (nothing else is loaded).
    :param input_path: the scan's file when it has moved since the run (default: the path its
        ``summary.json`` records).
    :return: the scan's node and the imported results (``results.nodes`` by output key).
    :raises InputError: naming the file, when the scan is not where it is expected or is a DICOM folder
        (load the series in Slicer first and pass its node); nothing is left in the scene then.
    """
    folder = find_case_dir(case_dir)
    created = None
    if input_node is None:
        summary = read_summary(folder)
        path = Path(input_path) if input_path is not None else case_input_path(folder, summary=summary)
        if path.is_dir():
            raise InputError(f"the case was made from the DICOM folder {path}: load the series in Slicer (DICOM "
                             "module) and pass its volume node as input_node")
        if not path.is_file():
            raise InputError(f"the scan of case {folder.name} is not at {path} (moved or on another computer); "
                             "give its new place (input_path=) or its volume node (input_node=)")
        created = input_node = import_volume_file(scene, path, name=str(summary.get("case") or folder.name))
    try:
        results = import_results(scene, folder, input_node)
    except Exception:
        if created is not None:
            remove_nodes(scene, [created])
        raise
    return LoadedCase(input_node, results)
