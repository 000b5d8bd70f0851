"""The runnable examples in the public docstrings of the engine must keep working."""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import brainfm

# brainfm.evaluation has its own doctest test (Testing/pytest/training/test_evaluation.py).
MODULES = sorted(
    m.name for m in pkgutil.walk_packages(brainfm.__path__, prefix="brainfm.")
    if not m.name.startswith("brainfm.evaluation") and not m.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write here
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed (run python -m doctest)"


def test_public_modules_carry_examples():
    """Guard against the test above silently checking nothing: most modules have examples."""
    with_examples = [
        name for name in MODULES
        if doctest.DocTestFinder().find(importlib.import_module(name)) and any(
            t.examples for t in doctest.DocTestFinder().find(importlib.import_module(name)))
    ]
    assert len(with_examples) >= len(MODULES) // 2, sorted(set(MODULES) - set(with_examples))
