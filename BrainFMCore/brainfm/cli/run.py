"""``brainfm run``: predict the requested tasks for image files, folders and DICOM series.

    brainfm run scan.nii.gz other.mgz folder/ -o OUT --tasks seg,t1 --device cuda --progress machine

Inputs (:mod:`brainfm.cli.inputs`): image files; folders (their supported images and DICOM series,
one case each; other files such as BIDS ``.json`` sidecars are listed as skipped); a ``.dcm`` file
(its whole series). Before the model is loaded the output folder is checked: never an input, inside
an input folder, or a case folder that would contain its input (exit 2); it must be writable and
have room for the outputs (exit 5); and every case's header is checked (:func:`_check_headers`): a
case that its header already shows to be unusable (2D, several frames without ``--frame``, a zero
voxel size, a singular affine, slices too thick...) fails at once with the message its full read
would give, so a run whose every input is bad never loads the model. Each case goes to
``OUT/<case>/`` (see :mod:`brainfm.report.save`); cases whose ``summary.json`` exists are skipped unless
``--overwrite`` when it names the same input and the tasks asked for; otherwise the case fails with
the reason (:func:`_other_results`). The model is loaded once. Under torchrun (env ``WORLD_SIZE`` > 1) rank ``r``
processes cases ``r, r + W, ...`` and pins ``cuda:LOCAL_RANK`` when ``--device auto``. A failed case
is reported (its message names the input) and the others still run; ``run_summary.json`` records
every case's status (``done``, ``skipped``, ``failed`` with the error, ``cancelled``) and the
skipped files; the exit code is the first failure's. SIGTERM/SIGINT cancel: the current case
folder is not written, exit 130. A run that produced nothing (every case failed, cancelled, or the
model could not be loaded) writes nothing and leaves no empty output folder behind.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from brainfm.cli.inputs import InputCase, case_names, collect_inputs  # noqa: F401 - case_names: public here too
from brainfm.errors import BrainFMError, CancelledError, InputError
from brainfm.progress import CancelToken, scaled

HELP = "run BrainFM tasks on image files or folders"
RUN_SUMMARY = "run_summary.json"

#: ``(metadata key, what)`` of the methods a run reports in its log, in this order
METHOD_LOG_LINES = (("bias_method", "bias field"), ("seg_method", "segmentation"), ("synth_method", "synthesis"),
                    ("reg_method", "registration"))


def positive(cast: Any) -> Any:
    """An argparse ``type`` that reads a number with ``cast`` and refuses zero and negative values.

    >>> positive(int)("96"), positive(float)("2.5")
    (96, 2.5)
    >>> positive(int)("0")
    Traceback (most recent call last):
      ...
    argparse.ArgumentTypeError: must be greater than 0, got 0
    """
    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
        return value
    parse.__name__ = cast.__name__  # argparse names the type in its messages
    return parse


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``run`` and ``demo``: model, device, precision, memory, tiling, progress."""
    p.add_argument("--tasks", default="all", help="all, or a comma list of t1,t2,flair,ct,sr,seg,dist,bias,reg,feat")
    p.add_argument("--model", default="default",
                   help="default (the best available model), a name from `brainfm models list`, bundled, "
                        "a registry id, or a weights file path")
    p.add_argument("--sha256", default=None, help="expected SHA-256 of the weights (refuse others)")
    p.add_argument("--atlas", default=None, help="registration atlas (path or id; default BRAINFM_ATLAS/cache/download; when none can be had, a fitted registration uses the MNI ICBM152 2009a template of the demo extra)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="auto: fp16 on CUDA GPUs; bf16 on CPUs with native bfloat16 (AVX512-BF16/AMX) for models "
                        "validated in bf16, else fp32; fp32 forces full precision")
    p.add_argument("--tile-size", type=positive(int), default=None, help="force tiling with cubes of N voxels")
    p.add_argument("--memory-gb", type=positive(float), default=None,
                   help="peak memory target in GB for each case (default: 60%% of the available RAM; "
                        "on CUDA: GPU memory of the forward)")
    p.add_argument("--output-frame", default="input", choices=("input", "1mm"),
                   help="outputs on the input grid (default) or the 1 mm RAS network grid")
    p.add_argument("--no-crop", action="store_true", help="do not crop to the foreground before the network")
    p.add_argument("--allow-anisotropic", action="store_true",
                   help="accept slices thicker than 10 mm (results on such thick slices are unreliable)")
    p.add_argument("--probabilities", action="store_true", help="also write segmentation probabilities")
    p.add_argument("--bias-method", default="auto", choices=("auto", "head", "fit"),
                   help="bias field from the model's head, or fitted to its segmentation; auto: the fit when "
                        "the model's measured quality says its head is not reliable (default auto)")
    p.add_argument("--seg-method", default="auto", choices=("auto", "head", "fit"),
                   help="segmentation labels from the model's head, or refined to the scan's intensities with the "
                        "model's probabilities as the prior (fit); auto: the refinement for models on a grid "
                        "coarser than 1 mm, except on CT (default auto)")
    p.add_argument("--synth-method", default="auto", choices=("auto", "head", "fit"),
                   help="synthetic T1/T2/FLAIR/CT from the model's head, or fitted to the scan: the model's contrast "
                        "per tissue on the scan's own detail (needs the refined segmentation); auto: the fit "
                        "whenever the segmentation is refined (default auto)")
    p.add_argument("--reg-method", default="auto", choices=("auto", "head", "fit"),
                   help="registration to the atlas from the model's head, or fitted to the segmentations of the "
                        "scan and of the atlas; auto: the fit when the model's measured quality says its head is "
                        "not reliable (default auto)")
    p.add_argument("--overwrite", action="store_true", help="replace existing case folders")
    p.add_argument("--progress", default="bar", choices=("bar", "machine", "none"))
    p.add_argument("--no-png", action="store_true", help="do not draw montage.png")
    p.add_argument("--no-compress", action="store_true",
                   help="write .nii instead of .nii.gz (faster; used by the Slicer modules)")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``run`` on an ``argparse`` sub-parser collection.

    >>> a = add_parser(argparse.ArgumentParser().add_subparsers()).parse_args(["scan.nii.gz", "-o", "out"])
    >>> a.inputs, a.tasks, a.model, a.device, a.precision, a.progress
    (['scan.nii.gz'], 'all', 'default', 'auto', 'auto', 'bar')
    """
    p = subparsers.add_parser("run", help=HELP, description=__doc__.split("\n\n")[0] if __doc__ else HELP)
    p.add_argument("inputs", nargs="+", metavar="INPUT_OR_FOLDER", help="image files or folders of them")
    p.add_argument("-o", "--output", required=True, help="output folder (one sub-folder per case)")
    p.add_argument("--frame", type=int, default=None, help="frame of a 4D input to use")
    add_model_options(p)
    return p


def expand_inputs(inputs: Sequence[str]) -> List[Path]:
    """The image files (first file of each DICOM series) that ``inputs`` stand for; see
    :func:`brainfm.cli.inputs.collect_inputs` for the cases and the skipped files."""
    return [c.path for c in collect_inputs(inputs)[0]]


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
    """``cuda:LOCAL_RANK`` for ``auto`` under a multi-process launch with CUDA, else ``device``.

    >>> pick_device("cpu", 2, 1), pick_device("auto", 1, None)   # explicit, or a single process
    ('cpu', 'auto')
    """
    if device == "auto" and world > 1 and local_rank is not None:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{local_rank % max(1, torch.cuda.device_count())}"
    return device


def make_predictor(args: argparse.Namespace, device: str):
    """Load the model once (``--model``/``--sha256``) into a Predictor; ``--precision auto`` is
    resolved by the predictor once the device (``--device auto`` included) and the model are known
    (:func:`brainfm.inference.device.resolve_precision`)."""
    from brainfm.inference import Predictor
    from brainfm.inference.device import select_device

    chosen = select_device(device)
    return Predictor.from_pretrained(args.model, expected_sha256=args.sha256, device=str(chosen),
                                     precision=args.precision,
                                     memory_budget_gb=args.memory_gb, tile_size=args.tile_size)


def _as_cases(files: Sequence[Any]) -> List[InputCase]:
    cases = [f if isinstance(f, InputCase) else InputCase(Path(f)) for f in files]
    for case, name in zip(cases, case_names(cases)):
        case.name = case.name or name
    return cases


def _named(exc: BaseException, case: InputCase) -> str:
    """The error message, starting with the input's name when it does not mention it yet."""
    text = str(exc) or type(exc).__name__
    names = {case.path.name, case.name} | ({case.series.name} if case.series is not None else set())
    return text if any(n and n in text for n in names) else f"{case.path.name}: {text}"


