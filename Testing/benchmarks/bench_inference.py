"""Benchmark of BrainFM inference on the CPU: forward wall time, peak memory, bytes per voxel,
and the engine overhead (read, pre-processing, post-processing, writing) around the forward.

Usage (from the repository root)::

    .venv/bin/python Testing/benchmarks/bench_inference.py --size 64          # ~10 s, ~2 GB
    .venv/bin/python Testing/benchmarks/bench_inference.py --size 96
    .venv/bin/python Testing/benchmarks/bench_inference.py                    # 180x220x200: minutes, ~25 GB
    .venv/bin/python Testing/benchmarks/bench_inference.py --skip-forward --overhead --overhead-size 256
    .venv/bin/python Testing/benchmarks/bench_inference.py --compact --f-maps 16 --levels 5   # ~1-2 min

The model is the official-size architecture (6 levels, f_maps 64, the 9 official heads) with random
weights (timing and memory do not depend on the weight values). Peak memory is sampled from
``/proc/self/statm`` by a thread every 5 ms (and cross-checked with ``getrusage``); bytes per voxel
= (peak RSS during the forward - RSS before it) / input voxels. Reference figures (public BrainFM code,
2 CPU threads, fp32): 7.5 s at 64^3, 20.7 s at 96^3, 50.7 s at 128^3, ~3.0 KB peak per voxel.

The overhead run replaces the network forward by raw outputs of the right shapes with realistic
values, so it measures only the engine around the forward (reading a NIfTI, validation,
normalisation, the network frame, every task's post-processing back to the input grid, the atlas
outputs on a 256^3 atlas, writing every output, the case folder with montage).
``--compact`` runs the compact model (5 levels, the bundled heads) end to end like ``brainfm run``
and reports wall time and peak RSS (issue-5 target on a 2-core CPU: <= 60 s, <= 6 GB).

Measured on the shared 2-core development VM (busy: ~1 free core; wall seconds, 256^3 1 mm input,
all tasks + atlas outputs, 16 files): before the overhead work read 0.6, preprocess 0.1,
postprocess 21.7, save_prediction 31.3 (0.9375 mm input: postprocess 41.9); after: read 0.4,
preprocess 0.06, postprocess 5.7-6.3, save_prediction 10.7-11.3 (0.9375 mm: postprocess 10.7).
Compact model (5 levels, f_maps 16) on 180x220x200: wall 38.6 s (forward 29.0), peak RSS 3.2 GB.
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


def fake_raw_outputs(image: np.ndarray, affine: np.ndarray, chans: Dict[str, int], heads, *,
                     seed: int = 0) -> Dict[str, np.ndarray]:
    """Raw head outputs with realistic value statistics (so that compression and label counts cost
    what they cost on a real prediction): image-like heads = scaled input + noise, segmentation
    logits that give intensity bands, distances of a few mm, registration = world coordinates of a
    slightly scaled map (units of 100 mm)."""
    rng = np.random.default_rng(seed)
    shape = image.shape
    fg = image > 0
    out: Dict[str, np.ndarray] = {}
    for h in heads:
        c = chans[h]
        if h == "segmentation":
            centres = np.linspace(0.0, 1.0, c, dtype=np.float32)
            logits = np.empty((c,) + shape, np.float32)
            for k in range(c):
                np.subtract(image, centres[k], out=logits[k])
                np.square(logits[k], out=logits[k])
                logits[k] *= -50.0
            out[h] = logits
        elif h == "registration":
            idx = [np.arange(n, dtype=np.float32) for n in shape]
            reg = np.empty((3,) + shape, np.float32)
            for r in range(3):
                reg[r] = (affine[r, 0] * idx[0][:, None, None] + affine[r, 1] * idx[1][None, :, None]
                          + affine[r, 2] * idx[2][None, None, :] + affine[r, 3]) * 1.05 + 2.0
                reg[r] += rng.normal(0.0, 0.2, shape).astype(np.float32)  # network outputs never repeat exactly
            out[h] = reg / 100.0
        elif h == "distance":
            base = (image - 0.5) * 8.0
            out[h] = np.stack([np.clip(base + k, -5, 5) for k in range(c)]).astype(np.float32)
        else:
            noise = rng.normal(0.0, 0.01, shape).astype(np.float32) * fg
            out[h] = (image * 0.9 + 0.02 + noise)[None].astype(np.float32)
    return out


def _lia_atlas(n: int = 256):
    from brainfm.volume import Volume

    aff = np.array([[-1.0, 0, 0, n / 2], [0, 0, 1, -n / 2], [0, -1, 0, n / 2], [0, 0, 0, 1]])
    return Volume(head_like((n, n, n), seed=3) * 2.0, aff)


def bench_overhead(size: int, *, spacing=(1.0, 1.0, 1.0), png: bool = True) -> Dict[str, object]:
    """Engine time around the forward on a ``size``^3 input, all tasks + the atlas outputs: the
    forward is replaced by realistic raw outputs of the right shapes (:func:`fake_raw_outputs`)."""
    import nibabel as nib
    import torch

    import brainfm.inference.predictor as predmod
    from brainfm.inference import Predictor
    from brainfm.io import read_volume, write_volume
    from brainfm.models import BrainFMNet, ModelConfig
    from brainfm.models.config import OFFICIAL_HEADS
    from brainfm.report import save_prediction

    net = BrainFMNet(ModelConfig(f_maps=8, num_levels=3, heads=dict(OFFICIAL_HEADS)))
    chans = net.head.channels()
    real_run = predmod.run_with_fallback
    seen = {}

    def fake_run(net_, image, **kw):
        t0 = time.perf_counter()
        out = fake_raw_outputs(image, seen["net_affine"], chans, kw["heads"])
        seen["fake_s"] = time.perf_counter() - t0
        return out, None

    real_prepare = predmod.prepare

    def spy_prepare(*a, **kw):
        prep = real_prepare(*a, **kw)
        seen["net_affine"] = prep.net.affine
        return prep

    aff = np.diag(list(spacing) + [1.0])
    aff[:3, 3] = -np.asarray(spacing) * (size - 1) / 2.0
    with tempfile.TemporaryDirectory(prefix="brainfm-bench-") as tmp:
        src = Path(tmp) / "in.nii.gz"
        nib.save(nib.Nifti1Image(head_like((size,) * 3), aff), str(src))
        atlas_vol = _lia_atlas()
        predmod.run_with_fallback, predmod.prepare = fake_run, spy_prepare
        try:
            p = Predictor(net, device="cpu")
            t0, c0 = time.perf_counter(), time.process_time()
            vol = read_volume(src)
            t_read, c_read = time.perf_counter() - t0, time.process_time() - c0
            pred = p.predict(vol, tasks=["all"], atlas=atlas_vol)
            t_pred, c_pred = pred.metadata["timings"], pred.metadata.get("cpu_timings", {})
            per_output = {}
            t0, c0 = time.perf_counter(), time.process_time()
            for key, v in pred.outputs.items():
                t1 = time.perf_counter()
                write_volume(v, Path(tmp) / "each" / f"{key}.nii.gz")
                per_output[key] = round(time.perf_counter() - t1, 3)
            t_write, c_write = time.perf_counter() - t0, time.process_time() - c0
            t0, c0 = time.perf_counter(), time.process_time()
            save_prediction(pred, Path(tmp) / "case", input_volume=vol, input_path=src, png=png)
            t_save, c_save = time.perf_counter() - t0, time.process_time() - c0
        finally:
            predmod.run_with_fallback, predmod.prepare = real_run, real_prepare
    return {
        "input": f"{size}^3 at {tuple(spacing)} mm",
        "network_shape": "x".join(map(str, pred.metadata["network_shape"])),
        "read_s": t_read,
        "preprocess_s": t_pred["preprocess"],
        "postprocess_s": t_pred["postprocess"] if "postprocess" in t_pred else None,
        "write_s": t_write,
        "save_prediction_s": t_save,
        "cpu_s": {"read": c_read, "preprocess": c_pred.get("preprocess"), "postprocess": c_pred.get("postprocess"),
                  "write": c_write, "save_prediction": c_save},
        "task_s": pred.metadata.get("task_timings"),
        "per_output_write_s": per_output,
        "outputs": len(pred.outputs),
        "threads": torch.get_num_threads(),
    }


COMPACT_HEADS = {"T1": 1, "T2": 1, "FLAIR": 1, "CT": 1, "high_res_residual": 1, "segmentation": 33,
                 "distance": 4, "bias_field_log": 1, "registration": 3}


def bench_compact(size, *, f_maps: int, levels: int, groups: int, precision: str) -> Dict[str, object]:
    """The compact model end to end like ``brainfm run``: read a NIfTI, all tasks (+ atlas outputs on a
    256^3 atlas), write the case folder with montage; wall time per stage and peak RSS of the process."""
    import nibabel as nib
    import torch

    from brainfm.inference import Predictor
    from brainfm.io import read_volume
    from brainfm.models import BrainFMNet, ModelConfig
    from brainfm.report import save_prediction

    torch.manual_seed(0)
    with PeakSampler() as sampler, tempfile.TemporaryDirectory(prefix="brainfm-bench-") as tmp:
        t_all = time.perf_counter()
        net = BrainFMNet(ModelConfig(f_maps=f_maps, num_levels=levels, num_groups=groups, heads=dict(COMPACT_HEADS)))
        params = sum(p.numel() for p in net.parameters())
        src = Path(tmp) / "in.nii.gz"
        aff = np.diag([1.0, 1.0, 1.0, 1.0])
        aff[:3, 3] = -(np.asarray(size) - 1) / 2.0
        nib.save(nib.Nifti1Image(head_like(size), aff), str(src))
        atlas_vol = _lia_atlas()
        base_rss = _rss_bytes()
        t0 = time.perf_counter()
        predictor = Predictor(net, device="cpu", precision=precision)
        vol = read_volume(src)
        pred = predictor.predict(vol, tasks=["all"], atlas=atlas_vol)
        t_pred = time.perf_counter() - t0
        t0 = time.perf_counter()
        save_prediction(pred, Path(tmp) / "case", input_volume=vol, input_path=src)
        t_save = time.perf_counter() - t0
        t_total = time.perf_counter() - t_all
    tm = pred.metadata["timings"]
    return {
        "size": "x".join(map(str, size)),
        "network_shape": "x".join(map(str, pred.metadata["network_shape"])),
        "model": f"{levels} levels, f_maps {f_maps}, groups {groups}, {params / 1e6:.2f} M params",
        "precision": precision,
        "threads": torch.get_num_threads(),
        "tiled": pred.metadata["tiled"],
        "read_predict_s": t_pred,
        "preprocess_s": tm.get("preprocess"),
        "forward_s": tm.get("forward"),
        "postprocess_s": tm.get("postprocess"),
        "save_s": t_save,
        "wall_s": t_pred + t_save,
        "total_with_setup_s": t_total,
        "peak_rss_gb": sampler.peak / 1e9,
        "rss_before_gb": base_rss / 1e9,
        "outputs": len(pred.outputs),
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
    ap.add_argument("--overhead-spacing", type=float, default=1.0,
                    help="voxel size of the overhead input (1.0: exact-copy path; e.g. 0.9375: resampling)")
    ap.add_argument("--no-png", action="store_true", help="overhead: save without the montage")
    ap.add_argument("--compact", action="store_true",
                    help="run the compact model end to end (read, all tasks, save) on --size; wall time + peak RSS")
    ap.add_argument("--groups", type=int, default=8, help="GroupNorm groups (compact model)")
    ap.add_argument("--skip-forward", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    results: Dict[str, object] = {}
    if args.compact:
        c = bench_compact(args.size, f_maps=args.f_maps, levels=args.levels, groups=args.groups,
                          precision=args.precision)
        results["compact"] = c
        print(f"compact model ({c['model']}, {c['threads']} threads, {c['precision']}) on {c['size']} "
              f"(net frame {c['network_shape']}, tiled {c['tiled']}): read+predict {c['read_predict_s']:.1f} s "
              f"(preprocess {c['preprocess_s']:.1f}, forward {c['forward_s']:.1f}, postprocess "
              f"{c['postprocess_s']:.1f}), save {c['save_s']:.1f} s, wall {c['wall_s']:.1f} s, "
              f"peak RSS {c['peak_rss_gb']:.2f} GB")
    elif not args.skip_forward:
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
        o = bench_overhead(args.overhead_size, spacing=(args.overhead_spacing,) * 3, png=not args.no_png)
        results["overhead"] = o
        print(f"engine overhead on {o['input']} (net frame {o['network_shape']}, {o['outputs']} outputs): "
              f"read {o['read_s']:.2f} s, preprocess {o['preprocess_s']:.2f} s, postprocess (all tasks) "
              f"{o['postprocess_s']:.2f} s, write {o['write_s']:.2f} s, save_prediction (files + csv + "
              f"montage + json) {o['save_prediction_s']:.2f} s")
        cs = o["cpu_s"]
        print("  CPU seconds (all threads): " + ", ".join(f"{k} {v:.2f}" for k, v in cs.items() if v is not None))
        print("  per task (s): " + ", ".join(f"{k} {v}" for k, v in (o["task_s"] or {}).items()))
        print("  per output write (s): " + ", ".join(f"{k} {v}" for k, v in o["per_output_write_s"].items()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
