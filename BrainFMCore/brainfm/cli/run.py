"""``brainfm run``: predict the requested tasks for image files (or folders of them).

    brainfm run scan.nii.gz other.mgz folder/ -o OUT --tasks seg,t1 --device cuda --progress machine

Each case goes to ``OUT/<case>/`` (see :mod:`brainfm.report.save`); cases whose ``summary.json``
exists are skipped unless ``--overwrite``. The model is loaded once. Under torchrun (env
``WORLD_SIZE`` > 1) rank ``r`` processes files ``r, r + W, ...`` and pins ``cuda:LOCAL_RANK``
when ``--device auto``. A bad case is reported and the others still run; the exit code is the
first failure's. SIGTERM/SIGINT cancel: the current case folder is not written, exit 130.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from brainfm.errors import InputError, ResourceError
from brainfm.progress import CancelToken, scaled

HELP = "run BrainFM tasks on image files or folders"
RUN_SUMMARY = "run_summary.json"


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``run`` and ``demo``: model, device, precision, memory, tiling, progress."""
    p.add_argument("--tasks", default="all", help="all, or a comma list of t1,t2,flair,ct,sr,seg,dist,bias,reg,feat")
    p.add_argument("--model", default="default", help="default (bundled), a registry id, or a weights file path")
    p.add_argument("--sha256", default=None, help="expected SHA-256 of the weights (refuse others)")
    p.add_argument("--atlas", default=None, help="registration atlas (path or id; default BRAINFM_ATLAS/cache)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="auto: bf16 on CPUs with native bfloat16 (AVX512-BF16/AMX), else fp32; fp32 forces full precision")
    p.add_argument("--tile-size", type=int, default=None, help="force tiling with cubes of N voxels")
    p.add_argument("--memory-gb", type=float, default=None,
                   help="peak memory target in GB for each case (default: 60%% of the available RAM; "
                        "on CUDA: GPU memory of the forward)")
    p.add_argument("--output-frame", default="input", choices=("input", "1mm"),
                   help="outputs on the input grid (default) or the 1 mm RAS network grid")
    p.add_argument("--no-crop", action="store_true", help="do not crop to the foreground before the network")
    p.add_argument("--allow-anisotropic", action="store_true",
                   help="accept voxels more anisotropic than 8:1 (results on very thick slices are unreliable)")
    p.add_argument("--probabilities", action="store_true", help="also write segmentation probabilities")
    p.add_argument("--overwrite", action="store_true", help="replace existing case folders")
    p.add_argument("--progress", default="bar", choices=("bar", "machine", "none"))
    p.add_argument("--no-png", action="store_true", help="do not draw montage.png")
    p.add_argument("--no-compress", action="store_true",
                   help="write .nii instead of .nii.gz (faster; used by the Slicer modules)")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("run", help=HELP, description=__doc__.split("\n\n")[0] if __doc__ else HELP)
    p.add_argument("inputs", nargs="+", metavar="INPUT_OR_FOLDER", help="image files or folders of them")
    p.add_argument("-o", "--output", required=True, help="output folder (one sub-folder per case)")
    p.add_argument("--frame", type=int, default=None, help="frame of a 4D input to use")
    add_model_options(p)
    return p


def expand_inputs(inputs: Sequence[str]) -> List[Path]:
    """Files as given; folders expand (non-recursively, sorted) to their supported image files."""
    from brainfm.io.formats import EXTENSIONS, split_ext

    files: List[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.iterdir()
                           if f.is_file() and not f.name.startswith(".") and split_ext(f)[1] in EXTENSIONS)
            if not found:
                raise InputError(f"folder {p} contains no supported image file ({', '.join(EXTENSIONS)})")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise InputError(f"input not found: {p}")
    return files


def case_names(files: Sequence[Path]) -> List[str]:
    """Case folder names: file names without extension, made unique with ``_2``, ``_3``...

    >>> case_names([Path("a/x.nii.gz"), Path("b/x.nii"), Path("y.mgz")])
    ['x', 'x_2', 'y']
    """
    from brainfm.io.formats import split_ext

    seen: Dict[str, int] = {}
    names = []
    for f in files:
        stem = split_ext(f)[0]
        stem = Path(stem).name or "case"
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return names


def shard() -> Tuple[int, int, Optional[int]]:
    """(rank, world size, local rank) from torchrun's environment (0, 1, None when absent)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = os.environ.get("LOCAL_RANK")
        local_rank = int(local) if local is not None else None
    except ValueError as e:
        raise InputError(f"bad torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {e}") from e
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"bad torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return rank, world, local_rank


def pick_device(device: str, world: int, local_rank: Optional[int]) -> str:
    """``cuda:LOCAL_RANK`` for ``auto`` under a multi-process launch with CUDA, else ``device``."""
    if device == "auto" and world > 1 and local_rank is not None:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{local_rank % max(1, torch.cuda.device_count())}"
    return device


def make_predictor(args: argparse.Namespace, device: str):
    """Load the model once (``--model``/``--sha256``) into a Predictor."""
    from brainfm.inference import Predictor

    return Predictor.from_pretrained(args.model, expected_sha256=args.sha256, device=device,
                                     precision=args.precision, memory_budget_gb=args.memory_gb,
                                     tile_size=args.tile_size)


def process_cases(args: argparse.Namespace, files: Sequence[Path], out_root: Path, *, reporter,
                  token: CancelToken, extra: Optional[Dict[str, Any]] = None) -> Tuple[int, Dict[str, Any]]:
    """Run every case in ``files`` into ``out_root``; returns (exit code, run summary)."""
    from brainfm.io import read_volume
    from brainfm.io.atomic import same_path
    from brainfm.report import SUMMARY_NAME, CaseWriter
    from brainfm.report.summary import utc_now, write_json

    rank, world, local_rank = shard()
    names = case_names(files)
    mine = list(range(rank, len(files), world))
    for i in mine:
        for bad in (out_root, out_root / names[i]):
            if same_path(bad, files[i]):
                raise InputError(f"output {bad} is the input file {files[i]}; choose another output folder")
    started = utc_now()
    t0 = time.perf_counter()
    cases: List[Dict[str, Any]] = []
    todo = []
    for i in mine:
        folder = out_root / names[i]
        if (folder / SUMMARY_NAME).is_file() and not args.overwrite:
            cases.append({"case": names[i], "input": str(files[i]), "status": "skipped",
                          "folder": str(folder), "reason": "summary.json exists (use --overwrite)"})
        else:
            todo.append(i)
    code = 0
    if todo:
        reporter(0.0, "loading the model")
        predictor = make_predictor(args, pick_device(args.device, world, local_rank))
        reporter(0.05, f"model loaded on {predictor.device}")
        span = 0.95 / len(todo)
        for n, i in enumerate(todo):
            token.raise_if_cancelled()
            start = 0.05 + n * span
            cb = scaled(reporter, start, start + span)
            name, path = names[i], files[i]
            t_case = time.perf_counter()
            try:
                cb(0.0, f"[{n + 1}/{len(todo)}] {name}: reading")
                vol = read_volume(path, frame=getattr(args, "frame", None))
                # outputs are written as soon as each task is done: one task's outputs in memory at a time
                with CaseWriter(out_root / name, input_volume=vol, input_path=path, overwrite=args.overwrite,
                                png=not args.no_png, title=name, extra={"case": name, **(extra or {})},
                                compress=not getattr(args, "no_compress", False)) as writer:
                    pred = predictor.predict(vol, tasks=_tasks(args.tasks), output_frame=args.output_frame,
                                             atlas=args.atlas, crop_foreground=not args.no_crop,
                                             return_probabilities=args.probabilities,
                                             allow_anisotropic=getattr(args, "allow_anisotropic", False),
                                             progress=scaled(cb, 0.02, 0.85), cancel=token, on_output=writer.add)
                    summary = writer.finish(pred, progress=scaled(cb, 0.85, 1.0), cancel=token)
                cases.append({"case": name, "input": str(path), "status": "done", "folder": summary["folder"],
                              "seconds": round(time.perf_counter() - t_case, 3),
                              "warnings": summary.get("warnings", [])})
            except (InputError, ResourceError) as e:
                from brainfm.cli.progress import report_error

                report_error(e, machine=args.progress == "machine")
                cases.append({"case": name, "input": str(path), "status": "failed",
                              "error": {"type": type(e).__name__, "message": str(e)}})
                code = code or e.exit_code
        reporter(1.0, "done")
    run = {"format": "brainfm-run-summary/1", "started": started, "finished": utc_now(),
           "seconds": round(time.perf_counter() - t0, 3), "output": str(out_root),
           "rank": rank, "world_size": world, "argv": getattr(args, "_argv", sys.argv[1:]), "cases": cases, **(extra or {})}
    name = RUN_SUMMARY if world == 1 else f"run_summary.rank{rank}.json"
    write_json(run, out_root / name)
    return code, run


def prepare_output(output: str, files: Sequence[Path]) -> Path:
    """Validate and create the output folder: never an input file nor inside one."""
    from brainfm.io.atomic import same_path

    out_root = Path(output).expanduser()
    for f in files:
        if same_path(out_root, f) or any(same_path(parent, f) for parent in out_root.parents):
            raise InputError(f"output folder {out_root} is (or is inside) the input file {f}; "
                             "choose another output folder")
    if out_root.exists() and not out_root.is_dir():
        raise InputError(f"output {out_root} exists and is not a folder; -o takes a folder")
    try:
        out_root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the output folder {out_root}: {e}") from e
    return out_root


def _tasks(spec: str) -> List[str]:
    tasks = [t.strip().lower() for t in str(spec).split(",") if t.strip()]
    if not tasks:
        raise InputError("--tasks is empty; use 'all' or a comma list such as seg,t1")
    return tasks


def run_with_reporting(args: argparse.Namespace, body) -> int:
    """Run ``body(reporter, token)`` with the progress reporter and signal-driven cancellation."""
    from brainfm.cli.progress import CancelOnSignal, ProgressReporter

    reporter = ProgressReporter(args.progress)
    token = CancelToken()
    try:
        with CancelOnSignal(token):
            return int(body(reporter, token))
    finally:
        reporter.close()


def main(args: argparse.Namespace) -> int:
    files = expand_inputs(args.inputs)
    out_root = prepare_output(args.output, files)

    runs = []

    def body(reporter, token) -> int:
        code, run = process_cases(args, files, out_root, reporter=reporter, token=token)
        runs.append(run)
        return code

    code = run_with_reporting(args, body)
    if args.progress != "machine" and runs:
        counts = {s: sum(c["status"] == s for c in runs[0]["cases"]) for s in ("done", "skipped", "failed")}
        sys.stderr.write(f"brainfm: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed "
                         f"-> {out_root}\n")
    return code
