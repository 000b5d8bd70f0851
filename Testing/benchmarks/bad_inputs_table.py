"""The bad-input table: every scenario of ``Testing/pytest/bad_inputs.py`` through ``brainfm run``
(tiny random-weight model, CPU), as a Markdown table: case -> exit code -> first line of the
message -> what was written -> inputs unchanged (SHA-256) -> as expected.

    python Testing/benchmarks/bad_inputs_table.py [-o table.md] [--only NAME ...]

The full-disk and read-only cases use small tmpfs mounts when run as root (else the read-only case
uses a 0555 folder and the tmpfs case is reported as skipped); the ENOSPC-while-writing case injects
the error for one case of a batch.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "pytest"))


def _written(outcome, base: Path) -> str:
    from bad_inputs import out_entries

    if not outcome.written:
        return "nothing"
    entries = out_entries(outcome, base)
    out = outcome.scenario.out
    parts = []
    for e in entries:
        p = out / e
        if p.is_dir():
            n = sum(1 for f in p.rglob("*") if f.is_file())
            parts.append(f"{e}/ ({n} files)")
        else:
            parts.append(e)
    others = [w for w in outcome.written if not w.startswith(os.path.relpath(out, base) + os.sep)
              and w != os.path.relpath(out, base)]
    return ", ".join(parts + others) or "nothing"


def _cell(text: str, limit: int = 170) -> str:
    text = text.replace("|", "\\|").replace(str(Path(tempfile.gettempdir())), "/tmp")
    text = re.sub(r"/tmp/brainfm-bad-[^/ ]+/[^/ ]+/", "…/", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", default=None, help="also write the table to this Markdown file")
    parser.add_argument("--only", nargs="*", default=None, help="scenario names (default: all)")
    args = parser.parse_args(argv)

    import ckpt_factory
    from bad_inputs import SCENARIOS, out_entries, run_scenario

    root = Path(tempfile.mkdtemp(prefix="brainfm-bad-"))
    os.environ["BRAINFM_HOME"] = str(root / "cache")
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "BRAINFM_ATLAS"):
        os.environ.pop(var, None)
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    _net, model, _json = ckpt_factory.write_native(root / "model" / "tiny", heads={"T1": 1, "segmentation": 33})
    rows = ["| case | exit code | first line of the message | written | inputs unchanged | as expected |",
            "|---|---|---|---|---|---|"]
    failures = 0
    for name, build in SCENARIOS.items():
        if args.only and name not in args.only:
            continue
        base = root / name
        base.mkdir()
        scenario = build(base, model, ckpt_factory)
        if scenario.skip:
            rows.append(f"| {name} | — | skipped: {scenario.skip} | — | — | — |")
            continue
        try:
            outcome = run_scenario(scenario, base)
        finally:
            if scenario.cleanup is not None:
                scenario.cleanup()
        ok = (outcome.code == scenario.code and re.search(scenario.message, outcome.first_line) is not None
              and outcome.inputs_unchanged
              and (outcome.written == [] if scenario.written is None
                   else out_entries(outcome, base) == sorted(scenario.written)))
        if ok and scenario.check is not None:
            try:
                scenario.check(outcome)
            except AssertionError:
                ok = False
        failures += not ok
        note = f" ({scenario.note})" if scenario.note else ""
        rows.append(f"| {name} | {outcome.code} | {_cell(outcome.first_line)} | {_cell(_written(outcome, base))}{note} "
                    f"| {'yes' if outcome.inputs_unchanged else 'NO'} | {'yes' if ok else 'NO'} |")
        print(f"{name}: exit {outcome.code}", file=sys.stderr, flush=True)
    table = "\n".join(rows) + "\n"
    print(table)
    if args.output:
        Path(args.output).write_text(table, encoding="utf-8")
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
