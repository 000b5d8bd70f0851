"""Anchors of the evaluation table, measured once and stored in ``anchors.json`` (next to this file)
with the command that measured them.

``python -m brainfm.evaluation.anchors --data ../shared/data --only n4 n4_applied synthesis syn [--n4-full]``
measures and merges the results into ``anchors.json`` (written atomically). SyN needs ``antspyx``
(not a brainfm dependency; it was measured once with antspyx 0.6.3 installed in a separate folder
put on ``PYTHONPATH``).

>>> a = load_anchors()
>>> isinstance(a, dict)
True
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

ANCHORS_PATH = Path(__file__).with_name("anchors.json")
SYN_SETUP = "antspyx (not a brainfm dependency) installed into its own folder and put on PYTHONPATH for this command"
#: what each anchor is (stored with it as ``what``)
WHAT: Dict[str, str] = {
    "n4_seg3d": "Anchor of the bias-field row: SimpleITK N4 on the seg3D MR scan, timed at shrink factors 4 and 2 "
                "(and 1 with --n4-full); correlation_with_finest compares each log field with the finest one "
                "inside the Otsu head mask.",
    "n4_applied_t1": "Anchor of the bias-field row: SimpleITK N4 (shrink 4, Otsu mask) on the voxelmorph real T1 "
                     "multiplied by known smooth fields (brainfm.evaluation.biasfield.APPLIED); correlation of N4's "
                     "log field with each applied log field inside the FreeSurfer brain mask.",
    "synthesis_baseline": "Anchor of the synthesis row: the input image itself scored as the other contrast "
                          "(PSNR in dB / SSIM in the brain after a linear intensity fit) on the stroke "
                          "T1/T2/FLAIR scans.",
    "registration": "Anchor of the registration row: antspyx SyN from the held-out label map training_seg_19 to "
                    "training_seg_20, both rendered as noise-free T1-like images; Dice of the carried labels "
                    "(31 left/right structures and 17 merged classes); identity_dice_lr is the Dice without "
                    "registration.",
}


def load_anchors(path: Optional[Path] = None) -> Dict[str, Any]:
    """The stored anchors ({} when the file does not exist)."""
    p = Path(path) if path is not None else ANCHORS_PATH
    return json.loads(p.read_text()) if p.is_file() else {}


def save_anchors(anchors: Dict[str, Any], path: Optional[Path] = None) -> Path:
    """Write ``anchors`` as JSON atomically."""
    from brainfm.io.atomic import atomic_output

    p = Path(path) if path is not None else ANCHORS_PATH
    with atomic_output(p) as tmp:
        Path(tmp).write_text(json.dumps(anchors, indent=2, sort_keys=True) + "\n")
    return p


def _machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"


def measure_n4(data_root: Path, *, full_resolution: bool, threads: int = 2) -> Dict[str, Any]:
    """N4 on seg3D MR at shrink 4 (and 2, and full resolution when asked): seconds, and the
    correlation of each field with the finest one inside the Otsu head mask."""
    from brainfm.evaluation import datasets
    from brainfm.evaluation.biasfield import n4_log_field, otsu_mask
    from brainfm.evaluation.metrics import correlation

    image = datasets.load(data_root, "seg3d_mr")
    mask = otsu_mask(image)
    fields, res = {}, {}
    for shrink in ([4, 2, 1] if full_resolution else [4, 2]):
        field, seconds = n4_log_field(image, shrink=shrink, mask=mask, threads=threads)
        fields[shrink] = field
        key = "full_resolution_seconds" if shrink == 1 else f"shrink{shrink}_seconds"
        res[key] = round(seconds, 2)
        print(f"N4 shrink {shrink}: {seconds:.1f} s", flush=True)
    finest = min(fields)
    res["correlation_with_finest"] = {f"shrink{s}": correlation(f, fields[finest], mask=mask)
                                      for s, f in fields.items() if s != finest}
    res["finest_shrink"] = finest
    res["settings"] = "SimpleITK N4BiasFieldCorrectionImageFilter, 4 levels x 50 iterations, Otsu mask, " \
                      f"{threads} threads, log field evaluated on the full grid"
    return res


def measure_n4_applied(data_root: Path, *, threads: int = 2) -> Dict[str, Any]:
    """N4 (shrink 4) on the real T1 under each applied field of the bias row: its correlations."""
    from brainfm.evaluation.biasfield import APPLIED, applied_field_correlations, applied_t1, n4_log_field

    image, brain, fields = applied_t1(data_root)
    corrs = applied_field_correlations(lambda v: n4_log_field(v, shrink=4, threads=threads)[0], image, brain, fields)
    return {"mean_correlation": round(float(np.mean(corrs)), 4), "correlations": corrs, "fields": dict(APPLIED),
            "settings": "SimpleITK N4BiasFieldCorrectionImageFilter, shrink 4, 4 levels x 50 iterations, Otsu mask, "
                        f"{threads} threads"}


def _dice_of_moved(moved: np.ndarray, truth: np.ndarray) -> Dict[str, Any]:
    from brainfm.evaluation.segmentation import dice_report

    rep = dice_report(moved, truth)
    return {"mean_dice_lr": rep["mean_lr"], "mean_dice_merged17": rep["mean_merged17"]}


def _crop_box(a: np.ndarray, b: np.ndarray, margin: int = 8):
    nz = np.argwhere((a != 0) | (b != 0))
    lo = np.maximum(nz.min(0) - margin, 0)
    hi = np.minimum(nz.max(0) + margin + 1, a.shape)
    return tuple(slice(int(x), int(y)) for x, y in zip(lo, hi))


def measure_syn(data_root: Path, *, threads: int = 2) -> Dict[str, Any]:
    """antspyx SyN (``type_of_transform="SyN"``, defaults) A -> B on the rendered held-out pair,
    cropped to the union head bounding box; labels warped with ``genericLabel``."""
    import os

    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(threads))
    import ants

    from brainfm.evaluation.registration import held_out_pair

    lab_a, lab_b, img_a, img_b = held_out_pair(data_root)
    box = _crop_box(np.asarray(lab_a.data), np.asarray(lab_b.data))
    to_ants = lambda x: ants.from_numpy(np.ascontiguousarray(np.asarray(x)[box]).astype(np.float32))  # noqa: E731
    fa, fb = to_ants(img_a.data), to_ants(img_b.data)
    t0 = time.perf_counter()
    reg = ants.registration(fixed=fb, moving=fa, type_of_transform="SyN")
    seconds = time.perf_counter() - t0
    moved = ants.apply_transforms(fixed=fb, moving=to_ants(lab_a.data), transformlist=reg["fwdtransforms"],
                                  interpolator="genericLabel").numpy()
    out = _dice_of_moved(np.rint(moved).astype(np.int32), np.asarray(lab_b.data)[box])
    out.update({"method": "antspyx SyN (type_of_transform='SyN', defaults)", "seconds": round(seconds, 1),
                "antspyx": getattr(ants, "__version__", "?"), "threads": threads,
                "identity_dice_lr": _dice_of_moved(np.asarray(lab_a.data)[box], np.asarray(lab_b.data)[box])["mean_dice_lr"],
                "pair": "training_seg_19 -> training_seg_20 (physics T1 renderings, cropped to the head box)",
                "setup": SYN_SETUP})
    return out


def main(argv: Optional[List[str]] = None) -> int:
    """Measure the chosen anchors and merge them into anchors.json."""
    p = argparse.ArgumentParser(prog="python -m brainfm.evaluation.anchors", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="shared data root")
    p.add_argument("--only", nargs="+", choices=("n4", "n4_applied", "synthesis", "syn"), required=True)
    p.add_argument("--n4-full", action="store_true", help="also run N4 at full resolution (minutes)")
    p.add_argument("--n4-note", default=None, help="note stored with the N4 anchor (e.g. why no full resolution)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("-o", "--output", default=str(ANCHORS_PATH))
    a = p.parse_args(argv)
    out = Path(a.output)
    import shlex

    # the command as typed (paths as given, e.g. ../shared/data): no machine-specific folder
    command = "python -m brainfm.evaluation.anchors " + " ".join(
        shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    stamp = {"command": command, "machine": _machine(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    root = Path(a.data)
    results: Dict[str, Any] = {}
    if "n4" in a.only:
        results["n4_seg3d"] = {**measure_n4(root, full_resolution=a.n4_full, threads=a.threads), **stamp,
                               "what": WHAT["n4_seg3d"]}
        if a.n4_note:
            results["n4_seg3d"]["note"] = a.n4_note
    if "n4_applied" in a.only:
        results["n4_applied_t1"] = {**measure_n4_applied(root, threads=a.threads), **stamp, "what": WHAT["n4_applied_t1"]}
    if "synthesis" in a.only:
        from brainfm.evaluation.synthesis import measure_baselines

        results["synthesis_baseline"] = {"pairs": measure_baselines(root), **stamp, "what": WHAT["synthesis_baseline"]}
    if "syn" in a.only:
        results["registration"] = {**measure_syn(root, threads=a.threads), **stamp, "what": WHAT["registration"]}
    anchors = load_anchors(out)  # re-read just before writing: other measurements may have finished
    anchors.update(results)
    save_anchors(anchors, out)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
