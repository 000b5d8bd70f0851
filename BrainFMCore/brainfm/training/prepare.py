"""Prepare a folder of label maps for training: validate, bring to 1 mm RAS, crop, register to
the atlas, and cache each subject compactly (``<name>.npz``) with a checksummed manifest.

Each cache file holds ``labels`` (uint16, RAS 1 mm, cropped to the head + 4 mm), ``affine``
(voxel -> RAS mm), and the subject -> atlas map as ``atlas_matrix`` (4x4, RAS mm -> atlas RAS mm)
plus ``atlas_residual`` (3, gx, gy, gz) float16 mm on a coarse grid every ``atlas_step`` voxels
(the non-linear part). :func:`load_subject` rebuilds the dense atlas-coordinate map and the
surface distance maps on the requested device.

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> for name in ("b.nii.gz", "a.mgz", "notes.txt"):
...     _ = (folder / name).write_bytes(b"")
>>> [p.name for p in list_label_maps(folder)]   # label-map files only, sorted
['a.mgz', 'b.nii.gz']
"""
from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from brainfm.errors import InputError
from brainfm.io.atomic import atomic_output
from brainfm.io.sitk_bridge import to_sitk
from brainfm.models.hashing import sha256_file  # noqa: F401 (also used by callers as prepare.sha256_file)
from brainfm.progress import CancelToken, ProgressCallback, ensure_callback
from brainfm.volume import Volume

LABEL_EXTS = (".nii.gz", ".nii", ".mgz", ".mgh", ".nrrd", ".mha")
MANIFEST = "manifest.json"
CACHE_VERSION = 1
ATLAS_STEP = 5  # voxels (mm) between nodes of the stored residual grid
_F = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS


def __getattr__(name: str):  # ``render_t1_like`` moved to the generator's physics; still importable from here
    if name == "render_t1_like":
        from brainfm.generator.physics import render_t1_like

        return render_t1_like
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _stem(p: Path) -> str:
    for ext in LABEL_EXTS:
        if p.name.endswith(ext):
            return p.name[: -len(ext)]
    return p.stem


def list_label_maps(label_dir: Union[str, Path]) -> List[Path]:
    """Label-map files of a folder (sorted); InputError when missing or empty."""
    d = Path(label_dir)
    if not d.is_dir():
        raise InputError(f"label folder not found: {d}")
    files = sorted(p for p in d.iterdir() if p.is_file() and p.name.endswith(LABEL_EXTS))
    if not files:
        raise InputError(f"no label maps ({', '.join(LABEL_EXTS)}) in {d}")
    return files




