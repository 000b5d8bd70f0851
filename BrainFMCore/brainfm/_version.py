"""The engine's version, in one place: ``brainfm.__version__`` and the package metadata
(``pyproject.toml``: ``version = {attr = "brainfm._version.__version__"}``) both read it here.

>>> from brainfm._version import __version__
>>> [part.isdigit() for part in __version__.split(".")]
[True, True, True]
"""
from __future__ import annotations

__version__ = "0.1.0"
