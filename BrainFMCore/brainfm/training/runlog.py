"""Run logs: CSV (appended across resumes), optional TensorBoard, and a loss-curve PNG drawn with Pillow.

>>> import tempfile, os
>>> from brainfm.training.runlog import CsvLog, read_csv_log, plot_loss_curve
>>> d = tempfile.mkdtemp()
>>> log = CsvLog(os.path.join(d, "log.csv"))
>>> log.write({"step": 1, "loss": 2.0}); log.write({"step": 2, "loss": 1.0, "lr": 1e-4})
>>> [r["loss"] for r in read_csv_log(os.path.join(d, "log.csv"))]
[2.0, 1.0]
>>> plot_loss_curve(os.path.join(d, "log.csv"), os.path.join(d, "loss.png")).endswith("loss.png")
True
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from brainfm.io.atomic import atomic_output

PathLike = Union[str, Path]


class CsvLog:
    """Append rows to a CSV; new columns rewrite the file (atomically) with the union header."""

    def __init__(self, path: PathLike, *, truncate_after_step: Optional[int] = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows: List[Dict[str, Any]] = []
        if self.path.is_file():
            with open(self.path, newline="") as f:
                rows = [dict(r) for r in csv.DictReader(f)]
        if truncate_after_step is not None:  # a resumed run rewrites steps after its checkpoint
            rows = [r for r in rows if _num(r.get("step")) <= truncate_after_step]
        self.rows: List[Dict[str, Any]] = rows
        self.header: List[str] = list(rows[0].keys()) if rows else []
        for r in rows:
            for k in r:
                if k not in self.header:
                    self.header.append(k)
        if truncate_after_step is not None and self.path.is_file():
            self._rewrite()

    def write(self, row: Dict[str, Any]) -> None:
        self.rows.append(dict(row))
        new = [k for k in row if k not in self.header]
        if new or not self.path.is_file():
            self.header += new
            self._rewrite()
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.header, restval="").writerow(row)

    def _rewrite(self) -> None:
        with atomic_output(self.path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.header, restval="")
            w.writeheader()
            for r in self.rows:
                w.writerow(r)


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return 0.0


def read_csv_log(path: PathLike) -> List[Dict[str, Any]]:
    """Rows of a CSV log with numeric fields converted to float (empty -> absent)."""
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row: Dict[str, Any] = {}
            for k, v in r.items():
                if v in ("", None):
                    continue
                try:
                    row[k] = float(v)
                except ValueError:
                    row[k] = v
            out.append(row)
    return out


def plot_loss_curve(csv_path: PathLike, png_path: PathLike, *, key: str = "loss",
                    extra_key: str = "val_dice", size=(900, 500)) -> str:
    """Draw ``key`` (log scale) and, if logged, ``extra_key`` (right axis, 0-1) against ``step``."""
    from PIL import Image, ImageDraw

    rows = read_csv_log(csv_path)
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), float) and r[key] > 0
           and isinstance(r.get("step"), float) and math.isfinite(r[key])]
    ext = [(r["step"], r[extra_key]) for r in rows if isinstance(r.get(extra_key), float)]
    w, h = size
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    x0, y0, x1, y1 = 70, 30, w - 60, h - 50
    d.rectangle([x0, y0, x1, y1], outline="black")
    d.text((x0, 8), f"BrainFM training: {key} (log scale, blue)"
           + (f", {extra_key} (0-1, orange)" if ext else ""), fill="black")
    if pts:
        s_lo = min(p[0] for p in pts + ext)
        s_hi = max(max(p[0] for p in pts + ext), s_lo + 1)
        lv = [math.log10(p[1]) for p in pts]
        l_lo, l_hi = min(lv), max(max(lv), min(lv) + 1e-3)

        def sx(s: float) -> float:
            return x0 + (x1 - x0) * (s - s_lo) / (s_hi - s_lo)

        def sy(v: float, lo: float, hi: float) -> float:
            return y1 - (y1 - y0) * (v - lo) / (hi - lo)

        d.line([(sx(p[0]), sy(v, l_lo, l_hi)) for p, v in zip(pts, lv)], fill=(31, 119, 180), width=2)
        if ext:
            d.line([(sx(s), sy(v, 0.0, 1.0)) for s, v in ext], fill=(255, 127, 14), width=2)
            for v in (0.0, 0.5, 1.0):
                d.text((x1 + 6, sy(v, 0.0, 1.0) - 6), f"{v:.1f}", fill=(255, 127, 14))
        for i in range(5):
            f = i / 4
            d.text((4, sy(l_lo + f * (l_hi - l_lo), l_lo, l_hi) - 6), f"{10 ** (l_lo + f * (l_hi - l_lo)):.3g}",
                   fill="black")
            d.text((sx(s_lo + f * (s_hi - s_lo)) - 10, y1 + 6), f"{s_lo + f * (s_hi - s_lo):.0f}", fill="black")
        d.text(((x0 + x1) // 2 - 10, h - 22), "step", fill="black")
    else:
        d.text((x0 + 10, (y0 + y1) // 2), "no data yet", fill="black")
    png_path = Path(png_path)
    with atomic_output(png_path) as tmp:
        img.save(tmp, format="PNG")
    return str(png_path)


class TensorBoard:
    """Thin optional TensorBoard writer (no-op when tensorboard is not installed)."""

    def __init__(self, log_dir: PathLike, *, enabled: bool = True) -> None:
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(log_dir))
            except Exception:  # noqa: BLE001 - tensorboard missing or broken: CSV log is enough
                self.writer = None

    def scalars(self, step: int, values: Dict[str, float]) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