def process_cases(args: argparse.Namespace, files: Sequence[Any], out_root: Path, *, reporter,
                  token: CancelToken, extra: Optional[Dict[str, Any]] = None) -> Tuple[int, Dict[str, Any]]:
    """Run every case (:class:`~brainfm.cli.inputs.InputCase` or file path) into ``out_root``;
    returns (exit code, run summary). A failed case is recorded and the others go on; the exit
    code is the first failure's. ``run_summary.json`` is written when a case folder exists to
    describe (a case done or skipped): a run in which every case failed writes nothing. On cancel
    the cases not finished are recorded as ``cancelled`` and :class:`CancelledError` is raised.
    """
    from brainfm.cli.inputs import check_output_location
    from brainfm.cli.progress import report_error
    from brainfm.report import SUMMARY_NAME, CaseWriter
    from brainfm.report.summary import utc_now, write_json

    rank, world, local_rank = shard()
    cases = _as_cases(files)
    mine = [cases[i] for i in range(rank, len(cases), world)]
    check_output_location(out_root, mine, [])
    started = utc_now()
    t0 = time.perf_counter()
    records: List[Dict[str, Any]] = []
    todo: List[InputCase] = []
    code = 0
    requested = _tasks(args.tasks)
    for case in mine:
        folder = out_root / case.name
        if (folder / SUMMARY_NAME).is_file() and not args.overwrite:
            other = _other_results(folder / SUMMARY_NAME, case, requested)
            if other is None:
                records.append({**case.record(), "status": "skipped", "folder": str(folder),
                                "reason": "summary.json exists (use --overwrite)"})
                continue
            err = InputError(f"{folder} holds {other}; choose another output folder, or pass --overwrite to "
                             "replace that case folder with this run's results")
            report_error(err, machine=args.progress == "machine", debug=False)
            records.append({**case.record(), "status": "failed", "folder": str(folder),
                            "error": {"type": "InputError", "message": str(err), "exit_code": err.exit_code}})
            code = code or err.exit_code
        else:
            todo.append(case)
    todo, refused = _check_headers(todo, args)
    for case, exc in refused:  # before the model is loaded: a run of bad inputs fails in milliseconds
        record, failed = _failure(exc, case, args, out_root)
        records.append(record)
        code = code or failed
    name = RUN_SUMMARY if world == 1 else f"run_summary.rank{rank}.json"

    def summary() -> Dict[str, Any]:
        counts = {s: sum(r["status"] == s for r in records) for s in ("done", "skipped", "failed", "cancelled")}
        return {"format": "brainfm-run-summary/1", "started": started, "finished": utc_now(),
                "seconds": round(time.perf_counter() - t0, 3), "output": str(out_root), "rank": rank,
                "world_size": world, "argv": getattr(args, "_argv", sys.argv[1:]), "counts": counts,
                "cases": records, **(extra or {})}

    if todo:
        from brainfm.tasks import resolve_tasks  # imports torch: only when a case is to be run

        reporter(0.0, "loading the model")
        predictor = make_predictor(args, pick_device(args.device, world, local_rank))
        reporter(0.05, f"model loaded on {predictor.device}")
        try:  # what the model cannot do fails the run once, not every case
            resolve_tasks(requested, predictor.head_names, voxel_mm=predictor.voxel_mm)
        except InputError as exc:
            raise InputError(f"--tasks {args.tasks}: {exc}") from None
        span = 0.95 / len(todo)
        for n, case in enumerate(todo):
            start = 0.05 + n * span
            cb = scaled(reporter, start, start + span)
            t_case = time.perf_counter()
            try:
                token.raise_if_cancelled()
                cb(0.0, f"[{n + 1}/{len(todo)}] {case.name}: reading")
                vol = case.read(frame=getattr(args, "frame", None))
                # outputs are written as soon as each task is done: one task's outputs in memory at a time
                with CaseWriter(out_root / case.name, input_volume=vol, input_path=case.path, forbid=case.protected,
                                overwrite=args.overwrite, png=not args.no_png, title=case.name,
                                extra={"case": case.name, **(extra or {})},
                                compress=not getattr(args, "no_compress", False)) as writer:
                    pred = predictor.predict(vol, tasks=requested, output_frame=args.output_frame,
                                             atlas=args.atlas, crop_foreground=not args.no_crop,
                                             return_probabilities=args.probabilities,
                                             allow_anisotropic=getattr(args, "allow_anisotropic", False),
                                             bias_method=getattr(args, "bias_method", "auto"),
                                             reg_method=getattr(args, "reg_method", "auto"),
                                             seg_method=getattr(args, "seg_method", "auto"),
                                             synth_method=getattr(args, "synth_method", "auto"),
                                             progress=scaled(cb, 0.02, 0.85), cancel=token, on_output=writer.add)
                    saved = writer.finish(pred, progress=scaled(cb, 0.85, 1.0), cancel=token)
                warnings = list(saved.get("warnings", []))
                records.append({**case.record(), "status": "done", "folder": saved["folder"],
                                "seconds": round(time.perf_counter() - t_case, 3), "warnings": warnings})
                for w in warnings:
                    _note(reporter, f"brainfm: warning: {case.name}: {w}")
                for key, what in METHOD_LOG_LINES:  # which method made each result, in the log too
                    if pred.metadata.get(key):
                        _note(reporter, f"brainfm: {case.name}: {what}: {pred.metadata[key]}")
            except CancelledError:
                records += [{**c.record(), "status": "cancelled"} for c in todo[n:]]
                if _has_results(records):
                    write_json(summary(), out_root / name)
                raise
            except Exception as e:  # noqa: BLE001 - one bad case never stops the batch
                record, failed = _failure(e, case, args, out_root)
                records.append(record)
                code = code or failed
        reporter(1.0, "done")
    run = summary()
    if _has_results(records):  # a run whose every case failed leaves nothing behind
        write_json(run, out_root / name)
        _cohort_table(out_root, reporter, world=world, rank=rank)
    return code, run


