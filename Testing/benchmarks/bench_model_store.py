"""Benchmark of the model store: what a Slicer Apply pays to find and verify the official model.

Every Apply starts a new ``brainfm run`` process, which resolves ``--model`` and loads the weights.
Before the SHA-256 cache, each run hashed the whole ~1 GB checkpoint again; now an unchanged file is
hashed once. Side by side, in fresh processes (median of ``--repeats``):

- ``cold``: the SHA-256 cache deleted first, i.e. what every run cost before (hash + strict load);
- ``warm``: the same resolve + strict load with the cache (what every run costs now);
- ``hash only``: ``sha256_file`` of the weights (the part the cache saves);

plus the one-time ``brainfm models add`` (strict load on the meta device, hash, verified copy).
The checkpoint is written by ``ckpt_factory.write_official`` with the official architecture
(6 levels, f_maps 64, 9 heads: 264 M parameters, ~1 GB; random weights).

    .venv/bin/python Testing/benchmarks/bench_model_store.py [--f-maps 64] [--repeats 3] [--json OUT.json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "Testing" / "pytest"))

CHILD = r"""
import sys, time
t0 = time.perf_counter()
from brainfm.models import load_model
from brainfm.models.registry import resolve_model
t1 = time.perf_counter()
path = resolve_model("official")
t2 = time.perf_counter()
load_model(path, map_location="cpu")
t3 = time.perf_counter()
print(f"{t2 - t1:.4f} {t3 - t2:.4f} {t3 - t1:.4f}")
"""
HASH = "import sys, time; from brainfm.models.hashing import sha256_file; t = time.perf_counter(); " \
       "sha256_file(sys.argv[1]); print(f'{time.perf_counter() - t:.4f}')"


def run(args: List[str], env: Dict[str, str]) -> str:
    out = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--f-maps", type=int, default=64)
    ap.add_argument("--levels", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    import ckpt_factory

    work = Path(tempfile.mkdtemp(prefix="bench-store-"))
    try:
        weights = work / "brainfm_pretrained.pth"
        t = time.perf_counter()
        ckpt_factory.write_official(weights, f_maps=a.f_maps, num_levels=a.levels)
        print(f"wrote {weights.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - t:.0f} s", flush=True)
        env = {**os.environ, "BRAINFM_HOME": str(work / "home")}
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "brainfm", "models", "add", str(weights), "--progress", "none"],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        add_s = time.perf_counter() - t
        cache = work / "home" / "sha256_cache.json"
        stored = Path(run(["-m", "brainfm", "models", "path", "official"], env))
        rows: Dict[str, List[List[float]]] = {"cold": [], "warm": []}
        hashes = []
        for _ in range(a.repeats):
            cache.unlink()
            rows["cold"].append([float(x) for x in run(["-c", CHILD], env).split()])
            rows["warm"].append([float(x) for x in run(["-c", CHILD], env).split()])
            hashes.append(float(run(["-c", HASH, str(stored)], env)))
        med = {k: [statistics.median(r[i] for r in v) for i in range(3)] for k, v in rows.items()}
        result = {
            "size_gb": round(stored.stat().st_size / 1e9, 3), "cpus": os.cpu_count(), "repeats": a.repeats,
            "add_s": round(add_s, 2), "hash_only_s": round(statistics.median(hashes), 2),
            "cold": dict(zip(("resolve_s", "load_s", "total_s"), (round(x, 2) for x in med["cold"]))),
            "warm": dict(zip(("resolve_s", "load_s", "total_s"), (round(x, 2) for x in med["warm"]))),
        }
        print(f"checkpoint {result['size_gb']} GB, {result['cpus']} CPUs, median of {a.repeats}")
        print(f"brainfm models add (once)           {result['add_s']:7.2f} s")
        print(f"per run before (cold: hash + load)  {result['cold']['total_s']:7.2f} s "
              f"(resolve {result['cold']['resolve_s']:.2f} + load {result['cold']['load_s']:.2f})")
        print(f"per run now (warm: cached digest)   {result['warm']['total_s']:7.2f} s "
              f"(resolve {result['warm']['resolve_s']:.2f} + load {result['warm']['load_s']:.2f})")
        print(f"sha256 of the file alone            {result['hash_only_s']:7.2f} s")
        if a.json:
            Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
