"""Benchmark of the Slicer path overhead around the engine (slicer-core wheel, no Slicer app).

What the BrainFM modules do for one Apply, on a 256^3 oblique volume node, timed step by step with
the real ``BrainFMSceneLib.job.BrainFMJob``:

1. export of the input node to the private temp folder (``export_volume_node``);
2. child ``python -m brainfm run ... --progress machine`` start -> first progress line, then
   model load (torch import + weights), reading the input, the engine's own prediction time
   (``summary.json`` ``timings.total``), writing the outputs, process exit;
3. import of every output into nodes (``import_results``): volumes, segmentation node, bias field,
   grid transform from the 256^3 x 3 displacement, structure-volume table.

The model is a tiny random-weight native model (``ckpt_factory.random_net``), so the engine's
segmentation is noise: before the import the benchmark replaces ``seg.nii.gz`` (and
``seg_volumes.csv``) with a realistic label map on the input grid - a SynthSeg training map from
the shared data when present (labels outside the fs33 list set to 0), else a code-generated map
with 32 structures. Overhead = total - engine time; the goal is < 5 s on 2 cores.

    .venv/bin/python Testing/benchmarks/bench_slicer_path.py [--size 256] [--tasks t1,seg,bias,reg]
        [--labels auto|synthseg|generated] [--json OUT.json] [--importtime] [--project-uncompressed]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "BrainFMSlicer" / "BrainFMCommon"))
sys.path.insert(0, str(REPO / "Testing" / "pytest"))

HEADS = {"T1": 1, "segmentation": 33, "distance": 4, "bias_field_log": 1, "registration": 3}


def oblique_affine(n: int) -> np.ndarray:
    """1 mm voxels rotated 17 deg about S and -9 deg about R, centred on the origin."""
    from fixtures import rotation

    a = np.eye(4)
    a[:3, :3] = rotation(2, 17) @ rotation(0, -9) @ np.diag([1.0, 1.0, 1.0])
    a[:3, 3] = -(a[:3, :3] @ np.full(3, (n - 1) / 2.0))
    return a


def realistic_labels(shape: Tuple[int, int, int], mode: str) -> Tuple[np.ndarray, str]:
    """An fs33 label map of ``shape``: a SynthSeg training map (shared data) or a generated one."""
    from brainfm.labels import get_scheme

    fs33 = np.asarray([v for v in get_scheme("fs33").fs_values if v != 0])
    path = REPO.parent / "shared" / "data" / "SynthSeg" / "data" / "training_label_maps" / "training_seg_01.nii.gz"
    if mode in ("auto", "synthseg") and path.is_file():
        import nibabel as nib
        from scipy import ndimage

        lab = np.asarray(nib.load(str(path)).dataobj).astype(np.int32)
        if lab.shape != tuple(shape):
            lab = ndimage.zoom(lab, [s / t for s, t in zip(shape, lab.shape)], order=0)
        lab[~np.isin(lab, fs33)] = 0
        return lab, f"SynthSeg {path.name} (fs33 labels)"
    if mode == "synthseg":
        raise SystemExit(f"shared SynthSeg map not found: {path}")
    # generated: ellipsoidal head, 32 structures = 4 radial shells x 8 angular sectors
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    r = np.sqrt((x / 0.8) ** 2 + (y / 0.85) ** 2 + (z / 0.75) ** 2)
    shell = np.clip((r / 0.9 * 4).astype(np.int32), 0, 3)
    sector = ((np.arctan2(y, x) + np.pi) / (2 * np.pi) * 8).astype(np.int32) % 8
    lab = fs33[(shell * 8 + sector) % len(fs33)].astype(np.int32)
    lab[r >= 0.9] = 0
    return lab, "generated (32 structures)"


def head_image(shape: Tuple[int, int, int]) -> np.ndarray:
    """Smooth head-like float32 image (``fixtures.blob_head`` voxels)."""
    from fixtures import blob_head

    return blob_head(shape).data


def write_model(folder: Path, *, f_maps: int) -> Path:
    from ckpt_factory import random_net

    from brainfm.models import ModelConfig, save_native

    net = random_net(ModelConfig(f_maps=f_maps, num_levels=3, num_groups=2, heads=HEADS), seed=0)
    weights, _ = save_native(net, folder / "bench.safetensors", info={
        "name": "bench-tiny", "version": "0", "label_scheme": "fs33"})
    return Path(weights)


def write_atlas(folder: Path) -> Path:
    from fixtures import blob_head

    from brainfm.io import write_volume

    a = np.eye(4)
    a[:3, 3] = -48.0
    return Path(write_volume(blob_head((96, 96, 96), a), folder / "atlas.nii.gz"))


class Clock:
    """Timestamps of named events (first occurrence wins)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.events: Dict[str, float] = {}
        self.lines: List[Tuple[float, str]] = []

    def mark(self, name: str) -> None:
        self.events.setdefault(name, time.perf_counter() - self.t0)

    def child_line(self, fraction: float, message: str) -> None:
        t = time.perf_counter() - self.t0
        self.lines.append((t, message))
        self.events.setdefault("first_line", t)
        if message.startswith("model loaded"):
            self.events.setdefault("model_loaded", t)
        if message.endswith(": reading"):
            self.events.setdefault("reading", t)
        if message.startswith("writing "):
            self.events.setdefault("writing", t)


