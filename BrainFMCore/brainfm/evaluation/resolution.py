"""Resolution-robustness row: the voxelmorph real T1 cut into thick slices, as clinical scans are
(5 mm axial and 5 mm coronal: each slice the mean of five 1 mm slices), segmented with outputs on the
1 mm frame (``output_frame="1mm"``), then compared with the scan's FreeSurfer labels on their own
1 mm grid (merged-17 Dice); and with outputs on the thick input grid, read at the 1 mm labels' voxels
(nearest), which is how a method that only writes the input's grid (SAMSEG, the peer on the axial
version: :func:`peer_scan`) is scored. The anchor, measured in the same run, is the same model on the
1 mm scan.

>>> import numpy as np
>>> from brainfm.volume import Volume
>>> v = Volume(np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.eye(4))
>>> t = thick_slices(v, axis=2, mm=2)
>>> t.shape, t.data[0, 0].tolist(), float(t.affine[2, 2]), float(t.affine[2, 3])
((2, 3, 2), [0.5, 2.5], 2.0, 0.5)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from brainfm.evaluation.rows import has_task, na_row, row
from brainfm.evaluation.segmentation import dice_report
from brainfm.volume import Volume

#: the thick-slice versions measured: (name, world axis the slices are thick along (RAS: 2 = S, 1 = A), mm)
SLICINGS: Tuple[Tuple[str, int, int], ...] = (("axial 5 mm", 2, 5), ("coronal 5 mm", 1, 5))
#: how far below the 1 mm scan's Dice a thick-slice version may fall
MAX_LOSS = 0.05
GOAL = f"within {MAX_LOSS} of the 1 mm scan's merged-17 Dice"


def thick_slices(volume: Volume, *, axis: int, mm: int) -> Volume:
    """``volume`` with every ``mm`` consecutive slices along array ``axis`` averaged into one (a slice
    ``mm`` times thicker, centred on the slices it averages; trailing slices that do not fill one are
    dropped). The other axes and the world frame are kept."""
    data = np.asarray(volume.data, np.float32)
    n = data.shape[axis] // mm
    if n < 1:
        raise ValueError(f"{data.shape[axis]} slices along axis {axis} do not make one of {mm}")
    data = np.take(data, np.arange(n * mm), axis=axis)
    shape = list(data.shape)
    shape[axis:axis + 1] = [n, mm]
    affine = np.array(volume.affine, np.float64)
    step = affine[:3, axis].copy()
    affine[:3, axis] = step * mm
    affine[:3, 3] += step * (mm - 1) / 2.0
    return Volume(data.reshape(shape).mean(axis=axis + 1).astype(np.float32), affine)


def array_axis(affine: np.ndarray, world_axis: int) -> int:
    """The array axis of ``affine`` that runs most nearly along RAS ``world_axis`` (0 R, 1 A, 2 S).

    >>> array_axis(np.array([[-1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1.0]]), 2)   # LIA
    1
    """
    return int(np.argmax(np.abs(np.asarray(affine, np.float64)[world_axis, :3])))


def thick_versions(image: Volume) -> Dict[str, Volume]:
    """The thick-slice versions of ``image`` (:data:`SLICINGS`), by name."""
    return {name: thick_slices(image, axis=array_axis(image.affine, world_axis), mm=mm)
            for name, world_axis, mm in SLICINGS}


def peer_scan(data_root: Path, folder: Path) -> Path:
    """The first thick-slice version of the real T1 (:data:`SLICINGS`), written into ``folder`` for a
    peer method to read (e.g. SAMSEG); its path."""
    from brainfm.evaluation import datasets
    from brainfm.io import write_volume

    image = datasets.load(data_root, "voxelmorph_vol")
    name, world_axis, mm = SLICINGS[0]
    volume = thick_slices(image, axis=array_axis(image.affine, world_axis), mm=mm)
    path = Path(folder) / (name.replace(" ", "_") + ".nii.gz")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_volume(volume, path)
    return path


def _dice_on(predictor: Any, image: Volume, truth: Volume, *, output_frame: str) -> Tuple[float, Volume]:
    from brainfm.geometry import resample_to_grid

    seg = predictor.predict(image, tasks=["seg"], output_frame=output_frame)["seg"]
    on_truth = resample_to_grid(seg, truth.affine, truth.shape, order="nearest")
    labels = np.asarray(on_truth.data).astype(np.int32)
    return float(dice_report(labels, np.asarray(truth.data))["mean_merged17"]), on_truth.with_data(labels)


def evaluate_resolution(predictor: Any, data_root: Path, *, montage_path: Optional[Path] = None) -> Dict[str, Any]:
    """The resolution-robustness row (see the module docstring)."""
    if not has_task(predictor, "seg"):
        return na_row("resolution robustness", "segmentation", GOAL)
    from brainfm.evaluation import datasets
    from brainfm.geometry import resample_to_grid

    image = datasets.load(data_root, "voxelmorph_vol")
    truth = datasets.load_labels(data_root, "voxelmorph_seg")
    full, _ = _dice_on(predictor, image, truth, output_frame="1mm")
    scores: Dict[str, float] = {}
    on_input: Dict[str, float] = {}
    shown: Dict[str, Volume] = {}
    for name, thick in thick_versions(image).items():
        scores[name], shown[f"seg from {name}"] = _dice_on(predictor, thick, truth, output_frame="1mm")
        on_input[name], _ = _dice_on(predictor, thick, truth, output_frame="input")
        if montage_path is not None:  # what the model saw, drawn on the 1 mm grid
            shown[f"{name} slices"] = resample_to_grid(thick, image.affine, image.shape, order="linear")
    if montage_path is not None:
        from brainfm.report.montage import write_montage

        order = [k for name in scores for k in (f"{name} slices", f"seg from {name}")]
        write_montage(image, {k: shown[k] for k in order}, montage_path,
                      title="segmentation of thick slices, on the 1 mm scan")
    worst = min(scores.values())
    head = ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
    given = ", ".join(f"{v:.3f}" for v in on_input.values())
    return row("resolution robustness",
               metrics={"dice17_1mm": full, "dice17": scores, "dice17_input_frame": on_input,
                        "max_loss": round(full - worst, 4)},
               anchor={"dice17_1mm": round(full, 4)}, goal=GOAL, passed=bool(full - worst <= MAX_LOSS),
               headline=f"merged-17 Dice {head} with outputs on the 1 mm frame ({given} on the thick grids); "
                        f"the 1 mm scan: {full:.3f}")
