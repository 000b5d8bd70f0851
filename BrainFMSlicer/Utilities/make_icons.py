"""Draw the 128x128 module icons of the BrainFM extension (run after changing the design).

Each icon is a rounded tile in the module's colour with a stylised brain (two hemispheres)
and a task glyph: colour-swapped halves (synthesis), coloured regions (segmentation), a smooth
shading ramp (bias field), a deformed grid (registration). Only Pillow is needed.

Usage (from the repository root)::

    python BrainFMSlicer/Utilities/make_icons.py            # writes every icon
    python BrainFMSlicer/Utilities/make_icons.py --out /tmp # writes into /tmp/<Module>.png

>>> img = draw_icon("BrainFMSegmentation")
>>> img.size, img.mode
((128, 128), 'RGBA')
"""
from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

from PIL import Image, ImageDraw

SIZE = 128
SCALE = 4  # draw at 4x and downsample for anti-aliased edges
SLICER_DIR = Path(__file__).resolve().parents[1]

RGB = Tuple[int, int, int]
TILE_COLORS: Dict[str, RGB] = {
    "BrainFMSynthesis": (46, 117, 182),
    "BrainFMSegmentation": (56, 142, 60),
    "BrainFMBiasField": (230, 126, 34),
    "BrainFMRegistration": (123, 67, 151),
    "BrainFMCommon": (96, 96, 96),
}


def _brain_mask(s: int) -> Image.Image:
    """Two hemispheres (ellipses) with a gap along the midline, as an L mask of size s."""
    mask = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(mask)
    m = s * 0.17
    d.ellipse([m, s * 0.22, s * 0.5 - s * 0.015, s - s * 0.22], fill=255)
    d.ellipse([s * 0.5 + s * 0.015, s * 0.22, s - m, s - s * 0.22], fill=255)
    d.ellipse([s * 0.30, s * 0.55, s * 0.70, s * 0.83], fill=255)  # cerebellum / brainstem
    return mask


def _glyph_synthesis(s: int) -> Image.Image:
    img = Image.new("RGB", (s, s), (40, 40, 40))
    ImageDraw.Draw(img).rectangle([s // 2, 0, s, s], fill=(235, 235, 235))
    return img


def _glyph_segmentation(s: int) -> Image.Image:
    img = Image.new("RGB", (s, s), (250, 250, 250))
    d = ImageDraw.Draw(img)
    colors = [(220, 80, 80), (245, 200, 60), (90, 170, 230), (245, 245, 245), (200, 110, 200)]
    for k, c in enumerate(colors):
        d.pieslice([0, 0, s, s], start=k * 72 - 90, end=(k + 1) * 72 - 90, fill=c)
    d.ellipse([s * 0.42, s * 0.42, s * 0.58, s * 0.58], fill=(60, 60, 60))
    return img


def _glyph_bias(s: int) -> Image.Image:
    img = Image.new("RGB", (s, s))
    px = img.load()
    for y in range(s):
        for x in range(s):
            v = int(70 + 185 * (0.5 + 0.5 * math.cos(math.hypot(x - 0.2 * s, y - 0.2 * s) / s * 2.2)))
            px[x, y] = (v, v, v)
    return img


def _glyph_registration(s: int) -> Image.Image:
    img = Image.new("RGB", (s, s), (240, 240, 240))
    d = ImageDraw.Draw(img)
    w = max(2, s // 64)
    n = 7
    for k in range(1, n):
        pts_v = [(k * s / n + 0.05 * s * math.sin(y / s * math.pi * 2), y) for y in range(0, s + 1, 4)]
        pts_h = [(x, k * s / n + 0.05 * s * math.sin(x / s * math.pi * 2)) for x in range(0, s + 1, 4)]
        d.line(pts_v, fill=(80, 60, 110), width=w)
        d.line(pts_h, fill=(80, 60, 110), width=w)
    return img


def _glyph_plain(s: int) -> Image.Image:
    return Image.new("RGB", (s, s), (235, 225, 225))


GLYPHS: Dict[str, Callable[[int], Image.Image]] = {
    "BrainFMSynthesis": _glyph_synthesis,
    "BrainFMSegmentation": _glyph_segmentation,
    "BrainFMBiasField": _glyph_bias,
    "BrainFMRegistration": _glyph_registration,
    "BrainFMCommon": _glyph_plain,
}


def draw_icon(module: str) -> Image.Image:
    """Return the RGBA 128x128 icon of ``module`` (a key of :data:`TILE_COLORS`)."""
    if module not in TILE_COLORS:
        raise KeyError(f"unknown module {module!r}; known: {', '.join(TILE_COLORS)}")
    s = SIZE * SCALE
    tile = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    ImageDraw.Draw(tile).rounded_rectangle([0, 0, s - 1, s - 1], radius=s // 6,
                                           fill=TILE_COLORS[module] + (255,))
    mask = _brain_mask(s)
    # white rim: a slightly larger copy of the brain behind it
    rim = _brain_mask(int(s * 1.06)).crop((int(s * 0.03),) * 2 + (int(s * 0.03) + s,) * 2)
    tile.paste((255, 255, 255, 255), (0, 0), rim)
    glyph = GLYPHS[module](s).convert("RGBA")
    tile.paste(glyph, (0, 0), mask)
    return tile.resize((SIZE, SIZE), Image.LANCZOS)


def icon_path(module: str, out_dir: Optional[Path] = None) -> Path:
    """Where the icon of ``module`` lives (``<module>/Resources/Icons/<module>.png``)."""
    if out_dir is not None:
        return Path(out_dir) / f"{module}.png"
    return SLICER_DIR / module / "Resources" / "Icons" / f"{module}.png"


def write_icon(module: str, out_dir: Optional[Path] = None) -> Path:
    """Draw and write one icon atomically (temporary file in the same folder + os.replace)."""
    path = icon_path(module, out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".icon-", suffix=".png", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as fh:
            draw_icon(module).save(fh, format="PNG", optimize=True)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for the PNGs (default: the modules)")
    args = parser.parse_args(argv)
    for module in TILE_COLORS:
        print(write_icon(module, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
