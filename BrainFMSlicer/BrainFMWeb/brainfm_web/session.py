"""One user's work in the web app: the scan, one BrainFM run at a time, its results and case folder.

No trame and no Qt here: :class:`WebSession` works on any MRML scene (the trame-slicer scene of the
app, or a plain ``slicer.vtkMRMLScene`` in tests) and does every scene exchange through the
extension library ``BrainFMSceneLib``: the scan is read into a volume node with
``volume_files.import_volume_file``; a run is a ``job.BrainFMJob`` (export with exact geometry,
``python -m brainfm run ... --progress machine`` in a child process, progress, cancel, import of
volumes, the segmentation with FreeSurfer names/colors/terminology, the grid transform and the
structure-volume table). The page only reads what this class reports.

>>> import slicer, tempfile, pathlib
>>> from brainfm_web.files import AllowedFolders
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> session = WebSession(slicer.vtkMRMLScene(), workdir=root, allowed=AllowedFolders([root]))
>>> session.status, session.layers()
('idle', [])
"""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from BrainFMSceneLib._errors import BrainFMError, InputError
from BrainFMSceneLib.job import BrainFMJob, JobOutcome
from BrainFMSceneLib.label_tables import COLOR_NODE_ATTRIBUTE
from BrainFMSceneLib.parameters import RunParameters
from BrainFMSceneLib.results import find_case_dir
from BrainFMSceneLib.scene_utils import remove_nodes
from BrainFMSceneLib.segmentation_nodes import segment_summary
from BrainFMSceneLib.table_nodes import table_rows
from BrainFMSceneLib.volume_files import import_volume_file, safe_file_stem
from BrainFMSceneLib.volume_nodes import node_from_volume, volume_to_array_and_affine

from brainfm_web.files import UPLOAD_SUFFIXES, AllowedFolders, check_suffix, zip_case_folder
from brainfm_web.models import MODEL_SUFFIXES, model_options

PathLike = Union[str, "os.PathLike[str]"]
#: tasks offered in the page (``brainfm run --tasks`` names)
TASK_CHOICES = (("seg", "Segmentation"), ("t1", "Synthetic T1w"), ("t2", "Synthetic T2w"),
                ("flair", "Synthetic FLAIR"), ("ct", "Synthetic CT"), ("sr", "Super-resolution"),
                ("bias", "Bias field"), ("reg", "Atlas registration"), ("dist", "Cortical distance maps"))
DEVICE_CHOICES = ("auto", "cpu", "cuda")
#: read with the engine (nibabel), not with Slicer's archetype reader, which lacks them in slicer-core
ENGINE_READ_SUFFIXES = (".mgz", ".mgh")
#: node classes that hold data (compared before/after a run; the views' own nodes are left out)
DATA_NODE_CLASS = "vtkMRMLStorableNode"


