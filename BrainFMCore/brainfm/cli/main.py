"""Entry point of the ``brainfm`` command (also ``python -m brainfm``).

Subcommands are modules of :mod:`brainfm.cli` with ``HELP`` (one line),
``add_parser(subparsers) -> parser`` and ``main(args) -> int``, registered in :data:`COMMANDS` by
module path and imported only when used, so ``brainfm --help`` stays fast. A command module of an
optional part of the engine (:data:`OPTIONAL_PARTS`: training, evaluation) imports that part when it
is loaded, so an installation without it lists the command as not available. Other packages can
add commands with :func:`register_command`.

Exit codes: 0 success, the :mod:`brainfm.errors` code of a failure (2 bad input, 3 model/
checkpoint, 4 resources, 5 output not writable / I/O error, 130 cancelled), 1 otherwise.

>>> sorted(COMMANDS)[:4]
['demo', 'eval-table', 'evaluate', 'finetune']
"""
from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType
from typing import Dict, List, Optional, Sequence, Tuple

from brainfm._version import __version__
from brainfm.errors import BrainFMError, CancelledError

#: command name -> (module path, one-line help)
COMMANDS: Dict[str, Tuple[str, str]] = {
    "run": ("brainfm.cli.run", "run BrainFM tasks on image files or folders"),
    "demo": ("brainfm.cli.demo_cmd", "make the sample scan and run every task on it (the main job)"),
    "info": ("brainfm.cli.info", "show versions, devices, model and atlas status"),
    "labels": ("brainfm.cli.labels_cmd", "export label tables (Slicer colour CSV, FreeSurfer LUT)"),
    "volumes": ("brainfm.cli.volumes_cmd", "gather the structure volumes of every case of an output folder into one CSV"),
    "models": ("brainfm.cli.models_cmd", "list, add, verify and remove the models of the local model store"),
    "prepare": ("brainfm.cli.prepare_cmd", "prepare training data (training extension)"),
    "train": ("brainfm.cli.train_cmd", "train a model with the synthetic generator (training extension)"),
    "finetune": ("brainfm.cli.finetune_cmd", "fine-tune a model (training extension)"),
    "evaluate": ("brainfm.cli.evaluate_cmd", "evaluate a model (training extension)"),
    "eval-table": ("brainfm.cli.eval_table_cmd", "compute the model-card evaluation table (training extension)"),
}

#: parts of the engine an installation may leave out; a command that needs a missing one is listed
#: as not available instead of failing
OPTIONAL_PARTS: Tuple[str, ...] = ("brainfm.training", "brainfm.evaluation")


def register_command(name: str, module: str, help: str) -> None:
    """Add (or replace) a subcommand implemented by ``module``."""
    COMMANDS[name] = (module, help)


def _is_part_of(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _load(module_path: str) -> Tuple[Optional[ModuleType], str]:
    """Import a command module: ``(module, "")``, or ``(None, what is not installed)`` when the
    module (or its package) or an optional part of the engine it needs is missing."""
    try:
        return importlib.import_module(module_path), ""
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if missing and _is_part_of(module_path, missing):
            return None, module_path
        if any(_is_part_of(missing, part) for part in OPTIONAL_PARTS):
            return None, missing
        raise


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The argument parser; only ``command``'s module is imported (all of them when None)."""
    parser = argparse.ArgumentParser(
        prog="brainfm",
        description="BrainFM: one brain foundation model for synthesis, segmentation, distance maps, "
                    "bias field, registration and super-resolution of any-contrast brain scans.",
    )
    parser.add_argument("--version", action="version", version=f"brainfm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_path, help_text) in COMMANDS.items():
        if command is not None and name != command:
            sub.add_parser(name, help=help_text, add_help=False)
            continue
        module, missing = _load(module_path)
        if module is None:
            p = sub.add_parser(name, help=help_text, description=f"{name}: not available in this installation")
            p.set_defaults(_module=None, _module_path=missing)
            continue
        p = module.add_parser(sub)
        p.set_defaults(_module=module, _module_path=module_path)
        if not any(a.dest == "debug" for a in p._actions):
            p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _command_of(argv: Sequence[str]) -> Optional[str]:
    for a in argv:
        if a in COMMANDS:
            return a
        if not a.startswith("-"):
            return None
    return None


def main(argv: Optional[List[str]] = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the subcommand and return its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_of(argv))
    args = parser.parse_args(argv)
    args._argv = list(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    module = getattr(args, "_module", None)
    if module is None:
        sys.stderr.write(f"brainfm {args.command}: not available in this installation "
                         f"({args._module_path} is not installed)\n")
        return 1
    machine = getattr(args, "progress", None) == "machine"
    debug = bool(getattr(args, "debug", False))
    try:
        return int(module.main(args) or 0)
    except BrainFMError as e:
        from brainfm.cli.progress import report_error

        report_error(e, machine=machine, debug=debug)
        return e.exit_code
    except OSError as e:  # an I/O failure that no layer turned into a message: still a plain one, exit 5
        from brainfm.cli.progress import report_error
        from brainfm.errors import StorageError

        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        report_error(StorageError(f"I/O error: {e.strerror or e}{where}; check the files and folders used and the "
                                  "free space"), machine=machine, debug=debug)
        return StorageError.exit_code
    except KeyboardInterrupt:
        from brainfm.cli.progress import report_error

        report_error(CancelledError("interrupted"), machine=machine, debug=debug)
        return CancelledError.exit_code
    except Exception as e:  # noqa: BLE001 - last resort: one line, traceback only with --debug
        from brainfm.cli.progress import report_error

        report_error(RuntimeError(f"internal error ({type(e).__name__}): {e}; rerun with --debug for the "
                                  "traceback and report it"), machine=machine, debug=debug)
        return 1