def _check_headers(cases: Sequence[InputCase],
                   args: argparse.Namespace) -> Tuple[List[InputCase], List[Tuple[InputCase, InputError]]]:
    """``(cases to run, [(case, error)...])``: every case's header checked, before the model is loaded
    (:meth:`~brainfm.cli.inputs.InputCase.check_header` with ``--frame`` and ``--allow-anisotropic``:
    milliseconds a file, no voxel read). A refused case gets the error its full read would give; a
    header the check cannot judge (an unexpected failure) leaves the case to its full read.

    >>> ok, refused = _check_headers([InputCase(Path("a.dcm"), "a", error="cannot read a.dcm")], argparse.Namespace())
    >>> ok, [(c.name, str(e)) for c, e in refused]
    ([], [('a', 'cannot read a.dcm')])
    """
    frame, allow = getattr(args, "frame", None), bool(getattr(args, "allow_anisotropic", False))
    passed: List[InputCase] = []
    refused: List[Tuple[InputCase, InputError]] = []
    for case in cases:
        try:
            case.check_header(frame=frame, allow_anisotropic=allow)
        except InputError as exc:
            refused.append((case, exc))
            continue
        except Exception:  # noqa: BLE001 - not the check's to judge: the full read reports it
            pass
        passed.append(case)
    return passed, refused