class WebSession:
    """Scan, run and results of one web session.

    :param scene: the MRML scene shown by the page.
    :param workdir: private folder of this server (``cases/`` holds the last case folder).
    :param allowed: folders whose files may be opened by path (scans and models).
    :param python: interpreter of the child process (default: this one).
    :param extra_models: weights files named on the command line (trusted, not path-checked).
    """

    def __init__(self, scene: Any, *, workdir: PathLike, allowed: AllowedFolders, python: Optional[str] = None,
                 extra_models: Sequence[PathLike] = ()) -> None:
        self.scene = scene
        self.workdir = Path(workdir)
        self.allowed = allowed
        self.python = python
        self.extra_models = [str(Path(m).expanduser().resolve()) for m in extra_models]
        self.input_node: Any = None
        self.job: Optional[BrainFMJob] = None
        self.status = "idle"  # idle | running | completed | failed | cancelled
        self.progress = 0.0
        self.message = ""
        self.error = ""
        self.log: List[str] = []
        self.outputs: Dict[str, Any] = {}
        self.case_dir: Optional[Path] = None
        self.elapsed_s = 0.0
        self._started = 0.0
        self._labels: Optional[tuple] = None  # (array, ras->ijk, names) for label_at

    # -- scan --------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.status == "running"

    def open_volume(self, path: PathLike, *, name: Optional[str] = None) -> Any:
        """Load the scan at ``path`` (already checked) as the input volume, replacing the previous case."""
        if self.running:
            raise InputError("a BrainFM run is in progress: cancel it before opening another scan")
        path = check_suffix(path, UPLOAD_SUFFIXES, what="supported image file")
        if name is None:
            lower = path.name.lower()
            name = path.name[: -len(next(s for s in UPLOAD_SUFFIXES if lower.endswith(s)))]
        if self.scene.GetFirstNodeByName(name) is not None:
            name = self.scene.GenerateUniqueName(name)
        if path.name.lower().endswith(ENGINE_READ_SUFFIXES):  # formats Slicer's core reader lacks
            from brainfm.io import read_volume

            node = node_from_volume(self.scene, read_volume(path), name)
        else:
            node = import_volume_file(self.scene, path, name=name)
        old = [self.input_node, *self.outputs.values()]
        remove_nodes(self.scene, [n for n in old if n is not None and n is not node])
        self.input_node = node
        self.outputs, self._labels, self.case_dir = {}, None, None
        self.status, self.progress, self.message, self.error, self.log = "idle", 0.0, f"Opened {path.name}", "", []
        return node

    def open_server_path(self, text: str) -> Any:
        """Open a scan by its path on the server; refused outside the allowed folders."""
        return self.open_volume(self.allowed.check(text, what="scan"))

    def check_model_path(self, text: str) -> str:
        """A model file path typed in the page: inside the allowed folders and a weights file."""
        path = self.allowed.check(text, what="model file")
        return str(check_suffix(path, MODEL_SUFFIXES, what="model weights file"))

    def model_options(self) -> List[Dict[str, Any]]:
        """The model selector's entries (registry models, then the files given on the command line)."""
        return model_options(self.extra_models)

    def model_values(self) -> List[str]:
        return [o["value"] for o in self.model_options()]

    # -- run ---------------------------------------------------------------------------------------
    def start(self, *, tasks: Sequence[str], model: str, device: str = "auto", one_mm_grid: bool = False,
              allow_thick_slices: bool = False) -> None:
        """Start ``brainfm run`` on the input volume (returns at once; drive it with :meth:`poll`).

        ``one_mm_grid``: results on a 1 mm grid over the head instead of the scan's grid (finer for
        thick-slice scans). ``allow_thick_slices``: run on slices thicker than 10 mm, refused otherwise.
        """
        if self.running:
            raise InputError("a BrainFM run is already in progress")
        if self.input_node is None:
            raise InputError("open a scan first")
        if device not in DEVICE_CHOICES and not re.match(r"^cuda:\d+$", str(device)):
            raise InputError(f"unknown device {device!r}")
        model = str(model or "").strip()
        if not model:
            raise InputError("choose a model")
        if ("/" in model or "\\" in model) and model not in self.model_values():
            model = self.check_model_path(model)  # typed in the page: only inside the allowed folders
        params = RunParameters(tasks=tuple(tasks), model=model, device=device, write_png=True,
                               output_frame="1mm" if one_mm_grid else "input",
                               allow_thick_slices=bool(allow_thick_slices))
        job = BrainFMJob(self.scene, self.input_node, params, python=self.python, keep_temp=True,
                         create_labelmap=True)
        job.progress.connect(self._on_progress)
        job.log.connect(self._on_log)
        self.status, self.progress, self.error, self.log = "running", 0.0, "", []
        self.message, self._started = "Starting", time.monotonic()
        self.job = job
        try:
            job.start()
        except BaseException as exc:
            self.job, self.status = None, "failed"
            self.error = str(exc)
            raise

    def _on_progress(self, fraction: float, message: str) -> None:
        self.progress, self.message = float(fraction), str(message)

    def _on_log(self, text: str) -> None:
        self.log.append(text)
        del self.log[:-200]

    def poll(self) -> bool:
        """Deliver the run's progress; import the results when it ended. True while it runs."""
        if self.job is None or not self.running:
            return False
        self.job.poll()
        self.elapsed_s = time.monotonic() - self._started
        if self.job.outcome is not None:
            self._finish(self.job.outcome)
        return self.running

    def wait(self, timeout: Optional[float] = None) -> str:
        """Block until the run ended (scripts and tests); returns the final status."""
        if self.job is not None and self.running:
            self._finish(self.job.wait(timeout))
        return self.status

    def cancel(self) -> None:
        """Stop the child process tree; the scene is left as it was before Apply."""
        if self.job is not None and self.running:
            self.message = "Cancelling"
            self.job.cancel()

    def _finish(self, outcome: JobOutcome) -> None:
        job, self.job = self.job, None
        self.elapsed_s = time.monotonic() - self._started
        temp = job.runner.temp_dir if job is not None else None
        try:
            if outcome.ok:
                self.outputs = dict(outcome.imported.nodes)
                self._labels = None
                self.case_dir = self._keep_case_folder(job.output_dir)
                self.status, self.progress = "completed", 1.0
                self.message = f"Done in {self.elapsed_s:.1f} s"
            else:
                error = outcome.error if outcome.error is not None else outcome.process.exception()
                self.status = "cancelled" if outcome.process.cancelled else "failed"
                self.error = str(error) if error is not None else "BrainFM failed."
                self.message = "Cancelled" if self.status == "cancelled" else "Failed"
        finally:
            if temp is not None:
                shutil.rmtree(temp, ignore_errors=True)

    def _keep_case_folder(self, output_dir: Optional[Path]) -> Optional[Path]:
        if output_dir is None:
            return None
        case = find_case_dir(output_dir)
        target = self.workdir / "cases" / safe_file_stem(self.input_node.GetName(), default="case")
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(case), str(target))
        return target

    # -- results -------------------------------------------------------------------------------------
    @property
    def segmentation_node(self) -> Any:
        return self.outputs.get("seg")

    def segments(self) -> List[Dict[str, Any]]:
        """``[{name, value, color}]`` of the result segmentation (color as ``#rrggbb``)."""
        node = self.segmentation_node
        if node is None:
            return []
        return [{"name": s["name"], "value": s["label_value"],
                 "color": "#" + "".join(f"{int(round(255 * c)):02x}" for c in s["color"][:3])}
                for s in segment_summary(node)]

    def structure_rows(self) -> List[Dict[str, Any]]:
        """Rows of the structure-volume table (label, name, voxels, mm³)."""
        node = self.outputs.get("seg_volumes")
        return table_rows(node) if node is not None else []

    def layers(self) -> List[Dict[str, str]]:
        """Image volumes that can be shown in the slice views: the scan, then the image outputs."""
        nodes = [self.input_node] + [n for k, n in self.outputs.items() if k != "seg_labelmap"]
        return [{"value": n.GetID(), "title": n.GetName()} for n in nodes
                if n is not None and n.IsA("vtkMRMLScalarVolumeNode") and not n.IsA("vtkMRMLLabelMapVolumeNode")]

    def label_at(self, ras: Sequence[float]) -> Optional[Dict[str, Any]]:
        """``{value, name}`` of the segment at world point ``ras`` (None outside or on background)."""
        labelmap = self.outputs.get("seg_labelmap")
        if labelmap is None or labelmap.GetImageData() is None:
            return None
        if self._labels is None:
            array, affine = volume_to_array_and_affine(labelmap)
            names = {s["value"]: s["name"] for s in self.segments()}
            self._labels = (array, np.linalg.inv(affine), names)
        array, ras_to_ijk, names = self._labels
        ijk = np.rint(ras_to_ijk @ np.array([*map(float, ras[:3]), 1.0]))[:3].astype(int)
        if np.any(ijk < 0) or np.any(ijk >= np.array(array.shape)):
            return None
        value = int(array[tuple(ijk)])
        if value == 0:
            return None
        return {"value": value, "name": names.get(value, f"Label {value}")}

    def zip_results(self) -> Path:
        """The case folder as ``<workdir>/cases/<case>.zip`` (written anew each call)."""
        if self.case_dir is None:
            raise InputError("no results yet: run BrainFM first")
        return zip_case_folder(self.case_dir, self.case_dir.with_suffix(".zip"))

    def scene_summary(self) -> Dict[str, Any]:
        """The data nodes of the scene and the segments of each segmentation (for scripts and tests)."""
        nodes, segmentations = [], {}
        for i in range(self.scene.GetNumberOfNodesByClass(DATA_NODE_CLASS)):
            node = self.scene.GetNthNodeByClass(i, DATA_NODE_CLASS)
            if node.IsA("vtkMRMLColorNode"):
                if node.GetAttribute(COLOR_NODE_ATTRIBUTE) != "1":
                    continue  # the built-in color tables
            elif node.GetHideFromEditors() or node.IsA("vtkMRMLCameraNode"):
                continue  # the views' own nodes
            nodes.append({"id": node.GetID(), "class": node.GetClassName(), "name": node.GetName()})
            if node.IsA("vtkMRMLSegmentationNode"):
                segmentations[node.GetID()] = [s["name"] for s in segment_summary(node)]
        return {"status": self.status, "nodes": nodes, "segmentations": segmentations,
                "input": self.input_node.GetID() if self.input_node is not None else None,
                "outputs": {k: n.GetID() for k, n in self.outputs.items()}}

    def error_text(self, exc: BaseException) -> str:
        """Message for the page: the engine's errors as they are, others with their type."""
        return str(exc) if isinstance(exc, BrainFMError) else f"{type(exc).__name__}: {exc}"
