"""Benchmark of BrainFM inference on the CPU: forward wall time, peak memory, bytes per voxel,
and the engine overhead (read, pre-processing, post-processing, writing) around the forward.

Usage (from the repository root)::

    .venv/bin/python Testing/benchmarks/bench_inference.py --size 64          # ~10 s, ~2 GB
    .venv/bin/python Testing/benchmarks/bench_inference.py --size 96
    .venv/bin/python Testing/benchmarks/bench_inference.py                    # 180x220x200: minutes, ~25 GB
    .venv/bin/python Testing/benchmarks/bench_inference.py --overhead --overhead-size 256

The model is the official-size architecture (6 levels, f_maps 64, the 9 official heads) with random
weights (timing and memory do not depend on the weight values). Peak memory is sampled from
``/proc/self/statm`` by a thread every 5 ms (and cross-checked with ``getrusage``); bytes per voxel
= (peak RSS during the forward - RSS before it) / input voxels. Reference figures (public BrainFM code,
2 CPU threads, fp32): 7.5 s at 64^3, 20.7 s at 96^3, 50.7 s at 128^3, ~3.0 KB peak per voxel.

The overhead run replaces the network forward by constant raw outputs of the right shapes, so it
measures only the engine around the forward (reading a NIfTI, validation, normalisation, the
network frame, every task's post-processing back to the input grid, writing every output).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

REF = {64: 7.5, 96: 20.7, 128: 50.7}
REF_BYTES_PER_VOXEL = 3000.0


def _rss_bytes() -> int:
    with open("/proc/self/statm", "r", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakSampler:
    """Samples the resident set size in a background thread; ``peak`` in bytes."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def parse_size(text: str) -> Tuple[int, int, int]:
    parts = [int(p) for p in text.lower().replace(",", "x").split("x") if p]
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or min(parts) < 8:
        raise argparse.ArgumentTypeError(f"size must be N or XxYxZ (>= 8), got {text!r}")
    return tuple(parts)  # type: ignore[return-value]


