"""Write a :class:`~brainfm.inference.prediction.Prediction` as a case folder.

Layout of ``out_dir``::

    <key>.nii.gz        one per output (labels int16/int32, images float32, fields as NIfTI vectors)
    seg_volumes.csv     structure volumes (value, name, voxels, volume_mm3), when segmented
    seg_labels.csv      names and colours of the labels (Slicer colour table), for a model fine-tuned
                        for labels of a user's own
    <table>.csv         any other table of the prediction
    montage.png         input + outputs, three orthogonal slices (optional)
    summary.json        input, model, device, precision, tiled, timings, warnings, outputs
                        {key: {path, kind (image|labelmap|vector|table), units, shape}},
                        tables, structure_volumes, montage (file name or null), metadata

Everything is written into a temporary folder beside ``out_dir`` that is renamed to ``out_dir``
at the end; a failure or cancellation removes it (and any parent folder it had to create), so a
case folder is either complete or absent. One left by a process that was killed outright is removed
by the next writer of that case (:func:`remove_stale_partials`). With ``overwrite=True`` an existing case folder is
replaced only after the new one is complete, and only when it is one (it holds a ``summary.json``):
a folder of anything else is never replaced. The case folder and its files get the permissions the
user's umask gives (``0755``/``0644`` with umask 022). A write the storage refuses (disk full,
read-only, no permission) raises :class:`~brainfm.errors.StorageError`. NIfTI outputs on the input
grid repeat the input file's qform and sform (see :func:`brainfm.io.write_volume`), so every viewer
places them exactly where it places the input.

>>> import tempfile, pathlib, json, numpy as np
>>> from brainfm.volume import Volume
>>> from brainfm.inference.prediction import Prediction
>>> img = Volume(np.random.default_rng(0).random((8, 8, 8)).astype(np.float32), np.eye(4))
>>> pred = Prediction(outputs={"synth_t1": img}, metadata={"device": "cpu"})
>>> out = pathlib.Path(tempfile.mkdtemp()) / "case1"
>>> s = save_prediction(pred, out, input_volume=img, png=False)
>>> sorted(p.name for p in out.iterdir()), s["outputs"]["synth_t1"]["kind"]
(['summary.json', 'synth_t1.nii.gz'], 'image')
"""
from __future__ import annotations

import csv
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from brainfm.errors import InputError, StorageError
from brainfm.io.atomic import folder_mode, make_folder, replace_folder, same_path, storage_error
from brainfm.progress import CancelToken, ProgressCallback, ensure_callback
from brainfm.report.summary import DEFAULT_UNITS, build_summary, output_kind, write_json
from brainfm.volume import Volume

PathLike = Union[str, "os.PathLike[str]"]

SUMMARY_NAME = "summary.json"
MONTAGE_NAME = "montage.png"


def _partial_prefix(name: str) -> str:
    """How the partial folders of case ``name`` begin: the case, this machine and this process, so that
    a later run can tell the folders of a process that died (killed, crashed) from those of a live one."""
    import hashlib
    import socket

    host = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
    return f".{name}.{host}-{os.getpid()}."


def remove_stale_partials(out: Path) -> List[Path]:
    """Remove the partial folders of case folder ``out`` that a process of this machine left when it died
    before it could clean up (``kill -9``, a crash, a power cut); those of live processes stay. Returns
    the folders removed. Only on POSIX systems, where a process can be asked whether it lives (on
    Windows ``os.kill`` would end it).

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> mine = _partial_prefix("case").rsplit("-", 1)[0]
    >>> (root / f"{mine}-999999999.x.partial").mkdir()          # no such process
    >>> (root / f"{_partial_prefix('case')}y.partial").mkdir()    # this process: alive
    >>> [p.name.endswith("x.partial") for p in remove_stale_partials(root / "case")]
    [True]
    """
    removed: List[Path] = []
    if os.name != "posix":
        return removed
    here = _partial_prefix(out.name).rsplit("-", 1)[0] + "-"
    try:
        candidates = [p for p in out.parent.iterdir() if p.name.startswith(here) and p.name.endswith(".partial")]
    except OSError:
        return removed
    for folder in candidates:
        try:
            pid = int(folder.name[len(here):].split(".", 1)[0])
            os.kill(pid, 0)
            continue  # its process is alive
        except ProcessLookupError:
            pass
        except (ValueError, PermissionError, OSError):
            continue  # not ours to judge
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def write_table_csv(rows: List[Mapping[str, Any]], path: PathLike) -> Path:
    """Write a list of dict rows as CSV (columns in first-seen order)."""
    from brainfm.io.atomic import atomic_output

    columns: List[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    target = Path(path)
    with atomic_output(target) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in columns})
    return target


