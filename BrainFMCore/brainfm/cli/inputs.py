"""What ``brainfm run`` processes: input files, folders and DICOM series as cases, the files it
skips, and the checks made before the model is loaded (output location, room for the outputs).

A folder gives one case per supported image file (``.nii``, ``.nii.gz``, ``.mgz``, ``.mgh``,
``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``) and one case per DICOM series it holds (named by series
number and description); everything else (BIDS ``.json`` sidecars, ``.txt``, hidden files,
sub-folders...) is listed as skipped with the reason. A ``.dcm`` file stands for its whole series.

>>> case_names([Path("a/x.nii.gz"), Path("b/x.nii"), Path("y.mgz")])
['x', 'x_2', 'y']
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from brainfm.errors import InputError

PathLike = Union[str, "os.PathLike[str]"]

#: channels (float32-equivalent, on the input grid) each task writes; an upper bound used only
#: to check for free space before the model is loaded (``all``: every task but ``feat``)
TASK_CHANNELS = {"t1": 1.0, "t2": 1.0, "flair": 1.0, "ct": 1.0, "sr": 1.0, "seg": 0.5, "dist": 4.0, "bias": 2.0,
                 "reg": 8.0, "feat": 32.0}
PROBABILITY_CHANNELS = 56.0
EXTRA_BYTES = 2_000_000  # summary, tables, montage


@dataclass
class InputCase:
    """One volume to process: an image file, or a DICOM series (``series``)."""

    path: Path
    name: str = ""
    series: Any = None  # brainfm.io.dicom.DicomSeries
    error: Optional[str] = None  # a problem found while listing it, raised when it is read

    @property
    def protected(self) -> List[Path]:
        """Files that outputs must never replace (the image file, or every file of the series)."""
        return list(self.series.files) if self.series is not None else [self.path]

    def read(self, *, frame: Optional[int] = None):
        """The case's :class:`~brainfm.volume.Volume` (:func:`brainfm.io.read_volume` or the DICOM series reader)."""
        self._check_listing(frame)
        if self.series is not None:
            from brainfm.io.dicom import read_series

            return read_series(self.series)
        from brainfm.io import read_volume

        return read_volume(self.path, frame=frame)

    def check_header(self, *, frame: Optional[int] = None, allow_anisotropic: bool = False) -> None:
        """Refuse, from headers only (milliseconds), what :meth:`read` and the checks of a prediction would
        refuse, with the same message (:func:`brainfm.io.validate.check_image_header`). A DICOM series
        passes but for a problem found while listing it or a ``frame`` it does not have: its files are
        many and :meth:`read` checks them as it reads them.

        >>> InputCase(Path("scan.dcm"), error="cannot read the DICOM file scan.dcm").check_header()
        Traceback (most recent call last):
          ...
        brainfm.errors.InputError: cannot read the DICOM file scan.dcm
        """
        self._check_listing(frame)
        if self.series is None:
            from brainfm.io.validate import check_image_header

            check_image_header(self.path, frame=frame, allow_anisotropic=allow_anisotropic)

    def _check_listing(self, frame: Optional[int]) -> None:
        """Refuse a case with a problem found while listing it, or a DICOM series asked for a frame."""
        if self.error:
            raise InputError(self.error)
        if self.series is not None and frame not in (None, 0):
            raise InputError(f"--frame {frame}: DICOM series {self.name} is a single 3D volume")

    def record(self) -> Dict[str, Any]:
        """How ``run_summary.json`` names the input of this case."""
        out: Dict[str, Any] = {"case": self.name, "input": str(self.path)}
        if self.series is not None:
            out.update(input=str(self.series.folder or self.path.parent), dicom_series=self.series.name,
                       dicom_series_uid=self.series.uid, n_files=len(self.series.files))
        return out


def case_names(files: Sequence[Union[Path, InputCase]]) -> List[str]:
    """Case folder names: file names without extension (DICOM: series number and description),
    made unique with ``_2``, ``_3``..."""
    from brainfm.io.formats import split_ext

    seen: Dict[str, int] = {}
    names = []
    for f in files:
        if isinstance(f, InputCase) and f.series is not None:
            stem = f.series.name
        else:
            p = f.path if isinstance(f, InputCase) else Path(f)
            try:
                stem = split_ext(p)[0]
            except InputError:
                stem = p.name.split(".")[0]
        stem = Path(stem).name or "case"
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return names


def _skip_reason(f: Path, image_stems: Iterable[str]) -> str:
    low = f.name.lower()
    if low.endswith(".json"):
        stem = f.name[: -len(".json")]
        return "BIDS sidecar (metadata, not an image)" if stem in set(image_stems) else "JSON file (not an image)"
    if low.endswith((".txt", ".tsv", ".csv", ".md", ".log")):
        return "text file (not an image)"
    from brainfm.io.formats import SUPPORTED

    return f"not a file type BrainFM reads ({SUPPORTED}, DICOM)"