def head_like(shape, seed: int = 0) -> np.ndarray:
    """A smooth head-like image (ellipsoid with a brighter core) filling the volume."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    r = np.sqrt((x / 0.9) ** 2 + (y / 0.9) ** 2 + (z / 0.9) ** 2)
    img = np.where(r < 1.0, 60.0, 0.0) + np.where(r < 0.7, 50.0, 0.0)
    rng = np.random.default_rng(seed)
    return (img + rng.normal(0, 2, shape) * (r < 1.0)).astype(np.float32)


def bench_forward(size, *, f_maps: int, levels: int, precision: str, repeats: int) -> Dict[str, float]:
    import torch

    from brainfm.inference.device import autocast_dtype, forward_bytes_per_voxel
    from brainfm.inference.forward import forward_tile
    from brainfm.models import BrainFMNet, ModelConfig
    from brainfm.models.config import OFFICIAL_HEADS

    torch.manual_seed(0)
    net = BrainFMNet(ModelConfig(f_maps=f_maps, num_levels=levels, heads=dict(OFFICIAL_HEADS))).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    n_params = sum(p.numel() for p in net.parameters())
    amp = autocast_dtype(precision, torch.device("cpu"))
    img = head_like(size)
    x = torch.from_numpy((img - img.min()) / (img.max() - img.min()))[None, None].contiguous()
    heads = list(OFFICIAL_HEADS)
    times: List[float] = []
    peak_delta = 0
    for _ in range(repeats):
        base = _rss_bytes()
        with PeakSampler() as s:
            t0 = time.perf_counter()
            out = forward_tile(net, x, heads, False, amp)
            times.append(time.perf_counter() - t0)
        peak_delta = max(peak_delta, s.peak - base)
        del out
    voxels = int(np.prod(size))
    return {
        "size": "x".join(map(str, size)),
        "voxels": voxels,
        "params": n_params,
        "threads": torch.get_num_threads(),
        "precision": precision,
        "forward_s": min(times),
        "forward_s_all": [round(t, 2) for t in times],
        "peak_rss_delta_gb": peak_delta / 1e9,
        "bytes_per_voxel": peak_delta / voxels,
        "engine_estimate_bytes_per_voxel": forward_bytes_per_voxel(f_maps, autocast_dtype_=amp),
        "maxrss_process_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
    }


def bench_overhead(size: int, *, spacing=(1.0, 1.0, 1.0)) -> Dict[str, float]:
    """Engine time around the forward on a ``size``^3 input (forward replaced by constants)."""
    import nibabel as nib
    import torch

    import brainfm.inference.predictor as predmod
    from brainfm.inference import Predictor
    from brainfm.io import write_volume
    from brainfm.models import BrainFMNet, ModelConfig
    from brainfm.models.config import OFFICIAL_HEADS

    net = BrainFMNet(ModelConfig(f_maps=8, num_levels=3, heads=dict(OFFICIAL_HEADS)))
    chans = net.head.channels()
    real_run = predmod.run_with_fallback

    def fake_run(net_, image, **kw):
        shape = image.shape
        out = {h: np.full((chans[h],) + shape, 0.01, np.float32) for h in kw["heads"]}
        return out, None

    aff = np.diag(list(spacing) + [1.0])
    with tempfile.TemporaryDirectory(prefix="brainfm-bench-") as tmp:
        src = Path(tmp) / "in.nii.gz"
        nib.save(nib.Nifti1Image(head_like((size,) * 3), aff), str(src))
        predmod.run_with_fallback = fake_run
        try:
            p = Predictor(net, device="cpu")
            atlas_vol = None
            from brainfm.volume import Volume

            atlas_vol = Volume(head_like((64, 64, 64)), np.eye(4))
            t0 = time.perf_counter()
            from brainfm.io import read_volume

            vol = read_volume(src)
            t_read = time.perf_counter() - t0
            pred = p.predict(vol, tasks=["all"], atlas=atlas_vol)
            t_pred = pred.metadata["timings"]
            t0 = time.perf_counter()
            for key, v in pred.outputs.items():
                write_volume(v, Path(tmp) / f"{key}.nii.gz")
            t_write = time.perf_counter() - t0
        finally:
            predmod.run_with_fallback = real_run
    return {
        "input": f"{size}^3 at {spacing} mm",
        "network_shape": "x".join(map(str, pred.metadata["network_shape"])),
        "read_s": t_read,
        "preprocess_s": t_pred["preprocess"],
        "postprocess_s": t_pred["postprocess"],
        "write_s": t_write,
        "threads": torch.get_num_threads(),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=parse_size, default=(180, 220, 200), help="N or XxYxZ (default 180x220x200)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--f-maps", type=int, default=64)
    ap.add_argument("--levels", type=int, default=6)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--overhead", action="store_true", help="also measure the engine overhead")
    ap.add_argument("--overhead-size", type=int, default=256)
    ap.add_argument("--skip-forward", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    results: Dict[str, object] = {}
    if not args.skip_forward:
        r = bench_forward(args.size, f_maps=args.f_maps, levels=args.levels, precision=args.precision,
                          repeats=args.repeats)
        results["forward"] = r
        ref = REF.get(args.size[0]) if len(set(args.size)) == 1 else None
        print(f"forward {r['size']} ({r['voxels']} voxels, {r['params'] / 1e6:.1f} M params, "
              f"{r['threads']} threads, {r['precision']}): {r['forward_s']:.1f} s"
              + (f" (reference {ref} s)" if ref else ""))
        print(f"peak RSS increase {r['peak_rss_delta_gb']:.2f} GB = {r['bytes_per_voxel']:.0f} B/voxel "
              f"(reference ~{REF_BYTES_PER_VOXEL:.0f}; engine budget model "
              f"{r['engine_estimate_bytes_per_voxel']:.0f})")
    if args.overhead:
        o = bench_overhead(args.overhead_size)
        results["overhead"] = o
        print(f"engine overhead on {o['input']} (net frame {o['network_shape']}): read {o['read_s']:.1f} s, "
              f"preprocess {o['preprocess_s']:.1f} s, postprocess (all tasks) {o['postprocess_s']:.1f} s, "
              f"write {o['write_s']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