def swap_seg(case: Path, labels: np.ndarray, affine: np.ndarray) -> int:
    """Replace the engine's (random-weight) seg outputs with ``labels`` on the input grid."""
    from BrainFMSceneLib.table_nodes import structure_rows

    from brainfm.io import write_volume
    from brainfm.labels import get_scheme
    from brainfm.volume import Volume

    write_volume(Volume(labels, affine), case / "seg.nii.gz")
    s = get_scheme("fs33")
    rows = structure_rows(labels, affine, names={v: s.name_of_fs(v) for v in s.fs_values if v})
    with open(case / "seg_volumes.csv", "w", encoding="utf-8") as fh:
        fh.write("value,name,voxels,volume_mm3\n")
        fh.writelines(f"{r['value']},{r['name']},{r['voxels']},{r['volume_mm3']}\n" for r in rows)
    return len(rows)


def time_each_import(case: Path, input_node: Any, keys: List[str]) -> Dict[str, float]:
    """Seconds to import each output on its own (a fresh import per key, nodes removed after)."""
    from BrainFMSceneLib.results import import_results
    from BrainFMSceneLib.scene_utils import remove_nodes

    import gc

    scene = input_node.GetScene()
    out = {}
    for key in keys:
        t = time.perf_counter()
        res = import_results(scene, case, input_node, keys=[key])
        out[key] = time.perf_counter() - t
        remove_nodes(scene, list(res.nodes.values()))
        del res  # free the nodes' voxels outside the timed part
        gc.collect()
    return out


def project_uncompressed(case: Path, input_node: Any, keys: List[str]) -> Tuple[float, float]:
    """(seconds to write, seconds to import) the same outputs as uncompressed ``.nii`` files.

    Writes with the engine's own writer (``brainfm.io.write_volume``) into a sibling folder whose
    ``summary.json`` points to the ``.nii`` files, then imports it like the job does.
    """
    import gc

    import nibabel as nib

    from BrainFMSceneLib.results import import_results
    from BrainFMSceneLib.scene_utils import remove_nodes
    from brainfm.io import write_volume
    from brainfm.volume import Volume

    summary = json.loads((case / "summary.json").read_text())
    plain = case.parent / "uncompressed"
    plain.mkdir()
    write_s = 0.0
    for key, info in summary["outputs"].items():
        path = case / str(info.get("path", ""))
        if not path.name.endswith(".nii.gz"):
            continue
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
        if data.ndim == 5:
            data = data[:, :, :, 0, :]
        vol = Volume(data, img.affine, {"intent": "displacement"} if key == "reg_displacement" else {})
        t = time.perf_counter()
        write_volume(vol, plain / f"{key}.nii")
        write_s += time.perf_counter() - t
        info["path"] = f"{key}.nii"
    shutil.copy(case / "seg_volumes.csv", plain / "seg_volumes.csv")
    (plain / "summary.json").write_text(json.dumps(summary))
    gc.collect()
    t = time.perf_counter()
    res = import_results(input_node.GetScene(), plain, input_node, keys=keys)
    import_s = time.perf_counter() - t
    remove_nodes(input_node.GetScene(), list(res.nodes.values()))
    return write_s, import_s


