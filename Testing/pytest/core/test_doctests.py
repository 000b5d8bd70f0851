"""The runnable examples in the public docstrings of the engine must keep working.

Every module of the ``brainfm`` package is collected by walking the package (nothing is listed by
hand), and every public module that defines public functions or classes must carry at least one
example that runs and shows a result the test checks (``# doctest: +SKIP`` lines and bare
statements such as imports do not count).
"""
from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil

import pytest

import brainfm

MODULES = ["brainfm"] + sorted(
    m.name for m in pkgutil.walk_packages(brainfm.__path__, prefix="brainfm.") if not m.name.endswith("__main__")
)

#: public modules whose examples cannot run in a test (each with the reason); keep this short
WITHOUT_CHECKED_EXAMPLES = {
    # measuring a model's quality reads the development data (../shared/data) and runs a model on
    # three 256^3 scans: minutes, not a docstring example
    "brainfm.evaluation.quality",
}


def _is_public(name: str) -> bool:
    return not any(part.startswith("_") for part in name.split("."))


def _public_definitions(module) -> list:
    """Public functions and classes defined by ``module`` itself (not imported into it)."""
    return [n for n, obj in vars(module).items()
            if not n.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
            and getattr(obj, "__module__", None) == module.__name__]


def _checked_examples(module) -> int:
    """Examples of ``module`` that run and whose output is compared."""
    return sum(1 for test in doctest.DocTestFinder().find(module) for ex in test.examples
               if not ex.options.get(doctest.SKIP) and ex.want.strip())


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write here
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed (run python -m doctest)"


def test_the_walk_collects_every_part_of_the_engine():
    for part in ("cli", "evaluation", "generator", "geometry", "inference", "io", "labels", "models", "report",
                 "tasks", "training"):
        assert any(m.startswith(f"brainfm.{part}.") for m in MODULES), part
    assert "brainfm.evaluation.metrics" in MODULES and "brainfm.cli.train_cmd" in MODULES


def test_public_modules_carry_checked_examples():
    """Guard against the test above silently checking nothing."""
    lacking = [name for name in MODULES
               if _is_public(name) and name not in WITHOUT_CHECKED_EXAMPLES
               and _public_definitions(importlib.import_module(name))
               and _checked_examples(importlib.import_module(name)) == 0]
    assert lacking == [], f"public modules without a runnable docstring example that shows a result: {lacking}"


def test_the_allow_list_is_needed():
    """Every allowed module exists, is public and really lacks checked examples (else drop it)."""
    for name in WITHOUT_CHECKED_EXAMPLES:
        module = importlib.import_module(name)
        assert _is_public(name) and _public_definitions(module)
        assert _checked_examples(module) == 0, f"{name} has checked examples now: remove it from the list"