def _failure(exc: BaseException, case: InputCase, args: argparse.Namespace,
             out_root: Path) -> Tuple[Dict[str, Any], int]:
    """Report the failure ``exc`` of ``case`` (its message names the input) and return its
    ``run_summary.json`` record and exit code. An :class:`OSError` is an I/O error
    (:func:`~brainfm.io.atomic.storage_error`); an exception that is no :class:`BrainFMError` an
    internal error."""
    from brainfm.cli.progress import report_error

    if isinstance(exc, BrainFMError):
        err: BaseException = exc
    elif isinstance(exc, OSError):
        from brainfm.io.atomic import storage_error

        err = storage_error(exc, getattr(exc, "filename", None) or out_root / case.name)
    else:
        err = RuntimeError(f"internal error ({type(exc).__name__}): {exc}; rerun with --debug for the "
                           "traceback and report it")
    message = _named(err, case)
    shown = type(err)(message) if isinstance(err, BrainFMError) else RuntimeError(message)
    report_error(shown, machine=args.progress == "machine", debug=bool(getattr(args, "debug", False)))
    exit_code = int(getattr(err, "exit_code", 1))
    return ({**case.record(), "status": "failed",
             "error": {"type": type(err).__name__, "message": message, "exit_code": exit_code}}, exit_code)


