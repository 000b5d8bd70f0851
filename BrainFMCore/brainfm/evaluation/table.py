"""Run the rows of the evaluation table for one model and write ``eval_table.json``,
``eval_table.md`` (markdown ready for the model card, each row with the command that reproduces
it) and the montage PNGs.

A row whose data are missing is reported as ``skipped``; a row that fails is reported with its
error (``status: "error"``) and the other rows still run.

>>> ROWS[:3]
('segmentation', 'robustness', 'synthesis')
>>> print(markdown_table([{"row": "speed", "status": "ok", "headline": "12 s", "goal": "<= 60 s",
...                        "passed": True, "command": "brainfm eval-table --rows speed"}]).splitlines()[2])
| speed | 12 s | - | <= 60 s | yes | `brainfm eval-table --rows speed` |
"""
from __future__ import annotations

import json
import math
import shlex
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from brainfm.errors import BrainFMError, InputError
from brainfm.evaluation.rows import row as make_row, skipped_row
from brainfm.progress import ProgressCallback, ensure_callback

ROWS = ("segmentation", "robustness", "synthesis", "bias", "registration", "ct", "speed", "resolution")
MONTAGES = {"segmentation": "montage_segmentation.png", "robustness": "montage_robustness.png",
            "synthesis": "montage_synthesis.png", "ct": "montage_ct.png", "resolution": "montage_resolution.png"}


#: the rows that get SAMSEG beside them (with a SAMSEG Python), and the folder of each SAMSEG run
PEER_ROWS = {"segmentation": "samseg", "robustness": "samseg_robustness", "resolution": "samseg_resolution"}


def _anchor_text(r: Dict[str, Any]) -> str:
    a = r.get("anchor") or {}
    name = r.get("row")
    if name == "segmentation" and "mean_dice_merged17" in a:
        return f"MeshNet {a['mean_dice_merged17']}"
    if name == "bias field" and a:
        full = a.get("full_resolution_seconds")
        return (f"N4 shrink 4: {a.get('shrink4_seconds')} s, shrink 2: {a.get('shrink2_seconds')} s, "
                f"full res: {'not measured' if full is None else f'{full} s'}")
    if name == "registration" and "mean_dice_lr" in a:
        return f"{a.get('method', 'SyN').split(' (')[0]} Dice {a['mean_dice_lr']} in {a.get('seconds')} s"
    if name == "resolution robustness" and "dice17_1mm" in a:
        return f"the same model on the 1 mm scan: {a['dice17_1mm']:.3f}"
    if name == "synthesis" and a.get("baseline"):
        return "input after the fit (per pair, in the JSON)"
    return "-"


def _peer_text(r: Dict[str, Any]) -> str:
    p = r.get("peer")
    if not p:
        return "-"
    if p.get("status") != "ok":
        return f"{p.get('method', 'peer')}: {p.get('status')} ({p.get('reason', '')})".replace("|", "/")
    if "pairs" in p:  # the robustness row: SAMSEG's own agreement between contrasts
        pairs = ", ".join(f"{k} {v['mean_dice_merged17']:.3f}" for k, v in p["pairs"].items())
        return (f"{p['method']}, its labels of each pair: merged-17 Dice {pairs}; {p['seconds']:.0f} s for the "
                f"{len(p['pairs'])} scans, {p['peak_rss_gb']:.2f} GB ({p.get('threads', '?')} threads)")
    on = f" on the {p['scan']} slices (its own grid)" if p.get("scan") else ""
    return (f"{p['method']}{on}: merged-17 Dice {p['mean_dice_merged17']:.3f}, {p['seconds']:.0f} s, "
            f"{p['peak_rss_gb']:.2f} GB ({p.get('threads', '?')} threads)")


def markdown_table(rows: Sequence[Dict[str, Any]], *, title: Optional[str] = None) -> str:
    """The rows as a markdown table (what, result, anchor, goal, met, command; plus a peer column
    when a row has a ``peer``, e.g. SAMSEG on the segmentation row)."""
    lines = [] if title is None else [f"### {title}", ""]
    peer = any(r.get("peer") for r in rows)
    if peer:
        lines += ["| what | result | anchor | peer | goal | met | command |", "|---|---|---|---|---|---|---|"]
    else:
        lines += ["| what | result | anchor | goal | met | command |", "|---|---|---|---|---|---|"]
    for r in rows:
        met = {True: "yes", False: "no", None: "-"}[r.get("passed")]
        headline = str(r.get("headline", "")).replace("|", "/")
        mid = f" {_peer_text(r)} |" if peer else ""
        lines.append(f"| {r['row']} | {headline} | {_anchor_text(r)} |{mid} {r.get('goal', '')} | {met} | "
                     f"`{r.get('command', '')}` |")
    return "\n".join(lines) + "\n"


