"""PNG montage of a case: one row per volume, three orthogonal slices through the foreground centre.

Every volume is first reoriented to RAS (exact axis permutation/flip, nibabel's closest
canonical), so the slices are anatomically oriented whatever the file's voxel order:
axial and coronal views put the subject's left on the image left (letters ``L``/``R`` are
drawn), the sagittal view has anterior on the right (``P``/``A``), superior is up. Slices are
resized to their physical aspect ratio (thick slices look thick). Label maps are drawn in
FreeSurfer colours over the input (when on the input grid), vector fields as their magnitude.
Only Pillow is used (its built-in bitmap font).

>>> import tempfile, pathlib, numpy as np
>>> from brainfm.volume import Volume
>>> img = Volume(np.random.default_rng(0).random((20, 24, 16)).astype(np.float32), np.eye(4))
>>> p = write_montage(img, {}, pathlib.Path(tempfile.mkdtemp()) / "m.png", cell=64)
>>> from PIL import Image; Image.open(p).size == montage_size(1, cell=64)
True
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import nibabel as nib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from brainfm.errors import InputError
from brainfm.io.atomic import atomic_output
from brainfm.labels.freesurfer import fs_color
from brainfm.volume import Volume, voxel_sizes

PathLike = Union[str, "os.PathLike[str]"]

CAPTION_H = 14  #: caption band above each row (pixels)
TITLE_H = 18  #: title band at the top when a title is given
VIEWS = ("axial", "coronal", "sagittal")
_RESAMPLING = getattr(Image, "Resampling", Image)  # Pillow >= 9.1 has Image.Resampling
_NEAREST, _BILINEAR = _RESAMPLING.NEAREST, _RESAMPLING.BILINEAR


def montage_size(n_rows: int, *, cell: int = 160, title: bool = False) -> Tuple[int, int]:
    """(width, height) in pixels of a montage with ``n_rows`` rows of ``cell``-pixel views."""
    return 3 * cell, (TITLE_H if title else 0) + n_rows * (CAPTION_H + cell)


def _canonical(vol: Volume) -> Tuple[np.ndarray, np.ndarray]:
    """Data and affine reoriented to RAS voxel order (exact, no resampling)."""
    ornt = nib.orientations.io_orientation(vol.affine)
    ras = nib.orientations.axcodes2ornt(("R", "A", "S"))
    tr = nib.orientations.ornt_transform(ornt, ras)
    data = nib.orientations.apply_orientation(np.asarray(vol.data), tr)
    aff = vol.affine @ nib.orientations.inv_ornt_aff(tr, vol.shape)
    return np.ascontiguousarray(data), aff


def _kind(key: str, vol: Volume) -> str:
    if vol.data.ndim == 4:
        return "vector" if vol.data.shape[3] == 3 else "multichannel"
    if np.issubdtype(vol.data.dtype, np.integer) or vol.meta.get("kind") == "labelmap":
        return "labelmap"
    return "image"


_SAMPLE = 1 << 21  #: at most this many voxels (a regular subsample) estimate percentiles


def _sample_step(shape: Sequence[int]) -> int:
    """The stride along every axis that leaves at most ~``_SAMPLE`` voxels of a grid of ``shape``."""
    n = int(np.prod(shape[:3]))
    return max(1, int(np.ceil((n / _SAMPLE) ** (1.0 / 3.0) - 1e-9)))


def _subsample(data: np.ndarray) -> np.ndarray:
    """A strided view of ``data`` with at most ~``_SAMPLE`` voxels (for percentile estimates)."""
    step = _sample_step(data.shape)
    return data[::step, ::step, ::step]


#: the share (%) of the foreground's voxels at each end of an axis left out of its extent (noise above the threshold)
OUTLIER_PERCENT = 0.05
#: the axial slice lies at most this far (mm) below the top of the head: through the lateral ventricles and
#: the basal ganglia, whatever the field of view holds below the brain (neck, shoulders)
BELOW_TOP_MM = 70.0


def _foreground_centre(vol: Volume) -> np.ndarray:
    """World (RAS mm) point the three views cut through: the centre of the bounding box of the voxels above
    10 % of the 99th percentile, moved up (superior) to :data:`BELOW_TOP_MM` below their top when it lies
    lower (a whole head with its neck would otherwise be cut through the eyes).

    >>> x = np.zeros((10, 10, 200), np.float32); x[2:8, 2:8, 20:200] = 1.0    # 180 mm tall: neck and head
    >>> [round(float(v)) for v in _foreground_centre(Volume(x, np.eye(4)))]
    [4, 4, 129]
    >>> x[2:8, 2:8, 20:110] = 0.0; x[5, 5, 1] = 1.0      # a brain, and one noise voxel far below it
    >>> [round(float(v)) for v in _foreground_centre(Volume(x, np.eye(4)))]
    [4, 4, 154]
    """
    data = np.asarray(vol.data, np.float32)
    if data.ndim == 4:
        data = np.linalg.norm(data, axis=3)
    data = np.nan_to_num(data)
    hi = np.percentile(_subsample(data), 99) if data.size else 0.0
    fg = data > (0.1 * hi if hi > 0 else data.min())
    if not fg.any():
        return vol.world_of((np.asarray(vol.shape[:3]) - 1) / 2.0)
    step = _sample_step(fg.shape)
    nz = [a * step for a in np.nonzero(_subsample(fg))]
    # extents without the outliers: a noise floor has a few voxels above the threshold anywhere in the view
    lo_hi = [np.percentile(a, [OUTLIER_PERCENT, 100.0 - OUTLIER_PERCENT]) for a in nz]
    centre = vol.world_of(np.array([(lo + hi) / 2.0 for lo, hi in lo_hi]))
    row = np.asarray(vol.affine, np.float64)[2]  # world S of voxel (i, j, k): row . (i, j, k, 1)
    top = float(np.percentile(row[0] * nz[0] + row[1] * nz[1] + row[2] * nz[2], 100.0 - OUTLIER_PERCENT) + row[3])
    centre[2] = max(float(centre[2]), top - BELOW_TOP_MM)
    return centre


#: the grey scale of an image in Hounsfield units (a synthetic CT): the brain window, level 40, width 80
CT_BRAIN_WINDOW = (0.0, 80.0)
#: this share of voxels at the minimum is a masked background (zeros, CT air), left out of the window
MASKED_SHARE = 0.05


def _window_range(data: np.ndarray) -> Optional[Tuple[float, float]]:
    """Robust 1-99 percentile window of a volume (estimated on a regular subsample of large
    volumes; min-max when the percentiles coincide), or None when there is nothing to show. A masked
    background (at least :data:`MASKED_SHARE` of the voxels at the minimum) is left out, so the window is
    the head's: a synthetic CT masked to -1000 HU shows its brain in grey, not all white.

    >>> x = np.zeros((10, 10, 10), np.float32); x[2:8, 2:8, 2:8] = np.linspace(30, 50, 216).reshape(6, 6, 6)
    >>> [round(v, 1) for v in _window_range(x)]
    [30.2, 49.8]
    """
    sample = _subsample(data)
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        return None
    rest = finite[finite > finite.min()]
    if finite.size - rest.size >= MASKED_SHARE * finite.size and rest.size >= 16:
        finite = rest
    lo, hi = np.percentile(finite, [1, 99])
    if hi <= lo:
        fin = data[np.isfinite(data)]
        lo, hi = float(fin.min()), float(fin.max())
    return (float(lo), float(hi)) if hi > lo else None


def _apply_window(data: np.ndarray, rng: Optional[Tuple[float, float]]) -> np.ndarray:
    """uint8 of ``data`` through the window ``rng`` (all zero without one)."""
    if rng is None:
        return np.zeros(data.shape, np.uint8)
    lo, hi = rng
    return (np.clip((np.nan_to_num(np.asarray(data, np.float32)) - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def _window(data: np.ndarray) -> np.ndarray:
    """Map to uint8 with a robust 1-99 percentile window."""
    return _apply_window(data, _window_range(data))


def _slices(data: np.ndarray, ijk: Sequence[int]) -> List[np.ndarray]:
    """Axial, coronal, sagittal 2D arrays of a RAS-ordered volume, rows top->bottom."""
    i, j, k = ijk
    ax = data[:, :, k][:, ::-1].T  # x: R to the right, up: anterior
    co = data[:, j, :][:, ::-1].T  # x: R to the right, up: superior
    sa = data[i, :, :][:, ::-1].T  # x: anterior to the right, up: superior
    return [ax, co, sa]


def _aspects(spacing: Sequence[float]) -> List[Tuple[float, float]]:
    """(pixel width mm, pixel height mm) of each view."""
    sx, sy, sz = spacing
    return [(sx, sy), (sx, sz), (sy, sz)]


def label_colors(vol: Volume) -> Optional[Dict[int, Sequence[int]]]:
    """RGB by label value of a segmentation of a user's own labels (its ``label_table`` metadata:
    ``[[value, name, r, g, b], ...]``), None for FreeSurfer's labels."""
    table = vol.meta.get("label_table")
    return {int(row[0]): [int(c) for c in row[2:5]] for row in table} if table else None