def _cohort_table(out_root: Path, reporter: Any, *, world: int, rank: int) -> None:
    """Gather the structure volumes of every case of ``out_root`` into one CSV (:mod:`brainfm.report.cohort`).
    With several processes each knows only its share: the first one says how to gather them once all
    are done. A case folder that cannot be read is named and leaves the batch's result unchanged."""
    from brainfm.report.cohort import COHORT_TABLE, write_cohort_table

    if world > 1:
        if rank == 0:
            _note(reporter, f"brainfm: once every process is done, `brainfm volumes {out_root}` gathers the "
                            f"structure volumes of all cases into {out_root / COHORT_TABLE}")
        return
    try:
        path = write_cohort_table(out_root)
    except (BrainFMError, OSError) as exc:
        _note(reporter, f"brainfm: warning: the structure volumes were not gathered into one table: {exc}")
        return
    if path is not None:
        _note(reporter, f"brainfm: structure volumes of every case: {path}")


def _other_results(summary_path: Path, case: InputCase, tasks: Sequence[str]) -> Optional[str]:
    """What a finished case folder holds when it is not this run's ``case``: the results of another
    input (a file of the same name elsewhere, or of a folder whose files were named differently) or
    of other tasks than ``tasks`` (``all`` asks for what the folder's run gave). None when the folder
    is this case's, and the run skips it. A summary this cannot read names nothing (None)."""
    from brainfm.report.summary import read_summary

    try:
        meta = read_summary(summary_path).get("metadata") or {}
        made_from, made = meta.get("input_path"), [str(t) for t in meta.get("tasks") or []]
    except (InputError, AttributeError, TypeError):
        return None
    if made_from and os.path.realpath(str(made_from)) not in {os.path.realpath(str(f)) for f in case.protected}:
        return f"the results of another input, {made_from}, not of {case.path}"
    missing = [t for t in tasks if t != "all" and t not in made]
    if made and missing:
        return (f"the results of tasks {', '.join(made)} of {case.path}, without {', '.join(missing)}, which "
                "this run asks for")
    return None


def _has_results(records: Sequence[Dict[str, Any]]) -> bool:
    """Whether the output folder holds case folders that ``run_summary.json`` should describe."""
    return any(r["status"] in ("done", "skipped") for r in records)


