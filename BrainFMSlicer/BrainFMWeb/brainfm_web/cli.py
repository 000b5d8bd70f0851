"""``brainfm-web``: start the BrainFM web app (localhost by default) and print its address.

>>> args = parse_args(["--port", "9000", "--allowed-dir", "."])
>>> args.host, args.port, args.max_upload_mb
('127.0.0.1', 9000, 1024.0)
"""
from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import os
import shutil
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from brainfm_web import __version__
from brainfm_web.files import DEFAULT_MAX_UPLOAD_MB, AllowedFolders, max_upload_bytes, new_token, workspace


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options of ``brainfm-web``."""
    p = argparse.ArgumentParser(
        prog="brainfm-web", description="BrainFM in the browser: open a scan, run BrainFM, see and download the results.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: only this machine; reach it over SSH port forwarding)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    p.add_argument("--allowed-dir", action="append", default=None, metavar="DIR",
                   help="folder whose scans and models may be opened by path (repeatable; default: the current folder)")
    p.add_argument("--model", action="append", default=[], metavar="FILE",
                   help="weights file to offer besides the registry's models (repeatable; the last one is preselected)")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                   help=f"largest accepted upload in MiB (default {DEFAULT_MAX_UPLOAD_MB:g})")
    p.add_argument("--workdir", default=None, help="parent of the private working folder (default: the system temp folder)")
    p.add_argument("--python", default=None,
                   help="Python interpreter with brainfm and torch for the runs (default: this one)")
    p.add_argument("--token", default=os.environ.get("BRAINFM_WEB_TOKEN"),
                   help="access token (default: $BRAINFM_WEB_TOKEN or a new random one)")
    p.add_argument("--version", action="version", version=f"brainfm-web {__version__}")
    return p.parse_args(argv)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``brainfm-web``."""
    args = parse_args(argv)
    try:
        allowed = AllowedFolders(args.allowed_dir or [Path.cwd()])
        limit = max_upload_bytes(args.max_upload_mb)
        models = [str(Path(m).expanduser().resolve()) for m in args.model]
        for m in models:
            if not Path(m).is_file():
                raise FileNotFoundError(f"model file not found: {m}")
    except Exception as exc:  # noqa: BLE001 - bad options: one clear line
        print(f"brainfm-web: {exc}", file=sys.stderr)
        return 2
    if args.python is None and importlib.util.find_spec("brainfm.inference") is None:
        print("brainfm-web: the BrainFM engine is not installed in this environment: "
              "pip install ./BrainFMCore (or pass --python with an interpreter that has it)", file=sys.stderr)
        return 2
    token = args.token or new_token()
    if not _is_loopback(args.host):
        print(f"brainfm-web: WARNING: listening on {args.host}: anyone who can reach this address and has the "
              "token can read the allowed folders. Prefer the default 127.0.0.1 and SSH port forwarding.",
              file=sys.stderr)
    workdir = workspace(parent=args.workdir)
    sys.argv = sys.argv[:1]  # trame parses sys.argv itself; everything it needs is passed below

    from brainfm_web.app import BrainFMWebApp

    app = BrainFMWebApp(allowed=allowed, workdir=workdir, models=models, python=args.python,
                        max_upload_bytes=limit, token=token)
    app.server.cli.set_defaults(authKey=token)

    def announce(**_):
        port = app.server.port
        print(f"BrainFM Web is ready: http://localhost:{port}/?secret={token}", flush=True)
        print(f"  allowed folders: {', '.join(str(r) for r in allowed.roots)}", flush=True)

    app.server.controller.on_server_ready.add(announce)
    try:
        app.server.start(host=args.host, port=args.port, open_browser=False, show_connection_info=False,
                         timeout=0)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
