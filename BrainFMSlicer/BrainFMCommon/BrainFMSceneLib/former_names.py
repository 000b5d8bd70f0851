"""Former package names of the extension, kept so that scripts written for earlier versions work.

Earlier versions called the Qt-free scene library ``BrainFMLib`` and the module-support layer
``BrainFMModuleLib``. The packages with those names (next to the new ones in the BrainFMCommon
module folder) are thin aliases: each calls :func:`alias_package`, which makes the old name and
every ``<old>.<module>`` name refer to the *same* module objects as the new ones. Classes and
errors therefore stay identical: ``except BrainFMLib._errors.InputError`` catches the errors the
modules raise, and nothing is imported twice. New code imports the new names.

>>> import sys, BrainFMSceneLib
>>> alias_package("FormerNameExample", "BrainFMSceneLib", warn=False) is BrainFMSceneLib
True
>>> sys.modules["FormerNameExample.signals"] is BrainFMSceneLib.signals
True
"""
from __future__ import annotations

import importlib
import pkgutil
import sys
import warnings
from types import ModuleType
from typing import Dict

#: former package name -> current package name
RENAMED: Dict[str, str] = {"BrainFMLib": "BrainFMSceneLib", "BrainFMModuleLib": "BrainFMModuleSupport"}


def alias_package(old: str, new: str, *, warn: bool = True) -> ModuleType:
    """Make ``old`` and ``old.<module>`` refer to package ``new`` and its modules; return ``new``.

    Every module of ``new`` is imported now, so that ``import old.<module>`` finds it. With ``warn``
    a :class:`DeprecationWarning` names the new package.
    """
    package = importlib.import_module(new)
    for info in pkgutil.iter_modules(package.__path__):
        sys.modules[f"{old}.{info.name}"] = importlib.import_module(f"{new}.{info.name}")
    sys.modules[old] = package
    if warn:
        warnings.warn(f"{old} is now called {new}: import {new} instead ({old} keeps working as an alias).",
                      DeprecationWarning, stacklevel=3)
    return package