def _note(reporter: Any, text: str) -> None:
    """A line for the user on stderr (through the progress bar when one is shown)."""
    note = getattr(reporter, "note", None)
    if callable(note):
        note(text)
    else:
        sys.stderr.write(text + "\n")


def prepare_output(output: str, files: Sequence[Any], folders: Sequence[Path] = ()) -> Path:
    """Check the output folder (never an input, inside an input, or in an input folder; a case
    folder never containing its input) and create it."""
    from brainfm.cli.inputs import check_output_location
    from brainfm.io.atomic import make_folder

    out_root = Path(output).expanduser()
    check_output_location(out_root, _as_cases(files), folders)
    make_folder(out_root)
    return out_root


def preflight(out_root: Path, cases: Sequence[InputCase], args: argparse.Namespace, reporter: Any = None) -> None:
    """Before the model is loaded: the output folder must take new files and have room for the
    largest case's outputs (:class:`~brainfm.errors.StorageError` otherwise); warn when the whole
    batch may not fit."""
    import shutil

    from brainfm.cli.inputs import input_voxels, output_bytes
    from brainfm.io.atomic import check_writable

    sizes = []
    for c in cases:
        voxels = input_voxels(c, frame=getattr(args, "frame", None))
        if voxels:
            sizes.append(output_bytes(voxels, _tasks(args.tasks), compress=not getattr(args, "no_compress", False),
                                      probabilities=bool(getattr(args, "probabilities", False))))
    check_writable(out_root, need_bytes=max(sizes, default=0))
    try:
        free = shutil.disk_usage(str(out_root)).free
    except OSError:
        return
    if sum(sizes) > free:
        _note(reporter, f"brainfm: warning: {out_root} has {free / 1e9:.2f} GB free; the {len(cases)} cases may "
                        f"need up to {sum(sizes) / 1e9:.2f} GB: cases that do not fit will fail")


def _tasks(spec: str) -> List[str]:
    """The task names of ``--tasks``, checked against the known names (before any model is loaded;
    which of them the model offers is checked once it is)."""
    from brainfm.models.task_heads import TASK_HEADS

    tasks = [t.strip().lower() for t in str(spec).split(",") if t.strip()]
    if not tasks:
        raise InputError("--tasks is empty; use 'all' or a comma list such as seg,t1")
    unknown = [t for t in tasks if t != "all" and t not in TASK_HEADS]
    if unknown:
        raise InputError(f"--tasks: unknown task {', '.join(map(repr, unknown))}; known tasks: "
                         f"{', '.join(TASK_HEADS)} or 'all'")
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
    from brainfm.cli.inputs import check_output_location
    from brainfm.io.atomic import make_folder, remove_if_empty

    cases, skipped, folders = collect_inputs(args.inputs)
    _tasks(args.tasks)
    out_root = Path(args.output).expanduser()
    check_output_location(out_root, cases, folders)
    created = make_folder(out_root)
    for s in skipped:
        sys.stderr.write(f"brainfm: skipped {s['path']}: {s['reason']}\n")
    runs: List[Dict[str, Any]] = []

    def body(reporter, token) -> int:
        preflight(out_root, cases, args, reporter)
        code, run = process_cases(args, cases, out_root, reporter=reporter, token=token,
                                  extra={"skipped_files": skipped} if skipped else None)
        runs.append(run)
        return code

    try:
        code = run_with_reporting(args, body)
    finally:
        remove_if_empty(created)  # a run that wrote nothing (model error, cancel) leaves no empty folder
    if args.progress != "machine" and runs:
        counts = runs[0]["counts"]
        where = out_root if _has_results(runs[0]["cases"]) else "nothing written (the errors are above)"
        sys.stderr.write(f"brainfm: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed"
                         f"{', %d files skipped' % len(skipped) if skipped else ''} -> {where}\n")
    return code
