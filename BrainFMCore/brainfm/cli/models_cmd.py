"""``brainfm models``: the local model store (see :mod:`brainfm.models.store`).

    brainfm models list [--json]
    brainfm models add FILE [--name NAME] [--link | --reference] [--progress bar|machine|none]
    brainfm models verify NAME        (NAME may also be default or bundled)
    brainfm models remove NAME
    brainfm models path NAME          (NAME may also be default or bundled)

``add`` loads the file strictly (official BrainFM, Brain-ID or native format), records its format,
architecture, heads, label scheme, size and SHA-256, and copies it into the store (``--link``:
hard link; ``--reference``: keep it where it is). Afterwards ``--model NAME`` works in every
command, and the official model becomes the default. With ``--progress machine`` the new record is
printed as one ``BRAINFM_MODEL <json>`` line (for the Slicer modules).

>>> fmt_size(1_050_000_000), fmt_size(15_700_000)
('1.05 GB', '15.7 MB')
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List

HELP = "list, add, verify and remove the models of the local model store"
MODEL_PREFIX = "BRAINFM_MODEL"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("models", help=HELP, description=__doc__.split("\n\n")[0] if __doc__ else HELP)
    sub = p.add_subparsers(dest="models_command", metavar="ACTION")
    sub.required = True
    ls = sub.add_parser("list", help="show the stored models and which one is the default")
    ls.add_argument("--json", action="store_true", help="print JSON")
    add = sub.add_parser("add", help="add a weights file to the store (checked by loading it strictly)")
    add.add_argument("file", metavar="FILE", help="official BrainFM .pth, Brain-ID .pth or native .safetensors")
    add.add_argument("--name", default=None, help="name for --model (default: official, brainid or the "
                                                   "native model's name)")
    how = add.add_mutually_exclusive_group()
    how.add_argument("--link", dest="storage", action="store_const", const="link",
                     help="hard-link the file instead of copying it (same file system only)")
    how.add_argument("--reference", dest="storage", action="store_const", const="reference",
                     help="keep the file where it is and record its path")
    add.set_defaults(storage="copy")
    add.add_argument("--progress", default="bar", choices=("bar", "machine", "none"))
    ver = sub.add_parser("verify", help="hash a stored model again and compare with its record "
                                        "(default and bundled work too)")
    ver.add_argument("name", metavar="NAME")
    ver.add_argument("--progress", default="bar", choices=("bar", "machine", "none"))
    rm = sub.add_parser("remove", help="forget a stored model and delete its stored copy")
    rm.add_argument("name", metavar="NAME")
    path = sub.add_parser("path", help="print the weights file of NAME (default and bundled work too)")
    path.add_argument("name", metavar="NAME")
    return p


def fmt_size(n: Any) -> str:
    """Bytes as ``1.05 GB`` / ``15.7 MB``."""
    n = float(n or 0)
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def describe(d: Dict[str, Any]) -> List[str]:
    """Text lines for one model dict of :func:`brainfm.models.selection.available_models`."""
    heads = d.get("heads") or {}
    tasks = ",".join(t for t in d.get("tasks") or [] if t != "feat") or "features only"
    star = "*" if d.get("is_default") else " "
    return [
        f"{star} {d['name']:<18} {d.get('format', '?'):<17} {fmt_size(d.get('size_bytes')):>9}  "
        f"voxel {float(d.get('voxel_mm') or 1.0):g} mm  labels {d.get('label_scheme') or '-'}",
        f"    {len(heads)} heads, tasks {tasks}; quality {d.get('quality_text', 'unmeasured')}",
        f"    {d.get('path')}",
    ]


def _reporter(args: argparse.Namespace):
    from brainfm.cli.progress import ProgressReporter

    return ProgressReporter(getattr(args, "progress", "none"))


def _list(args: argparse.Namespace) -> int:
    from brainfm.errors import ModelNotAvailableError
    from brainfm.models import selection, store

    models = selection.available_models()
    if args.json:
        sys.stdout.write(json.dumps({"store": str(store.store_file()), "models": models}, indent=2) + "\n")
        return 0
    lines = [f"model store: {store.store_file()}"]
    for d in models:
        lines += describe(d)
    try:
        chosen = selection.default_model()
        lines.append(f"default (*): {chosen.spec} - {chosen.reason}")
    except ModelNotAvailableError as e:
        lines.append(("no models yet. " if not models else "no default model. ") + str(e))
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _add(args: argparse.Namespace) -> int:
    from brainfm.cli.progress import CancelOnSignal
    from brainfm.models import selection, store
    from brainfm.progress import CancelToken

    token = CancelToken()
    reporter = _reporter(args)
    try:
        with CancelOnSignal(token):
            record = store.add_model(args.file, name=args.name, storage=args.storage, progress=reporter,
                                     cancel=token)
    finally:
        reporter.close()
    d = next((m for m in selection.available_models() if m["name"] == record.name), record.to_dict())
    if args.progress == "machine":
        sys.stdout.write(f"{MODEL_PREFIX} {json.dumps(d)}\n")
    else:
        sys.stdout.write("\n".join([f"stored as {record.name!r} (use --model {record.name}):"] + describe(d)) + "\n")
    sys.stdout.flush()
    return 0


def _verify(args: argparse.Namespace) -> int:
    from brainfm.models import selection, store
    from brainfm.models.registry import names_bundled

    name = args.name
    if name == "default" and store.find_model(name) is None:
        name = selection.default_model().spec
    reporter = _reporter(args)
    try:
        if names_bundled(name):
            path, digest = selection.verify_bundled(progress=reporter)
        else:
            m = store.verify_model(name, progress=reporter)
            path, digest = m.path, m.sha256
    finally:
        reporter.close()
    sys.stdout.write(f"{args.name}: OK, {path} has the recorded SHA-256 {digest}\n")
    return 0


def _remove(args: argparse.Namespace) -> int:
    from brainfm.models import store

    m = store.remove_model(args.name)
    kept = " (the original file was left where it is)" if m.storage == "reference" else ""
    sys.stdout.write(f"removed {m.name!r}{kept}\n")
    return 0


def _path(args: argparse.Namespace) -> int:
    from brainfm.models.registry import resolve_model

    sys.stdout.write(f"{resolve_model(args.name)}\n")
    return 0


def main(args: argparse.Namespace) -> int:
    actions = {"list": _list, "add": _add, "verify": _verify, "remove": _remove, "path": _path}
    return actions[args.models_command](args)
