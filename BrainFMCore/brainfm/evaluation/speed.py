"""Speed row: wall time and peak RAM of all tasks on a 256^3 head on a 2-core CPU.

The head is training_seg_19 rendered as a physics T1 (256^3, 1 mm). The measurement runs in a
child process (``python -m brainfm.evaluation.speed --child MODEL IMAGE``) that pins itself to 2
CPU cores (where the OS allows), uses 2 torch threads, loads the model, predicts every task on
the CPU and prints one JSON line: model load seconds, prediction seconds, peak RSS (GB).

>>> GOAL
'<= 60 s, <= 6 GB (all tasks, 256^3, 2-core CPU)'
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from brainfm.errors import BrainFMError
from brainfm.evaluation.rows import row
from brainfm.volume import Volume

GOAL = "<= 60 s, <= 6 GB (all tasks, 256^3, 2-core CPU)"
CORES = 2


def _pin(cores: int) -> str:
    try:
        allowed = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, allowed[:cores])
        return f"pinned to CPUs {allowed[:cores]}"
    except (AttributeError, OSError):  # macOS / Windows: no affinity API
        return "not pinned (no affinity API); torch threads limited"


def child(model: str, image: str, *, cores: int = CORES, atlas: Optional[str] = None) -> Dict[str, Any]:
    """Run in the child process: load ``model``, predict all tasks on ``image`` on the CPU."""
    pinned = _pin(cores)
    import torch

    torch.set_num_threads(cores)
    from brainfm.inference import Predictor
    from brainfm.io import read_volume
    from brainfm.models import load_model

    t0 = time.perf_counter()
    pred = Predictor(load_model(model), device="cpu", threads=cores)
    t1 = time.perf_counter()
    img = read_volume(image)
    t2 = time.perf_counter()
    out = pred.predict(img, tasks=["all"], atlas=atlas)
    t3 = time.perf_counter()
    try:
        import resource  # Unix only

        peak_gb: Optional[float] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3)  # kB on Linux
    except ImportError:  # pragma: no cover - Windows
        peak_gb = None
    return {"load_model_seconds": round(t1 - t0, 2), "predict_seconds": round(t3 - t2, 2),
            "total_seconds": round(t3 - t0, 2), "peak_rss_gb": peak_gb,
            "tasks": list(out.metadata.get("tasks", [])), "tiled": bool(out.metadata.get("tiled")),
            "shape": list(img.shape), "cpu": pinned, "torch_threads": cores}


def measure(model: Path, image: Volume, *, atlas: Optional[Path] = None, timeout_s: float = 1800.0
            ) -> Dict[str, Any]:
    """Write ``image`` to a private temp folder and measure the child process on it."""
    from brainfm.io import write_volume

    with tempfile.TemporaryDirectory(prefix="brainfm-speed-") as tmp:
        path = write_volume(image, Path(tmp) / "head.nii.gz")
        cmd: List[str] = [sys.executable, "-m", "brainfm.evaluation.speed", "--child", str(model), str(path)]
        if atlas is not None:
            cmd += ["--atlas", str(atlas)]
        env = dict(os.environ, OMP_NUM_THREADS=str(CORES), MKL_NUM_THREADS=str(CORES), CUDA_VISIBLE_DEVICES="")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    if proc.returncode != 0:
        raise BrainFMError(f"speed measurement failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def evaluate_speed(model: Path, data_root: Optional[Path], *, image: Optional[Volume] = None
                   ) -> Dict[str, Any]:
    """The speed row: ``image`` default is the 256^3 rendering of training_seg_19 from ``data_root``."""
    atlas = None
    if image is None:
        from brainfm.evaluation import datasets
        from brainfm.evaluation.registration import render_image

        image = render_image(datasets.load_labels(data_root, datasets.held_out_names()[0]))
        try:
            atlas = datasets.data_path(data_root, "atlas")
        except BrainFMError:
            atlas = None
    res = measure(Path(model), image, atlas=atlas)
    peak = res.get("peak_rss_gb")
    passed = bool(res["total_seconds"] <= 60.0 and peak is not None and peak <= 6.0)
    return row("speed", metrics=res, goal=GOAL, passed=passed,
               headline=f"{res['total_seconds']:.1f} s (predict {res['predict_seconds']:.1f} s), "
                        f"peak RAM {peak} GB on {res['shape']}")


def main(argv: Optional[List[str]] = None) -> int:
    """Child entry point: ``--child MODEL IMAGE [--atlas PATH]``; prints one JSON line."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m brainfm.evaluation.speed")
    p.add_argument("--child", nargs=2, metavar=("MODEL", "IMAGE"), required=True)
    p.add_argument("--atlas", default=None)
    a = p.parse_args(argv)
    print(json.dumps(child(a.child[0], a.child[1], atlas=a.atlas)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