def importtime_top(python: str, code: str, n: int = 6) -> List[Tuple[str, float]]:
    """Largest cumulative imports (s) of ``python -X importtime -c code``."""
    proc = subprocess.run([python, "-X", "importtime", "-c", code], capture_output=True, text=True, check=False)
    rows = []
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((parts[2].rstrip(), int(parts[1]) / 1e6))
    top = [r for r in rows if not r[0].startswith("  ")]  # top-level imports only
    return sorted(top, key=lambda r: -r[1])[:n]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--tasks", default="t1,seg,bias,reg")
    ap.add_argument("--labels", default="auto", choices=("auto", "synthseg", "generated"))
    ap.add_argument("--f-maps", type=int, default=4)
    ap.add_argument("--json", default=None, help="write the numbers to this JSON file")
    ap.add_argument("--importtime", action="store_true", help="also show the child's largest imports")
    ap.add_argument("--project-uncompressed", action="store_true",
                    help="also time writing + importing the outputs as uncompressed .nii (a projection)")
    args = ap.parse_args()

    import slicer

    from BrainFMSceneLib.job import BrainFMJob
    from BrainFMSceneLib.parameters import RunParameters
    from BrainFMSceneLib.volume_nodes import add_volume, ijk_to_ras

    n = args.size
    work = Path(tempfile.mkdtemp(prefix="bench-slicer-path-"))
    try:
        shape = (n, n, n)
        affine = oblique_affine(n)
        labels, label_source = realistic_labels(shape, args.labels)
        scene = slicer.vtkMRMLScene()
        slicer.mrmlScene = scene
        node = add_volume(scene, head_image(shape), affine, "bench")
        params = RunParameters(tasks=tuple(args.tasks.split(",")), device="cpu", model=str(write_model(
            work, f_maps=args.f_maps)), atlas=str(write_atlas(work)))

        clock = Clock()
        job = BrainFMJob(scene, node, params, python=sys.executable, keep_temp=True)
        state: Dict[str, Any] = {}

        def on_progress(fraction: float, message: str) -> None:
            if message == "Starting BrainFM":
                clock.mark("export_done")
            elif message == "Importing results":
                clock.mark("import_start")
            elif message == "Done":
                clock.mark("import_done")

        def on_child_end(result: Any) -> None:  # before the job imports: swap in realistic labels
            clock.mark("child_exit")
            case = Path(job.output_dir) / "input"
            if result.ok and (case / "seg.nii.gz").is_file():
                t = time.perf_counter()
                state["segments"] = swap_seg(case, labels, ijk_to_ras(node))
                clock.t0 += time.perf_counter() - t  # not part of the path

        job.progress.connect(on_progress)
        job.runner.progress.connect(clock.child_line)
        job.runner.finished.connect(on_child_end)
        job.start()
        clock.mark("started")
        outcome = job.wait()
        clock.mark("end")
        if not outcome.ok:
            print("\n".join(outcome.process.log[-20:]))
            outcome.raise_for_error()
        e = clock.events
        case = Path(job.output_dir) / "input"
        summary = json.loads((case / "summary.json").read_text())
        engine = float(summary["timings"]["total"])
        keys = sorted(outcome.imported.nodes)
        per_key = time_each_import(case, node, [k for k in keys if k != "seg_labelmap"])
        total = e["end"]
        steps = {
            "export": e["export_done"],
            "process start -> first progress line": e["first_line"] - e["export_done"],
            "model load (torch import + weights)": e["model_loaded"] - e["first_line"],
            "engine (summary timings.total)": engine,
            "read input etc. in child": e["writing"] - e["model_loaded"] - engine,
            "write outputs (.nii.gz) + exit": e["child_exit"] - e["writing"],
            "import all outputs": e["import_done"] - e["import_start"],
        }
        overhead = total - engine
        print(f"Slicer path, {n}^3 oblique float32 input, tasks {args.tasks}, tiny model f_maps={args.f_maps}")
        print(f"labels for the segmentation import: {label_source}, {state.get('segments')} segments")
        for k, v in steps.items():
            print(f"  {k:<40s} {v:7.2f} s")
        print(f"  {'TOTAL':<40s} {total:7.2f} s")
        print(f"  {'OVERHEAD (total - engine)':<40s} {overhead:7.2f} s   (goal < 5 s)")
        print("engine timings:", summary["timings"])
        print("import per output (fresh import of that output alone):")
        for k, v in per_key.items():
            print(f"  {k:<40s} {v:7.2f} s")
        sizes = {p.name: round(p.stat().st_size / 2**20, 1) for p in sorted(case.iterdir()) if p.is_file()}
        print("output files (MiB):", sizes)
        result = {"size": n, "tasks": args.tasks, "steps": steps, "total": total, "overhead": overhead,
                  "engine_timings": summary["timings"], "import_per_output": per_key, "file_mib": sizes,
                  "segments": state.get("segments"), "labels": label_source}
        if args.project_uncompressed:
            write_s, import_s = project_uncompressed(case, node, [k for k in keys if k != "seg_labelmap"])
            projected = (overhead - steps["write outputs (.nii.gz) + exit"] + write_s
                         - steps["import all outputs"] + import_s)
            result["projected_uncompressed"] = {"write": write_s, "import": import_s, "overhead": projected}
            print(f"projection with uncompressed .nii outputs: write {write_s:.2f} s, import {import_s:.2f} s, "
                  f"overhead ~{projected:.2f} s")
        if args.importtime:
            code = "import brainfm.cli.run, brainfm.io, brainfm.report, brainfm.inference"
            result["child_imports"] = importtime_top(sys.executable, code)
            print("largest imports in the child:", [(m.strip(), round(s, 2)) for m, s in result["child_imports"]])
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        job.runner.keep_temp = False
        job.runner.cleanup()
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    sys.exit(main())