def _colorize_labels(lab: np.ndarray, colors: Optional[Dict[int, Sequence[int]]] = None
                     ) -> Tuple[np.ndarray, np.ndarray]:
    """RGB image and a boolean mask of labelled pixels; ``colors``: RGB by label value (a user's own
    labels), else FreeSurfer's."""
    rgb = np.zeros(lab.shape + (3,), np.uint8)
    for v in np.unique(lab):
        if v == 0:
            continue
        rgb[lab == v] = (colors or {}).get(int(v)) or fs_color(int(v))[:3]
    return rgb, lab != 0


def _fit(img: Image.Image, aspect: Tuple[float, float], cell: int, resample) -> Image.Image:
    w_mm, h_mm = img.width * aspect[0], img.height * aspect[1]
    scale = cell / max(w_mm, h_mm)
    size = (max(1, int(round(w_mm * scale))), max(1, int(round(h_mm * scale))))
    return img.resize(size, resample)


def _render_row(vol: Volume, kind: str, centre_world: np.ndarray, cell: int,
                under: Optional[Volume]) -> Tuple[List[Image.Image], str]:
    data, aff = _canonical(vol)
    if kind == "vector":
        data = np.linalg.norm(np.asarray(data, np.float32), axis=3)
    ijk = np.rint(np.linalg.inv(aff)[:3, :3] @ centre_world + np.linalg.inv(aff)[:3, 3]).astype(int)
    ijk = np.clip(ijk, 0, np.asarray(data.shape[:3]) - 1)
    spacing = voxel_sizes(aff)
    cells: List[Image.Image] = []
    if kind == "labelmap":
        views = _slices(data, ijk)
        base = None
        if under is not None and under.same_grid(vol):
            udata, _ = _canonical(under)
            urange = _window_range(udata)
            base = [_apply_window(v, urange) for v in _slices(udata, ijk)]
        colors = label_colors(vol)
        for n, (view, aspect) in enumerate(zip(views, _aspects(spacing))):
            rgb, mask = _colorize_labels(np.asarray(view), colors)
            grey = base[n] if base is not None else np.zeros(view.shape, np.uint8)
            out = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
            out[mask] = 0.45 * out[mask] + 0.55 * rgb[mask]
            cells.append(_fit(Image.fromarray(out.astype(np.uint8)), aspect, cell, _NEAREST))
        n_labels = _n_labels(np.asarray(vol.data))
        return cells, f"{n_labels} labels"
    values = np.asarray(data, np.float32)
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    # one window for the whole volume so the three views share one grey scale; only the three
    # slices are converted
    hu = vol.meta.get("units") == "HU"
    wrange = CT_BRAIN_WINDOW if hu else _window_range(values)
    wviews = [_apply_window(v, wrange) for v in _slices(values, ijk)]
    cells = [_fit(Image.fromarray(np.ascontiguousarray(v)).convert("RGB"), a, cell, _BILINEAR)
             for v, a in zip(wviews, _aspects(spacing))]
    return cells, f"range {lo:.3g}..{hi:.3g}" + (f", brain window {CT_BRAIN_WINDOW[0]:g}..{CT_BRAIN_WINDOW[1]:g} HU"
                                                 if hu else "")


