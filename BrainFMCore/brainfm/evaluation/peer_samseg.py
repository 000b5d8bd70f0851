"""SAMSEG as a peer: the contrast-adaptive segmentation a user can install offline today
(``pip install samseg`` into its own virtual environment: probabilistic atlas in the wheel, no
network). It is not a brainfm dependency: brainfm runs it in a child process with that
environment's Python, found from ``--samseg-python`` or the ``BRAINFM_SAMSEG_PYTHON`` variable,
and measures its wall time and peak resident memory.

>>> find_samseg_python("/nonexistent/python") is None
True
>>> samseg_command("py", "in.nii.gz", "out", threads=2)[:3]
['py', '-c', 'import sys; from samseg.cli.run_samseg import main; sys.exit(main())']
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import numpy as np

from brainfm.errors import InputError

ENV_VAR = "BRAINFM_SAMSEG_PYTHON"
RESULT_NAME = "samseg_run.json"
_ENTRY = "import sys; from samseg.cli.run_samseg import main; sys.exit(main())"
PathLike = Union[str, "os.PathLike[str]"]


def find_samseg_python(python: Optional[PathLike] = None) -> Optional[str]:
    """The Python executable of an environment where ``import samseg`` works: ``python`` if given,
    else ``$BRAINFM_SAMSEG_PYTHON``; None when neither is set or samseg does not import there."""
    cand = python if python is not None else os.environ.get(ENV_VAR)
    if not cand:
        return None
    exe = Path(cand).expanduser()
    if not exe.is_file():
        return None
    try:
        res = subprocess.run([str(exe), "-c", "import samseg"], capture_output=True, timeout=120, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return str(exe) if res.returncode == 0 else None


def samseg_version(python: str) -> str:
    """The installed samseg version (``?`` when it cannot be read)."""
    code = "import importlib.metadata as m; print(m.version('samseg'))"
    try:
        res = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.SubprocessError):
        return "?"
    return res.stdout.strip() or "?"


def samseg_command(python: str, image: PathLike, out_dir: PathLike, *, threads: int = 1) -> List[str]:
    """The argument list that runs SAMSEG on one image (no shell)."""
    return [str(python), "-c", _ENTRY, "-i", os.fspath(image), "-o", os.fspath(out_dir),
            "--threads", str(int(threads))]


def run_samseg(image: PathLike, out_dir: PathLike, *, python: str, threads: int = 1,
               timeout_s: float = 3600.0, reuse: bool = True) -> Dict[str, Any]:
    """Run SAMSEG on ``image`` into ``out_dir``; returns ``{seg_path, seconds, peak_rss_gb, threads,
    version, command, reused}``. A finished earlier run in ``out_dir`` (its ``samseg_run.json`` and
    ``seg.mgz``) is reused when ``reuse``."""
    out = Path(out_dir)
    record = out / RESULT_NAME
    if reuse and record.is_file() and (out / "seg.mgz").is_file():
        rec = json.loads(record.read_text())
        if rec.get("image") == os.fspath(image):
            return {**rec, "reused": True}
    out.mkdir(parents=True, exist_ok=True)
    cmd = samseg_command(python, image, out, threads=threads)
    env = {**os.environ, "OMP_NUM_THREADS": str(int(threads))}
    t0 = time.perf_counter()
    with open(out / "samseg_stdout.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            _, status, usage = _wait(proc, timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise InputError(f"SAMSEG did not finish within {timeout_s:.0f} s on {image}") from None
    seconds = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else status
    if code != 0 or not (out / "seg.mgz").is_file():
        raise InputError(f"SAMSEG failed on {image} (exit {code}); see {out / 'samseg_stdout.log'}")
    rec = {"image": os.fspath(image), "seg_path": str(out / "seg.mgz"), "seconds": round(seconds, 1),
           "peak_rss_gb": round(usage.ru_maxrss * 1024 / 1e9, 2), "threads": int(threads),
           "version": samseg_version(python), "command": cmd}
    record.write_text(json.dumps(rec, indent=1) + "\n")
    return {**rec, "reused": False}


def _wait(proc: "subprocess.Popen[bytes]", timeout_s: float):
    """``os.wait4`` on the child (its own peak RSS), polling so that a timeout can stop it."""
    deadline = time.monotonic() + timeout_s
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else status
            return pid, status, usage
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(proc.args, timeout_s)
        time.sleep(0.5)


def samseg_dice(seg_path: PathLike, truth: Any) -> Dict[str, Any]:
    """Merged-17 and per-hemisphere Dice of a SAMSEG ``seg.mgz`` against ``truth`` (a label
    Volume), after nearest-neighbour resampling onto the truth grid when the grids differ."""
    from brainfm.evaluation.segmentation import dice_report
    from brainfm.geometry import resample_to_grid
    from brainfm.io import read_volume

    seg = read_volume(seg_path)
    if not seg.same_grid(truth):
        seg = resample_to_grid(seg, truth.affine, truth.shape, order="nearest", fill=0)
    return dice_report(np.asarray(seg.data).astype(np.int32), np.asarray(truth.data).astype(np.int32))


def _not_installed() -> Dict[str, Any]:
    """The peer entry of a table made without SAMSEG: skipped, with how to install it."""
    return {"method": "SAMSEG", "status": "skipped",
            "reason": f"SAMSEG not found: install it in its own environment (python -m venv ENV; "
                      f"ENV/bin/pip install samseg) and pass --samseg-python ENV/bin/python or set {ENV_VAR}"}


def peer_summary(python: Optional[str], image: PathLike, truth: Any, out_dir: PathLike, *,
                 threads: int = 1) -> Dict[str, Any]:
    """SAMSEG on ``image``: ``{"method", "status", ...}`` with wall time, peak RSS and Dice against
    ``truth``; ``status`` is ``"skipped"`` (with the reason) when SAMSEG is not installed."""
    if python is None:
        return _not_installed()
    run = run_samseg(image, out_dir, python=python, threads=threads)
    rep = samseg_dice(run["seg_path"], truth)
    return {"method": f"SAMSEG {run.get('version', '?')}", "status": "ok", "seconds": run["seconds"],
            "peak_rss_gb": run["peak_rss_gb"], "threads": run["threads"], "reused": run["reused"],
            "mean_dice_merged17": rep["mean_merged17"], "mean_dice_lr": rep["mean_lr"],
            "per_class_merged17": rep["per_class_merged17"]}


def peer_agreement(python: Optional[str], images: Mapping[str, PathLike], out_dir: PathLike, *,
                   threads: int = 1) -> Dict[str, Any]:
    """SAMSEG on each of ``images`` (co-registered scans of one subject, by contrast name), each into
    ``out_dir/<name>``, and the Dice between its segmentations of each pair
    (:func:`brainfm.evaluation.robustness.pairwise_agreement`, on the first scan's grid): how far
    SAMSEG's labels depend on the contrast. ``{"method", "status", "pairs", "min_mean_dice_merged17",
    "seconds"`` (all the runs), ``"peak_rss_gb"`` (the largest), ``"threads"}``; ``status`` is
    ``"skipped"`` (with the reason) when SAMSEG is not installed.

    >>> peer_agreement(None, {"T1": "t1.nii.gz", "T2": "t2.nii.gz"}, "out")["status"]
    'skipped'
    """
    from brainfm.evaluation.robustness import pairwise_agreement
    from brainfm.geometry import resample_to_grid
    from brainfm.io import read_volume
    from brainfm.io.readers import read_header

    if python is None:
        return _not_installed()
    runs = {name: run_samseg(image, Path(out_dir) / name, python=python, threads=threads)
            for name, image in images.items()}
    first_image = next(iter(images.values()))
    grid = read_header(first_image) or read_volume(first_image)  # the grid; voxels only when the header cannot say
    segs = {}
    for name, run in runs.items():
        seg = read_volume(run["seg_path"], kind="label")
        if not seg.same_grid(grid):
            seg = resample_to_grid(seg, grid.affine, grid.shape, order="nearest", fill=0)
        segs[name] = np.asarray(seg.data).astype(np.int32)
    pairs = pairwise_agreement(segs)
    first = next(iter(runs.values()))
    return {"method": f"SAMSEG {first.get('version', '?')}", "status": "ok", "pairs": pairs,
            "min_mean_dice_merged17": min(v["mean_dice_merged17"] for v in pairs.values()),
            "seconds": round(sum(r["seconds"] for r in runs.values()), 1),
            "peak_rss_gb": max(r["peak_rss_gb"] for r in runs.values()), "threads": first["threads"],
            "reused": all(r["reused"] for r in runs.values())}