def row_command(model: str, data_root: str, out_dir: str, name: str, device: str,
                samseg_python: Optional[str] = None) -> str:
    """The command that reproduces one row."""
    parts = ["brainfm", "eval-table", "--model", model, "--data", data_root, "-o", out_dir, "--rows", name]
    if device != "auto":
        parts += ["--device", device]
    if samseg_python and name in PEER_ROWS:
        parts += ["--samseg-python", samseg_python]
    return " ".join(shlex.quote(p) for p in parts)


def _runner(name: str, predictor: Any, model: Path, data: Path, out: Path, anchors: Dict[str, Any]
            ) -> Callable[[], Dict[str, Any]]:
    from brainfm.evaluation import biasfield, ct, registration, resolution, robustness, segmentation, speed, synthesis

    m = {k: out / v for k, v in MONTAGES.items()}
    return {
        "segmentation": lambda: segmentation.evaluate_segmentation(predictor, data, montage_path=m["segmentation"]),
        "robustness": lambda: robustness.evaluate_robustness(predictor, data, montage_path=m["robustness"]),
        "synthesis": lambda: synthesis.evaluate_synthesis(predictor, data, anchors=anchors,
                                                          montage_path=m["synthesis"]),
        "bias": lambda: biasfield.evaluate_bias(predictor, data, anchors=anchors),
        "registration": lambda: registration.evaluate_registration(predictor, data, anchors=anchors),
        "ct": lambda: ct.evaluate_ct(predictor, data, montage_path=m["ct"]),
        "speed": lambda: speed.evaluate_speed(model, data),
        "resolution": lambda: resolution.evaluate_resolution(predictor, data, montage_path=m["resolution"]),
    }[name]