def register_to_atlas(t1_like: Volume, atlas: Volume, *, nonlinear: bool = True,
                      threads: int = 1) -> Tuple[np.ndarray, np.ndarray, Dict[str, Any]]:
    """Register the subject (fixed) to the atlas (moving) with SimpleITK: affine (Mattes MI,
    2 levels at 1/8 and 1/4 resolution) then a B-spline (mesh 5^3, L-BFGS-B, 1/4
    resolution). Returns the RAS 4x4 affine part, the residual
    (3, gx, gy, gz) in mm on the coarse grid of :data:`ATLAS_STEP` voxels, and statistics."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, int(threads)))
    t0 = time.perf_counter()
    fixed, moving = to_sitk(t1_like, dtype=np.float32), to_sitk(atlas, dtype=np.float32)
    init = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(3),
                                             sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.1, seed=1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-3,
                                                 numberOfIterations=100)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([8, 4])
    reg.SetSmoothingSigmasPerLevel([3.0, 2.0])
    reg.SetInitialTransform(init, inPlace=True)
    reg.Execute(fixed, moving)
    stats: Dict[str, Any] = {"affine_metric": float(reg.GetMetricValue()),
                             "affine_seconds": round(time.perf_counter() - t0, 2)}
    aff = sitk.AffineTransform(init)
    m_lps = np.eye(4)
    m_lps[:3, :3] = np.asarray(aff.GetMatrix()).reshape(3, 3)
    c = np.asarray(aff.GetCenter())
    m_lps[:3, 3] = np.asarray(aff.GetTranslation()) + c - m_lps[:3, :3] @ c
    matrix = _F @ m_lps @ _F
    full: Any = aff
    if nonlinear:
        bs = sitk.BSplineTransformInitializer(fixed, [5, 5, 5], 3)
        reg2 = sitk.ImageRegistrationMethod()
        reg2.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        reg2.SetMetricSamplingStrategy(reg2.RANDOM)
        reg2.SetMetricSamplingPercentage(0.1, seed=2)
        reg2.SetInterpolator(sitk.sitkLinear)
        reg2.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=25)
        reg2.SetShrinkFactorsPerLevel([4])
        reg2.SetSmoothingSigmasPerLevel([2.0])
        reg2.SetMovingInitialTransform(aff)
        reg2.SetInitialTransform(bs, inPlace=True)
        reg2.Execute(fixed, moving)
        stats["bspline_metric"] = float(reg2.GetMetricValue())
        full = sitk.CompositeTransform([aff, bs])  # bs applied first, then the affine
    # residual on the coarse grid (voxel indices 0, step, 2*step, ... of the subject grid)
    gshape = [int(np.ceil((n - 1) / ATLAS_STEP)) + 1 for n in t1_like.shape]
    idx = np.stack(np.meshgrid(*[np.arange(g) * ATLAS_STEP for g in gshape], indexing="ij"), -1)
    ras = idx.reshape(-1, 3) @ t1_like.affine[:3, :3].T + t1_like.affine[:3, 3]
    lps = ras * np.array([-1.0, -1.0, 1.0])
    mapped = np.array([full.TransformPoint(tuple(p)) for p in lps.tolist()]) * np.array([-1.0, -1.0, 1.0])
    lin = ras @ matrix[:3, :3].T + matrix[:3, 3]
    residual = (mapped - lin).reshape(*gshape, 3).transpose(3, 0, 1, 2)
    stats["seconds"] = round(time.perf_counter() - t0, 2)
    stats["residual_max_mm"] = float(np.abs(residual).max())
    # 1/32 mm steps are exact in float16 below 32 mm and make the grid compress well
    residual = np.round(residual * 32.0) / 32.0
    return matrix, residual.astype(np.float16), stats


def _load_labels(path: Path, unknown: str) -> Tuple[Volume, List[int]]:
    from brainfm.generator.labels import ALL_LABELS
    from brainfm.geometry import to_network_frame
    from brainfm.io import read_volume

    try:
        vol = read_volume(path, kind="label")
    except InputError as e:
        raise InputError(f"cannot read label map {path.name}: {e}") from e
    vals = np.unique(vol.data)
    bad = sorted(int(v) for v in vals if int(v) not in set(ALL_LABELS))
    if bad and unknown == "reject":
        raise InputError(f"{path.name}: unknown label values {bad} (not in the generator's label "
                         f"table); map them to 0 with --unknown zero or fix the map")
    data = np.where(np.isin(vol.data, bad), 0, vol.data) if bad else vol.data
    if not (data > 0).any():
        raise InputError(f"{path.name}: the label map is empty (all background)")
    net, _tf = to_network_frame(vol.with_data(data.astype(np.int32)), spacing=1.0,
                                crop_foreground=True, margin_mm=4.0, is_label=True)
    return net, bad


def _load_images(name: str, images_dir: Optional[Path], net: Volume, src: Volume) -> Dict[str, np.ndarray]:
    from brainfm.geometry import resample_to_grid
    from brainfm.io import read_volume

    out: Dict[str, np.ndarray] = {}
    if images_dir is None:
        return out
    for mod in ("T1", "T2", "FLAIR", "CT"):
        hits = [p for p in sorted(Path(images_dir).glob(f"{name}*{mod}*")) if p.name.endswith(LABEL_EXTS)]
        if not hits:
            continue
        img = read_volume(hits[0], kind="image")
        if img.shape[:3] != src.shape[:3] or not np.allclose(img.affine, src.affine, atol=1e-3):
            raise InputError(f"image {hits[0].name} is not aligned with label map {name} (shape "
                             f"{img.shape} vs {src.shape} or different affine); resample it onto the label grid first")
        out[mod] = resample_to_grid(img, net.affine, net.shape, order="linear").data.astype(np.float16)
    return out


def prepare_subject(path: Union[str, Path], out_dir: Union[str, Path], *, atlas_path: Union[str, Path],
                    images_dir: Optional[Union[str, Path]] = None, unknown: str = "zero",
                    nonlinear: bool = True, threads: int = 1) -> Dict[str, Any]:
    """Prepare one label map; writes ``<out_dir>/<name>.npz`` atomically; returns its manifest entry."""
    from brainfm.io import read_volume

    path = Path(path)
    name = _stem(path)
    net, bad = _load_labels(path, unknown)
    images = _load_images(name, Path(images_dir) if images_dir else None, net,
                          read_volume(path, kind="label")) if images_dir else {}
    atlas = read_volume(atlas_path, kind="image")
    from brainfm.generator.labels import BRAIN_LABELS
    from brainfm.generator.physics import render_t1_like

    # the atlas is a brain template: register the skull-stripped rendering
    t1 = net.with_data(render_t1_like(np.where(np.isin(net.data, BRAIN_LABELS), net.data, 0)))
    matrix, residual, stats = register_to_atlas(t1, atlas, nonlinear=nonlinear, threads=threads)
    arrays = dict(labels=net.data.astype(np.uint16), affine=net.affine, atlas_matrix=matrix,
                  atlas_residual=residual, atlas_step=np.array(ATLAS_STEP),
                  version=np.array(CACHE_VERSION))
    arrays.update({f"image_{k}": v for k, v in images.items()})
    target = Path(out_dir) / f"{name}.npz"
    with atomic_output(target) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return {"source": str(path.resolve()), "source_sha256": sha256_file(path), "file": target.name,
            "sha256": sha256_file(target), "shape": list(net.shape), "unknown_labels": bad,
            "images": sorted(images), "registration": stats}


def _read_manifest(out: Path) -> Dict[str, Any]:
    p = out / MANIFEST
    if not p.exists():
        return {"version": CACHE_VERSION, "subjects": {}}
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{p} is unreadable ({e}); delete it to prepare again") from e


def _write_manifest(out: Path, manifest: Dict[str, Any]) -> None:
    with atomic_output(out / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))


def _is_done(entry: Optional[Dict[str, Any]], src: Path, out: Path, atlas_sha: str, settings: dict) -> bool:
    if not entry or entry.get("atlas_sha256") != atlas_sha or entry.get("settings") != settings:
        return False
    f = out / entry.get("file", "")
    return f.is_file() and entry.get("source_sha256") == sha256_file(src) and entry.get("sha256") == sha256_file(f)


def prepare_dataset(label_dir: Union[str, Path], out_dir: Union[str, Path], *, atlas_path: Union[str, Path],
                    images_dir: Optional[Union[str, Path]] = None, workers: int = 1, unknown: str = "zero",
                    nonlinear: bool = True, progress: Optional[ProgressCallback] = None,
                    cancel: Optional[CancelToken] = None) -> Dict[str, Any]:
    """Prepare every label map of ``label_dir`` into ``out_dir`` (idempotent and resumable: a
    subject whose source, atlas, settings and cache checksums match the manifest is skipped).

    ``unknown``: ``"zero"`` maps unknown label values to 0 (listed in the manifest) or
    ``"reject"`` raises. Returns the manifest dict (with ``"skipped"`` and ``"prepared"`` lists).
    """
    if unknown not in ("zero", "reject"):
        raise InputError(f"unknown must be 'zero' or 'reject', got {unknown!r}")
    files = list_label_maps(label_dir)
    if not Path(atlas_path).is_file():
        raise InputError(f"atlas not found: {atlas_path}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cb = ensure_callback(progress)
    manifest = _read_manifest(out)
    atlas_sha = sha256_file(atlas_path)
    settings = {"unknown": unknown, "nonlinear": bool(nonlinear), "version": CACHE_VERSION,
                "images": bool(images_dir)}
    todo, skipped = [], []
    for f in files:
        (skipped if _is_done(manifest["subjects"].get(_stem(f)), f, out, atlas_sha, settings) else todo).append(f)
    prepared: List[str] = []
    workers = max(1, int(workers))
    threads = max(1, (os.cpu_count() or 1) // workers)
    kw = dict(atlas_path=str(atlas_path), images_dir=images_dir, unknown=unknown, nonlinear=nonlinear,
              threads=threads)
    cb(0.0, f"{len(skipped)} subject(s) already prepared, {len(todo)} to do")

    def record(f: Path, entry: Dict[str, Any]) -> None:
        entry.update(atlas_sha256=atlas_sha, settings=settings)
        manifest["subjects"][_stem(f)] = entry
        _write_manifest(out, manifest)
        prepared.append(_stem(f))
        cb(len(prepared) / max(len(todo), 1), f"prepared {_stem(f)} "
           f"({entry['registration']['seconds']} s registration)")

    if workers == 1:
        for f in todo:
            if cancel is not None:
                cancel.raise_if_cancelled()
            record(f, prepare_subject(f, out, **kw))
    else:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = [(f, pool.submit(prepare_subject, f, out, **kw)) for f in todo]
            for f, fut in futures:
                if cancel is not None and cancel.cancelled:
                    for _f, other in futures:
                        other.cancel()
                    cancel.raise_if_cancelled()
                record(f, fut.result())
    _write_manifest(out, manifest)
    cb(1.0, "done")
    return {**manifest, "skipped": [_stem(f) for f in skipped], "prepared": prepared}


def list_prepared(folder: Union[str, Path]) -> List[Path]:
    """Prepared subject files of ``folder``: those of the manifest when present, else ``*.npz``."""
    d = Path(folder)
    m = d / MANIFEST
    if m.is_file():
        subjects = _read_manifest(d).get("subjects", {})
        return sorted(d / e["file"] for e in subjects.values() if (d / e["file"]).is_file())
    return sorted(p for p in d.glob("*.npz") if p.is_file())


def load_subject(prepared_file: Union[str, Path], device: Any = "cpu", *, distance: bool = True):
    """Load a prepared ``.npz`` as :class:`brainfm.generator.SubjectData` on ``device``: the dense
    atlas-coordinate map (affine + trilinear upsampling of the residual grid) and, if
    ``distance``, the signed surface distance maps (SciPy EDT)."""
    import torch

    from brainfm.generator import SubjectData
    from brainfm.generator.distance import band_distance_maps, distance_maps
    from brainfm.generator.interp import identity_grid, sample_voxels

    p = Path(prepared_file)
    try:
        with np.load(p, allow_pickle=False) as z:
            arrs = {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"cannot read prepared subject {p}: {e}") from e
    for key in ("labels", "affine", "atlas_matrix", "atlas_residual"):
        if key not in arrs:
            raise InputError(f"{p.name} is not a prepared subject (missing {key!r}); run brainfm prepare")
    dev = torch.device(device)
    labels = torch.from_numpy(arrs["labels"].astype(np.int64)).to(dev)
    step = float(arrs.get("atlas_step", ATLAS_STEP))
    grid = identity_grid(labels.shape, device=dev)
    m = torch.from_numpy(arrs["atlas_matrix"] @ arrs["affine"]).to(dev, torch.float32)
    coords = torch.einsum("ij,j...->i...", m[:3, :3], grid) + m[:3, 3].view(3, 1, 1, 1)
    res = torch.from_numpy(arrs["atlas_residual"].astype(np.float32)).to(dev)[None]
    coords = coords + sample_voxels(res, grid[None] / step, padding="border")[0]
    dist = None
    if distance:  # exact banded EDT in torch on GPUs; SciPy's EDT (much faster there) on CPUs
        dist = band_distance_maps(labels) if dev.type == "cuda" else \
            torch.from_numpy(distance_maps(arrs["labels"])).to(dev)
    images = {k[len("image_"):]: torch.from_numpy(v.astype(np.float32)).to(dev)
              for k, v in arrs.items() if k.startswith("image_")}
    return SubjectData(labels, images=images, atlas_coords=coords, distance=dist,
                       affine=arrs["affine"], name=p.stem)
