"""The engine's import graph follows its layers (BrainFMCore/DESIGN.md): imports point down only.

Every ``import`` of every module of ``brainfm`` is read with :mod:`ast` (imports inside functions
included: a lazy import is still a dependency), so a module that reaches up a layer fails here
even when the import only runs on some code path.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

import brainfm

PACKAGE_DIR = Path(brainfm.__file__).resolve().parent

#: layer of every top-level part of the package; a module may import its own layer or a lower one.
#: From DESIGN.md's picture (top to bottom), with training above inference (the trainer uses the
#: device probes) and report below evaluation (the evaluation figures are report montages).
RANKS: Dict[str, int] = {
    # the facade (``brainfm.Predictor``, ``brainfm.__version__``) and ``python -m brainfm``: nothing imports them
    "brainfm": 7, "brainfm.__main__": 7,
    # command line and the demo scan
    "brainfm.cli": 6, "brainfm.demo": 6,
    # the model card's evaluation table
    "brainfm.evaluation": 5,
    # training; files, tables and montages of predictions
    "brainfm.training": 4, "brainfm.report": 4,
    # inference and the tasks' post-processing
    "brainfm.inference": 3, "brainfm.tasks": 3,
    # networks and checkpoints, label tables, the synthetic generator
    "brainfm.models": 2, "brainfm.labels": 2, "brainfm.generator": 2,
    # files and grids
    "brainfm.io": 1, "brainfm.geometry": 1,
    # numpy-only types, errors, progress and its line protocol, the version
    "brainfm.volume": 0, "brainfm.errors": 0, "brainfm.progress": 0, "brainfm.progress_protocol": 0, "brainfm.metrics": 0,
    "brainfm._version": 0,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> Dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


MODULES = package_modules()


def imports_of(name: str, path: Path) -> Iterator[Tuple[str, List[str], int]]:
    """``(imported module, names taken from it, line)`` for every import of the ``brainfm`` package in
    the module ``name`` (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, [a.name for a in node.names], node.lineno


def engine_imports() -> List[Tuple[str, str, List[str], int]]:
    found = []
    for name, path in MODULES.items():
        for target, names, line in imports_of(name, path):
            if target == "brainfm" or target.startswith("brainfm."):
                found.append((name, target, names, line))
    return found


IMPORTS = engine_imports()


def layer_of(module: str) -> str:
    """The entry of :data:`RANKS` that ``module`` belongs to (longest matching prefix)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in RANKS:
            return prefix
    raise KeyError(module)


def test_the_scan_sees_the_whole_package():
    assert {"brainfm", "brainfm.cli.main", "brainfm.inference.predictor", "brainfm.training.trainer",
            "brainfm.evaluation.table", "brainfm.progress_protocol"} <= set(MODULES)
    assert len(IMPORTS) > 300  # the engine's modules import each other a lot: an empty scan would pass anything


def test_every_module_has_a_layer():
    unranked = sorted(m for m in MODULES if not any(m == p or m.startswith(p + ".") for p in RANKS))
    assert unranked == [], f"modules outside the layer table: {unranked} (add their package to RANKS)"


def test_nothing_outside_the_command_line_imports_it():
    """Only ``python -m brainfm`` (``brainfm/__main__.py``, the command's entry point) reaches in."""
    offenders = [f"{m}:{line} imports {t}" for m, t, _, line in IMPORTS
                 if (t == "brainfm.cli" or t.startswith("brainfm.cli.")) and layer_of(m) != "brainfm.cli"
                 and m != "brainfm.__main__"]
    assert offenders == []


def test_no_module_takes_names_from_the_package_root():
    """``import brainfm`` / ``from brainfm import X`` runs the facade (and its lazy ``Predictor``);
    modules import the submodule that owns a name (``brainfm._version``, ``brainfm.errors``, ...)."""
    submodules = {m.split(".")[1] for m in MODULES if m.count(".") >= 1}
    offenders = [f"{m}:{line} imports {names or 'brainfm'} from the package root" for m, t, names, line in IMPORTS
                 if t == "brainfm" and (not names or set(names) - submodules)]
    assert offenders == []


def test_imports_point_down_the_layers():
    upward = [f"{m}:{line} ({layer_of(m)}, layer {RANKS[layer_of(m)]}) imports {t} "
              f"({layer_of(t)}, layer {RANKS[layer_of(t)]})"
              for m, t, _, line in IMPORTS if RANKS[layer_of(t)] > RANKS[layer_of(m)]]
    assert upward == []


def test_commands_are_modules_of_the_command_line():
    from brainfm.cli.main import COMMANDS

    assert all(path.startswith("brainfm.cli.") and path in MODULES for path, _ in COMMANDS.values()), COMMANDS


@pytest.mark.parametrize("source, expected", [
    ("import brainfm.inference\n", ["brainfm.inference"]),
    ("def f():\n    from ..cli import progress\n", ["brainfm.cli"]),
    ("from . import quality\n", ["brainfm.models"]),
])
def test_the_scan_reads_lazy_and_relative_imports(tmp_path, source, expected):
    fake = tmp_path / "probe.py"
    fake.write_text(source)
    found = [t for t, _, _ in imports_of("brainfm.models.probe", fake)]
    assert found == expected
