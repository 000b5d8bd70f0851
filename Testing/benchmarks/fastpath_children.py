"""Workloads of ``bench_fastpath.py``, each run in its own child process so that its peak resident
memory (``os.wait4``) and wall time are its own. Every function returns a JSON-ready dict.

Models have random weights unless a model file is given: speed and memory do not depend on the
weight values; Dice does (it is computed only with a trained model).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

VOXELMORPH_T1 = "voxelmorph/data/nifti_converted/test_scan_vol.nii.gz"
VOXELMORPH_ASEG = "voxelmorph/data/nifti_converted/test_scan_seg.nii.gz"


def build_model(arch: str, model: Optional[str] = None):
    """``official``: 6 levels, f_maps 64, the official heads (1 mm); ``compact``: 5 levels, f_maps 16,
    the training heads, 2 mm working grid; ``compact8``: the same with f_maps 8. ``model``: a file."""
    import torch

    from brainfm.models import BrainFMNet, ModelConfig, load_model
    from brainfm.models.common import LoadedModel, ModelInfo
    from brainfm.models.config import OFFICIAL_HEADS
    from brainfm.training.config import DEFAULT_HEADS

    if model:
        return load_model(model)
    torch.manual_seed(0)
    if arch == "official":
        cfg, mm, scheme = ModelConfig(f_maps=64, num_levels=6, heads=dict(OFFICIAL_HEADS)), 1.0, "brainfm56"
    else:
        cfg = ModelConfig(f_maps=8 if arch == "compact8" else 16, num_levels=5, heads=dict(DEFAULT_HEADS))
        mm, scheme = 2.0, "fs33"
    info = ModelInfo(name=f"{arch}-random", version="0", format="native", sha256="", config=cfg,
                     label_scheme=scheme, voxel_mm=mm)
    return LoadedModel(BrainFMNet(cfg).eval(), info)


def head_image(shape, spacing: float, *, seed: int = 0):
    """A head-like float32 Volume of ``shape`` filling the field of view, built slab by slab."""
    from brainfm.volume import Volume

    rng = np.random.default_rng(seed)
    data = np.empty(tuple(shape), np.float32)
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    yz = (axes[1][:, None] / 0.9) ** 2 + (axes[2][None, :] / 0.9) ** 2
    for i0 in range(0, shape[0], 32):
        x = axes[0][i0:i0 + 32, None, None]
        r = np.sqrt((x / 0.9) ** 2 + yz[None])
        slab = np.where(r < 1.0, 60.0, 0.0) + np.where(r < 0.7, 50.0, 0.0) + np.where(r < 0.15, -40.0, 0.0)
        slab += rng.normal(0, 2, slab.shape) * (r < 1.0)
        data[i0:i0 + 32] = slab
    aff = np.diag([spacing] * 3 + [1.0])
    aff[:3, 3] = -spacing * (np.asarray(shape) - 1) / 2.0
    return Volume(data, aff)


def crop_t1(data_root: str, edge: int):
    """The centre ``edge``^3 crop of the voxelmorph T1 (1 mm), or a synthetic head without the data."""
    from brainfm.io import read_volume

    path = Path(data_root) / VOXELMORPH_T1
    if not path.is_file():
        return head_image((edge,) * 3, 1.0), "synthetic head (voxelmorph T1 not found)"
    vol = read_volume(path)
    if edge <= 0:
        return vol, f"voxelmorph T1 {tuple(vol.shape)}"
    start = [max(0, (n - edge) // 2) for n in vol.shape]
    sl = tuple(slice(s, s + edge) for s in start)
    aff = vol.affine.copy()
    aff[:3, 3] = vol.affine[:3, :3] @ np.asarray(start, float) + vol.affine[:3, 3]
    from brainfm.volume import Volume

    return Volume(np.ascontiguousarray(vol.data[sl]), aff), f"voxelmorph T1, centre {edge}^3 crop"


def predict_child(arch: str, precision: str, channels_last: Optional[bool], data_root: str, crop: int,
                  save_npz: Optional[str], model: Optional[str] = None, threads: int = 2) -> Dict[str, Any]:
    """All tasks on the (cropped) voxelmorph T1 with one precision/memory-format setting."""
    import torch

    from brainfm.inference import Predictor

    torch.set_num_threads(threads)
    vol, what = crop_t1(data_root, crop)
    lm = build_model(arch, model)
    p = Predictor(lm, device="cpu", precision=precision, channels_last=channels_last)
    t0 = time.perf_counter()
    pred = p.predict(vol, tasks=["all"])
    wall = time.perf_counter() - t0
    if save_npz:
        arrays = {k: np.asarray(v.data) for k, v in pred.outputs.items() if k != "subject_in_atlas"}
        np.savez(save_npz, **arrays)
    tm = pred.metadata["timings"]
    return {"input": what, "shape": list(vol.shape), "network_shape": pred.metadata["network_shape"],
            "precision": pred.metadata["precision"], "channels_last": pred.metadata["channels_last"],
            "tiled": pred.metadata["tiled"], "forward_s": round(tm["forward"], 2), "wall_s": round(wall, 2),
            "threads": torch.get_num_threads()}


def train_child(channels_last: bool, precision: str, size: int, n_samples: int, steps: int, f_maps: int,
                threads: int = 2) -> Dict[str, Any]:
    """Training steps of the compact model on the CPU (real generator on a toy label head):
    seconds per step and the generator's share."""
    import sys

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pytest"))
    from fixtures import label_head

    from brainfm.generator import Generator, SubjectData
    from brainfm.training.config import TrainConfig, apply_overrides
    from brainfm.training.objectives import build_objective
    from brainfm.training.optim import from_config
    from brainfm.training.trainer import build_model as build_net

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = apply_overrides(TrainConfig(), [f"model.f_maps={f_maps}", "model.num_levels=5"])
    net = build_net(cfg)
    if channels_last:
        net = net.to(memory_format=torch.channels_last_3d)
    obj = build_objective(cfg.loss)
    opt, sched = from_config(net.parameters(), cfg.optim)
    subject = SubjectData(torch.from_numpy(label_head((176, 208, 176)).astype(np.int64)), name="toy")
    gen = Generator()
    amp = torch.bfloat16 if precision == "bf16" else None
    gen_t, step_t = [], []
    for i in range(steps + 1):  # the first step warms up (not counted)
        t0 = time.perf_counter()
        b = gen.sample(subject, n_samples=n_samples, size=size, generator=torch.Generator().manual_seed(i))
        t1 = time.perf_counter()
        x = b.inputs.contiguous(memory_format=torch.channels_last_3d) if channels_last else b.inputs
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            out = net(x)
            loss, _ = obj(out, b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        t2 = time.perf_counter()
        if i:
            gen_t.append(t1 - t0)
            step_t.append(t2 - t0)
    total = float(np.sum(step_t))
    return {"size": size, "n_samples": n_samples, "f_maps": f_maps, "channels_last": channels_last,
            "precision": precision, "steps": steps, "s_per_step": round(total / steps, 2),
            "it_per_s": round(steps / total, 4), "generator_s_per_step": round(float(np.mean(gen_t)), 2),
            "generator_share": round(float(np.sum(gen_t)) / total, 3), "threads": threads}


def make_input_child(shape, spacing: float, path: str) -> Dict[str, Any]:
    """Write a large synthetic head as uncompressed NIfTI (float32)."""
    from brainfm.io import write_volume

    vol = head_image(tuple(shape), spacing)
    write_volume(vol, Path(path))
    return {"path": path, "shape": list(shape), "spacing": spacing, "gb": round(vol.data.nbytes / 1e9, 2)}


def save_model_child(arch: str, path: str) -> Dict[str, Any]:
    """Save a random-weight model as a native checkpoint (for ``brainfm run --model``)."""
    from brainfm.models.checkpoint_native import save_native

    lm = build_model(arch)
    w, j = save_native(lm.net, path, info=lm.info)
    return {"weights": str(w), "json": str(j)}