def expand_folder(folder: Path) -> Tuple[List[InputCase], List[Dict[str, str]]]:
    """Cases and skipped entries of one folder (not searched recursively)."""
    from brainfm.io.dicom import find_series, is_dicom_file
    from brainfm.io.formats import is_supported, split_ext

    cases: List[InputCase] = []
    skipped: List[Dict[str, str]] = []
    dicom: List[Path] = []
    others: List[Path] = []
    for f in sorted(folder.iterdir()):
        if f.name.startswith("."):
            skipped.append({"path": str(f), "reason": "hidden file"})
        elif f.is_dir():
            skipped.append({"path": str(f), "reason": "folder (sub-folders are not searched; give it as an input)"})
        elif not f.is_file():
            skipped.append({"path": str(f), "reason": "not a regular file"})
        elif f.name.lower().endswith(".dcm") or (not is_supported(f) and is_dicom_file(f)):
            dicom.append(f)
        elif is_supported(f):
            cases.append(InputCase(f))
        else:
            others.append(f)
    stems = [split_ext(c.path)[0] for c in cases]
    for f in others:
        skipped.append({"path": str(f), "reason": _skip_reason(f, stems)})
    if dicom:
        series = find_series(folder)
        in_series = {f.resolve() for s in series for f in s.files}
        cases += [InputCase(s.files[0], series=s) for s in series]
        for f in dicom:
            if f.resolve() not in in_series:
                skipped.append({"path": str(f), "reason": "DICOM file that is not part of an image series "
                                                          "(DICOMDIR, report, or unreadable)"})
    return cases, skipped


def collect_inputs(inputs: Sequence[PathLike]) -> Tuple[List[InputCase], List[Dict[str, str]], List[Path]]:
    """``(cases, skipped files, input folders)`` for the command's inputs, case names filled in.

    Files are taken as given (an unsupported type is an error: it was named explicitly); folders
    expand to their supported images and DICOM series, and what they skip is listed. A folder
    with nothing to process is an error that lists what it holds.
    """
    from brainfm.io.dicom import is_dicom_file, series_of_file
    from brainfm.io.formats import SUPPORTED, is_supported, split_ext

    cases: List[InputCase] = []
    skipped: List[Dict[str, str]] = []
    folders: List[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found, skip = expand_folder(p)
            folders.append(p)
            skipped += skip
            if not found:
                listed = "; ".join(f"{Path(s['path']).name} ({s['reason']})" for s in skip[:8]) or "nothing"
                raise InputError(f"folder {p} holds no image BrainFM reads ({SUPPORTED}, or a DICOM series); "
                                 f"it holds: {listed}")
            cases += found
        elif p.is_file():
            if p.name.lower().endswith(".dcm") or (not is_supported(p) and is_dicom_file(p)):
                try:
                    cases.append(InputCase(p, series=series_of_file(p)))
                except InputError as e:
                    cases.append(InputCase(p, error=str(e)))
            else:
                split_ext(p)  # an explicitly named file of an unknown type is an error
                cases.append(InputCase(p))
        else:
            raise InputError(f"input not found: {p}")
    cases = _dedupe(cases)
    for case, name in zip(cases, case_names(cases)):
        case.name = name
    return cases, skipped, folders


def _dedupe(cases: List[InputCase]) -> List[InputCase]:
    seen = set()
    out = []
    for c in cases:
        key = ("series", c.series.uid) if c.series is not None else ("file", os.path.realpath(c.path))
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def _inside(path: PathLike, folder: PathLike) -> bool:
    """True when ``path`` is ``folder`` or inside it (links and ``..`` resolved)."""
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(folder))
        return True
    except ValueError:
        return False


def check_output_location(out_root: Path, cases: Sequence[InputCase], folders: Sequence[Path]) -> None:
    """Refuse, before anything is written, an output that is an input, contains an input, or lies
    in an input folder (its results would be read as inputs on the next run)."""
    for c in cases:
        for f in c.protected:
            if _inside(out_root, f):
                raise InputError(f"output folder {out_root} is (or is inside) the input file {f}; "
                                 "choose another output folder")
            folder = out_root / c.name
            if _inside(f, folder):
                raise InputError(f"the case folder {folder} would contain the input {f}, and writing it would "
                                 "replace the input; choose another output folder")
    for d in folders:
        if _inside(out_root, d):
            same = os.path.realpath(out_root) == os.path.realpath(d)
            raise InputError(f"output folder {out_root} is {'the input folder' if same else 'inside the input folder'} "
                             f"{d}: results would mix with the inputs (and be taken as inputs by the next run); "
                             "choose an output folder outside it")
    if out_root.exists() and not out_root.is_dir():
        raise InputError(f"output {out_root} exists and is not a folder; -o takes a folder")


def input_voxels(case: InputCase, *, frame: Optional[int] = None) -> Optional[int]:
    """Voxels of the case's volume (frame ``frame`` of a 4D file) from its header only
    (:func:`brainfm.io.readers.read_header`; None when it cannot be told cheaply or the header is refused)."""
    try:
        if case.series is not None:
            from brainfm.io.dicom import series_shape

            shape = series_shape(case.series)
        else:
            from brainfm.io.readers import read_header

            header = read_header(case.path, frame=frame)
            shape = header.shape[:3] if header is not None else None
    except Exception:  # noqa: BLE001 - an unreadable file fails later, with its own message
        return None
    if not shape:
        return None
    n = 1
    for s in shape:
        n *= int(s)
    return n


def output_bytes(voxels: int, tasks: Sequence[str], *, compress: bool, probabilities: bool) -> int:
    """Upper bound of the bytes one case writes (float32 outputs on the input grid; ``.nii.gz`` is
    counted at half the size, a cautious ratio for noisy network outputs).

    >>> output_bytes(1_000_000, ["seg", "t1"], compress=False, probabilities=False)
    8000000
    """
    names = [t.strip().lower() for t in tasks]
    if "all" in names:
        names = [t for t in TASK_CHANNELS if t != "feat"]
    channels = sum(TASK_CHANNELS.get(t, 1.0) for t in names)
    if probabilities and "seg" in names:
        channels += PROBABILITY_CHANNELS
    raw = voxels * 4.0 * channels
    return int((raw / 2.0 if compress else raw) + EXTRA_BYTES)
