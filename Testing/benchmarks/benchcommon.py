"""What the benchmarks on the development data share: their command-line options, best-of timing,
Rician noise and where their JSON result goes.

>>> ap = parser("doc", out_name="example.json", repeats=2)
>>> args = ap.parse_args(["--threads", "1"])
>>> args.repeats, args.threads, Path(args.out).name
(2, 1, 'example.json')
>>> seconds, value = best_of(lambda: 42, 3)
>>> value, seconds >= 0
(42, True)
>>> import numpy as np
>>> bool(rician(np.zeros(1000), 1.0, np.random.default_rng(0)).min() >= 0)   # a magnitude: never negative
True
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Tuple, TypeVar

import numpy as np

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "Testing" / "benchmarks" / "results"
T = TypeVar("T")


def parser(doc: str, *, out_name: str, repeats: int, repeats_help: str = "best of this many runs",
           threads_help: str = "torch threads") -> argparse.ArgumentParser:
    """An argument parser with ``--data`` (the shared development data; ``BRAINFM_SHARED_DATA`` or
    ``../shared/data``), ``--repeats``, ``--threads`` (default 2) and ``--out``
    (``Testing/benchmarks/results/<out_name>``); add a benchmark's own options before parsing."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("BRAINFM_SHARED_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--repeats", type=int, default=repeats, help=repeats_help)
    ap.add_argument("--threads", type=int, default=2, help=threads_help)
    ap.add_argument("--out", default=str(RESULTS / out_name))
    return ap


def rician(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """The magnitude of ``image`` plus complex Gaussian noise of ``sigma`` per channel (float64): the
    Rician noise of a magnitude MR image (Rayleigh where ``image`` is 0)."""
    return np.hypot(image + rng.normal(0, sigma, np.shape(image)), rng.normal(0, sigma, np.shape(image)))


def best_of(fn: Callable[[], T], repeats: int) -> Tuple[float, T]:
    """``(best wall seconds, the last result)`` of ``repeats`` calls (at least one)."""
    best, out = float("inf"), None
    for _ in range(max(1, int(repeats))):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out  # type: ignore[return-value]


def emit(summary: Dict[str, Any], out: str) -> None:
    """Print ``summary`` as indented JSON and write it to ``out`` (folders created)."""
    text = json.dumps(summary, indent=1)
    print(text)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text + "\n")