def run_table(model: Path, data_root: Path, out_dir: Path, *, rows: Sequence[str] = ROWS, device: str = "auto",
              anchors: Optional[Dict[str, Any]] = None, progress: Optional[ProgressCallback] = None,
              command_model: Optional[str] = None, command_data: Optional[str] = None,
              samseg_python: Optional[str] = None) -> Dict[str, Any]:
    """Evaluate ``model`` on the rows and write the table files into ``out_dir``; returns the JSON dict.

    ``command_model`` / ``command_data``: how the model and data are spelled in the per-row commands
    (default: the paths as given). ``samseg_python``: Python of an environment with SAMSEG
    (default ``$BRAINFM_SAMSEG_PYTHON``): SAMSEG then runs on the scans of the segmentation, robustness
    and resolution rows as their peer column (wall time, peak memory, merged-17 Dice; on the robustness
    row the Dice between its own labels of each pair of contrasts; a finished run in ``out_dir/samseg``,
    ``out_dir/samseg_robustness/<contrast>`` or ``out_dir/samseg_resolution`` is reused); without it the
    peer column is left out.
    """
    from brainfm.evaluation.anchors import load_anchors
    from brainfm.inference import Predictor
    from brainfm.models import load_model

    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise InputError(f"unknown rows {unknown}; choose from {list(ROWS)}")
    model, data_root, out_dir = Path(model), Path(data_root), Path(out_dir)
    if not data_root.is_dir():
        raise InputError(f"data folder not found: {data_root}")
    out_dir.mkdir(parents=True, exist_ok=True)
    anchors = load_anchors() if anchors is None else anchors
    cb = ensure_callback(progress)
    loaded = load_model(model)
    predictor = Predictor(loaded, device=device)
    results: List[Dict[str, Any]] = []
    for i, name in enumerate(rows):
        cb(i / len(rows), f"row {name}")
        t0 = time.perf_counter()
        try:
            r = _runner(name, predictor, model, data_root, out_dir, anchors)()
        except InputError as e:
            r = skipped_row(name, str(e))
        except (BrainFMError, RuntimeError, ValueError, OSError) as e:
            r = make_row(name, status="error", headline=f"error: {type(e).__name__}: {e}",
                         note=traceback.format_exc(limit=3))
        r["seconds"] = round(time.perf_counter() - t0, 2)
        if name in PEER_ROWS and r["status"] in ("ok", "n/a"):
            peer = _samseg_peer(samseg_python, data_root, out_dir, row=name)
            if peer is not None:
                r["peer"] = peer
        r["command"] = row_command(command_model or str(model), command_data or str(data_root), str(out_dir),
                                   name, device, samseg_python)
        mont = MONTAGES.get(name)
        if mont and (out_dir / mont).is_file() and r["status"] == "ok":
            r["montage"] = mont
        results.append(r)
    info = loaded.info
    doc = {"model": {"path": str(model), "name": getattr(info, "name", None), "version": getattr(info, "version", None),
                     "sha256": getattr(info, "sha256", None), "heads": list(predictor.head_names),
                     "label_scheme": getattr(info, "label_scheme", None)},
           "device": str(predictor.device), "data_root": str(data_root),
           "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "rows": results}
    write_outputs(doc, out_dir)
    cb(1.0, "done")
    return doc


def _samseg_peer(samseg_python: Optional[str], data_root: Path, out_dir: Path, *, row: str = "segmentation"
                 ) -> Optional[Dict[str, Any]]:
    """SAMSEG on the voxelmorph T1 (``row`` segmentation), on its axial thick-slice version (``row``
    resolution, :func:`brainfm.evaluation.resolution.peer_scan`) or on the stroke subject's T1, T2 and
    FLAIR (``row`` robustness, :func:`brainfm.evaluation.peer_samseg.peer_agreement`); None when no
    SAMSEG Python was given or configured."""
    import os

    from brainfm.evaluation import datasets, peer_samseg

    given = samseg_python or os.environ.get(peer_samseg.ENV_VAR)
    if not given:
        return None
    python = peer_samseg.find_samseg_python(given)
    if python is None:
        return {"method": "SAMSEG", "status": "skipped", "reason": f"samseg does not import with {given}"}
    try:
        folder = out_dir / PEER_ROWS[row]
        if row == "robustness":
            from brainfm.evaluation.synthesis import trio_paths

            return peer_samseg.peer_agreement(python, trio_paths(data_root), folder, threads=2)
        truth = datasets.load_labels(data_root, "voxelmorph_seg")
        if row == "resolution":
            from brainfm.evaluation.resolution import SLICINGS, peer_scan

            image = peer_scan(data_root, folder / "input")
            return {**peer_samseg.peer_summary(python, image, truth, folder, threads=2), "scan": SLICINGS[0][0]}
        image = datasets.data_path(data_root, "voxelmorph_vol")
        return peer_samseg.peer_summary(python, image, truth, folder, threads=2)
    except (BrainFMError, OSError, ValueError) as e:
        return {"method": "SAMSEG", "status": "error", "reason": f"{type(e).__name__}: {e}"}


def write_outputs(doc: Dict[str, Any], out_dir: Path) -> Dict[str, Path]:
    """Write ``eval_table.json`` and ``eval_table.md`` atomically (existing ones are replaced)."""
    from brainfm.io.atomic import atomic_output

    out_dir = Path(out_dir)
    paths = {"json": out_dir / "eval_table.json", "md": out_dir / "eval_table.md"}
    m = doc.get("model", {})
    title = f"Evaluation of {m.get('name') or Path(str(m.get('path'))).name} ({doc.get('device')}, {doc.get('date_utc')} UTC)"
    with atomic_output(paths["json"]) as tmp:
        Path(tmp).write_text(json.dumps(finite_json(doc), indent=2, default=_json_default, allow_nan=False) + "\n")
    with atomic_output(paths["md"]) as tmp:
        Path(tmp).write_text(markdown_table(doc["rows"], title=title))
    return paths


def finite_json(x: Any) -> Any:
    """``x`` with every non-finite float replaced by its string (``"inf"``, ``"nan"``): strict JSON.

    >>> finite_json({"a": [float("inf"), 1.5], "b": float("nan")})
    {'a': ['inf', 1.5], 'b': 'nan'}
    """
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: finite_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite_json(v) for v in x]
    return x


def _json_default(x: Any) -> Any:
    try:
        import numpy as np

        if isinstance(x, np.generic):
            return x.item()
    except ImportError:  # pragma: no cover
        pass
    return str(x)