def _n_labels(lab: np.ndarray) -> int:
    """Number of distinct labels, background 0 not counted (counting, not sorting, for the
    usual non-negative label numbers)."""
    if lab.size and lab.dtype in (np.uint8, np.int16, np.int32, np.int64) and int(lab.min()) >= 0 \
            and int(lab.max()) < (1 << 20):
        import torch

        flat = torch.from_numpy(np.ascontiguousarray(lab).reshape(-1))
        return int(torch.count_nonzero(torch.bincount(flat)[1:]))
    return int(np.count_nonzero(np.unique(lab)))


def _letters(draw: ImageDraw.ImageDraw, x0: int, y0: int, cell: int, view: int, font) -> None:
    left, right = ("L", "R") if view < 2 else ("P", "A")
    draw.text((x0 + 2, y0 + cell // 2 - 5), left, fill=(255, 255, 0), font=font)
    draw.text((x0 + cell - 9, y0 + cell // 2 - 5), right, fill=(255, 255, 0), font=font)


class MontageBuilder:
    """Builds a montage row by row, so each volume is needed only while its row is drawn (outputs
    written as they are produced never have to be in memory together).

    >>> import tempfile, pathlib, numpy as np
    >>> img = Volume(np.random.default_rng(0).random((20, 24, 16)).astype(np.float32), np.eye(4))
    >>> b = MontageBuilder(img, cell=64); b.add("copy", img); len(b.rows)
    2
    """

    def __init__(self, input_volume: Optional[Volume], *, title: Optional[str] = None, cell: int = 160) -> None:
        self.input_volume, self.title, self.cell = input_volume, title, int(cell)
        self.rows: List[Tuple[str, List[Image.Image]]] = []
        self._centre = _foreground_centre(input_volume) if input_volume is not None else None
        if input_volume is not None:
            self._row("input", input_volume, "image", None)

    def add(self, name: str, vol: Volume, unit: Optional[str] = None) -> None:
        """Draw the row of ``vol`` (multi-channel volumes other than 3-vectors are skipped)."""
        kind = _kind(name, vol)
        if kind != "multichannel":
            self._row(name, vol, kind, unit)

    def _row(self, name: str, vol: Volume, kind: str, unit: Optional[str]) -> None:
        if self._centre is None:
            self._centre = _foreground_centre(vol)
        under = self.input_volume if kind == "labelmap" else None
        cells, info = _render_row(vol, kind, self._centre, self.cell, under)
        unit = unit or vol.meta.get("units") or ""
        self.rows.append((f"{name} ({kind}{', ' + unit if unit else ''}; {info})", cells))

    def save(self, path: PathLike) -> Path:
        """Write the PNG atomically; returns the path."""
        if not self.rows:
            raise InputError("nothing to draw: no input volume and no scalar output")
        cell = self.cell
        width, height = montage_size(len(self.rows), cell=cell, title=bool(self.title))
        canvas = Image.new("RGB", (width, height), (0, 0, 0))
        draw = ImageDraw.Draw(canvas)
        font = ImageFont.load_default()
        y = 0
        if self.title:
            draw.text((4, 3), self.title, fill=(255, 255, 255), font=font)
            y = TITLE_H
        for caption, cells in self.rows:
            draw.text((4, y + 1), caption, fill=(220, 220, 220), font=font)
            y += CAPTION_H
            for n, im in enumerate(cells):
                x0 = n * cell
                canvas.paste(im, (x0 + (cell - im.width) // 2, y + (cell - im.height) // 2))
                _letters(draw, x0, y, cell, n, font)
            y += cell
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(target) as tmp:
            canvas.save(tmp, format="PNG")
        return target


def write_montage(input_volume: Optional[Volume], outputs: Mapping[str, Volume], path: PathLike, *,
                  title: Optional[str] = None, cell: int = 160,
                  units: Optional[Mapping[str, str]] = None) -> Path:
    """Write a PNG montage: the input (if given) and each scalar/vector output, one row each.

    Multi-channel outputs that are not 3-vectors (probabilities, features) are skipped.
    ``units`` (key -> unit string) is added to the captions. Written atomically; returns the path.
    """
    if input_volume is None and not any(_kind(k, v) != "multichannel" for k, v in outputs.items()):
        raise InputError("nothing to draw: no input volume and no scalar output")
    builder = MontageBuilder(input_volume, title=title, cell=cell)
    for key, vol in outputs.items():
        builder.add(key, vol, (units or {}).get(key))
    return builder.save(path)