def _check_target(out: Path, overwrite: bool, forbid: Iterable[Optional[PathLike]]) -> None:
    for f in forbid:
        if f is None:
            continue
        fp = Path(f)
        if same_path(out, fp):
            raise InputError(f"the case folder {out} is the input path; choose another output folder")
        try:
            Path(os.path.realpath(fp)).relative_to(os.path.realpath(out))
            inside = True
        except ValueError:
            inside = False
        if inside:
            raise InputError(f"the case folder {out} contains the input {fp}; writing it would replace the "
                             "input; choose another output folder")
    if out.exists() and not out.is_dir():
        raise InputError(f"output path {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if not (out / SUMMARY_NAME).is_file():
            raise InputError(f"folder {out} already exists and is not a BrainFM case folder (it has no "
                             f"{SUMMARY_NAME}); it is left as it is: choose another output folder")
        if not overwrite:
            raise InputError(f"case folder {out} already exists; pass overwrite=True (CLI --overwrite) to replace it")


def montage_title(name: str, model: Optional[Mapping[str, Any]]) -> str:
    """The montage's title: the case name, the model, and its quality mark unless it is a release model.

    >>> montage_title("sub-01", {"name": "brainfm-compact", "quality": {"level": "preview", "real_t1_dice17": 0.71}})
    'sub-01 | brainfm-compact: preview (merged-17 Dice 0.710 on a real T1)'
    >>> montage_title("sub-01", {"name": "official"})
    'sub-01'
    """
    from brainfm.models.quality import quality_label

    mark = quality_label((model or {}).get("quality"))
    return f"{name} | {(model or {}).get('name', 'model')}: {mark}" if mark else name


class CaseWriter:
    """Writes one case folder output by output: :meth:`add` each output as soon as it exists (e.g.
    as ``Predictor.predict(..., on_output=writer.add)``), then :meth:`finish` with the prediction
    (tables, montage, ``summary.json``, atomic rename). Only the output being added is needed in
    memory; the montage keeps three small slices per output. :meth:`abort` (or leaving a ``with``
    block by an exception) removes the partial folder and any parent folder it had to create.
    Options as :func:`save_prediction`; a write the storage refuses raises
    :class:`~brainfm.errors.StorageError` naming the case folder.

    >>> import tempfile, pathlib, numpy as np
    >>> from brainfm.volume import Volume
    >>> img = Volume(np.random.default_rng(0).random((8, 8, 8)).astype(np.float32), np.eye(4))
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "case2"
    >>> with CaseWriter(out, input_volume=img, png=False) as w:
    ...     w.add("synth_t1", img)
    ...     s = w.finish(None)
    >>> sorted(p.name for p in out.iterdir())
    ['summary.json', 'synth_t1.nii.gz']
    """

    def __init__(self, out_dir: PathLike, *, input_volume: Optional[Volume] = None,
                 input_path: Optional[PathLike] = None, overwrite: bool = False,
                 forbid: Iterable[Optional[PathLike]] = (), png: bool = True, title: Optional[str] = None,
                 extra: Optional[Mapping[str, Any]] = None, compress: bool = True) -> None:
        self.out = Path(out_dir).expanduser()
        self.forbid = list(forbid) + ([input_path] if input_path is not None else [])
        _check_target(self.out, overwrite, self.forbid)
        self.input_volume, self.input_path, self.extra, self.compress = input_volume, input_path, extra, compress
        self.title = title or self.out.name
        self.described: Dict[str, Dict[str, Any]] = {}
        self._montage = None
        if png:
            from brainfm.report.montage import MontageBuilder

            self._montage = MontageBuilder(input_volume, title=self.title)
        self._created = make_folder(self.out.parent) if not self.out.parent.is_dir() else []
        remove_stale_partials(self.out)
        try:
            self.tmp: Optional[Path] = Path(tempfile.mkdtemp(prefix=_partial_prefix(self.out.name), suffix=".partial",
                                                             dir=str(self.out.parent)))
            os.chmod(self.tmp, folder_mode())  # the case folder follows the umask, not mkdtemp's private 0700
        except OSError as e:
            _remove_empty(self._created)
            raise storage_error(e, self.out, action="create the case folder") from e

    def __enter__(self) -> "CaseWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def add(self, key: str, vol: Volume) -> None:
        """Write output ``key`` now (and draw its montage row)."""
        from brainfm.io import write_volume

        if self.tmp is None:
            raise RuntimeError("the case folder is already finished or aborted")
        name = f"{key}.nii.gz" if self.compress else f"{key}.nii"
        try:
            write_volume(vol, self.tmp / name, forbid=self.forbid, reference=self.input_volume)
        except StorageError as e:  # name the case folder, not the temporary one it is written in
            raise StorageError(str(e).replace(str(self.tmp), str(self.out))) from e
        unit = vol.meta.get("units") or DEFAULT_UNITS.get(key, "a.u.")
        self.described[key] = {"path": name, "kind": output_kind(key, vol.data), "units": unit,
                               "shape": list(vol.data.shape)}
        if vol.meta.get("label_table"):  # a user's own labels: their names and colours beside the map
            self.described[key]["label_table"] = write_label_table(vol.meta["label_table"],
                                                                   self.tmp / f"{key}_labels.csv").name
        if self._montage is not None:
            self._montage.add(key, vol, unit)

    def finish(self, prediction: Any, *, progress: Optional[ProgressCallback] = None,
               cancel: Optional[CancelToken] = None) -> Dict[str, Any]:
        """Write the tables, montage and ``summary.json`` of ``prediction`` (its ``tables`` and
        ``metadata``; outputs still in it are added first) and move the folder in place."""
        if self.tmp is None:
            raise RuntimeError("the case folder is already finished or aborted")
        cb = ensure_callback(progress)
        tmp = self.tmp
        try:
            outputs: Mapping[str, Volume] = dict(getattr(prediction, "outputs", {}) or {})
            tables: Mapping[str, List[Dict[str, Any]]] = dict(getattr(prediction, "tables", {}) or {})
            metadata: Mapping[str, Any] = dict(getattr(prediction, "metadata", {}) or {})
            n_steps = len(outputs) + len(tables) + 2
            for n, (key, vol) in enumerate(outputs.items()):
                if cancel is not None:
                    cancel.raise_if_cancelled()
                cb(n / n_steps, f"writing {key}")
                self.add(key, vol)
            table_files: Dict[str, str] = {}
            for key, rows in tables.items():
                if rows:
                    table_files[key] = write_table_csv(list(rows), tmp / f"{key}.csv").name
                    self.described.setdefault(key, {"path": table_files[key], "kind": "table", "units": ""})
            if self._montage is not None and self._montage.rows:
                if cancel is not None:
                    cancel.raise_if_cancelled()
                cb((n_steps - 2) / n_steps, "drawing the montage")
                self._montage.title = montage_title(self.title, metadata.get("model"))
                self._montage.save(tmp / MONTAGE_NAME)
            summary = build_summary(metadata, outputs=self.described, tables=table_files,
                                    structure_volumes=tables.get("seg_volumes"), input_path=self.input_path,
                                    input_volume=self.input_volume, extra=self.extra)
            summary["montage"] = MONTAGE_NAME if (tmp / MONTAGE_NAME).is_file() else None
            write_json(summary, tmp / SUMMARY_NAME)
            if cancel is not None:
                cancel.raise_if_cancelled()
            try:
                _commit(tmp, self.out)
            except OSError as e:
                raise storage_error(e, self.out, action="move the finished case folder to") from e
        except StorageError as e:
            self.abort()
            raise StorageError(str(e).replace(str(tmp), str(self.out))) from e
        except BaseException:
            self.abort()
            raise
        self.tmp = None
        cb(1.0, f"saved {self.out}")
        summary["folder"] = str(self.out)
        return summary

    def abort(self) -> None:
        """Remove the partial folder (nothing of the case is left)."""
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
            _remove_empty(self._created)


def write_label_table(rows: Sequence[Sequence[Any]], path: Path) -> Path:
    """Write the names and colours of a user's own labels (``[[value, name, r, g, b], ...]``, a
    segmentation's ``label_table`` metadata) as a Slicer colour-table CSV."""
    from brainfm.labels import custom_scheme, write_slicer_color_csv

    values = [int(r[0]) for r in rows]
    scheme = custom_scheme(values, names={int(r[0]): str(r[1]) for r in rows},
                           colors={int(r[0]): [int(c) for c in r[2:5]] for r in rows})
    return write_slicer_color_csv(path, scheme=scheme, terminology=False)


def save_prediction(prediction: Any, out_dir: PathLike, *, input_volume: Optional[Volume] = None,
                    input_path: Optional[PathLike] = None, overwrite: bool = False,
                    forbid: Iterable[Optional[PathLike]] = (), png: bool = True,
                    title: Optional[str] = None, extra: Optional[Mapping[str, Any]] = None,
                    progress: Optional[ProgressCallback] = None,
                    cancel: Optional[CancelToken] = None, compress: bool = True) -> Dict[str, Any]:
    """Write every output, table, the montage and ``summary.json`` of ``prediction`` to ``out_dir``.

    ``compress=False`` writes ``.nii`` instead of ``.nii.gz`` (about 5x larger, much faster to write
    and read; used by the Slicer modules, whose results live in a temporary folder).

    ``prediction`` has ``outputs`` (key -> Volume), ``tables`` and ``metadata`` (a
    :class:`~brainfm.inference.prediction.Prediction`). ``input_path`` (also added to ``forbid``)
    is recorded in the summary and may never be overwritten; ``extra`` is merged into the summary.
    Returns the summary (``outputs[key]["path"]`` relative to the case folder, plus ``"folder"``).
    """
    writer = CaseWriter(out_dir, input_volume=input_volume, input_path=input_path, overwrite=overwrite,
                        forbid=forbid, png=png and (input_volume is not None or bool(getattr(prediction, "outputs", None))),
                        title=title, extra=extra, compress=compress)
    return writer.finish(prediction, progress=progress, cancel=cancel)


def _remove_empty(folders: List[Path]) -> None:
    from brainfm.io.atomic import remove_if_empty

    remove_if_empty(folders)


def _commit(tmp: Path, out: Path) -> None:
    """Move the finished temporary folder to ``out`` (replacing an old case folder last)."""
    replace_folder(tmp, out)
