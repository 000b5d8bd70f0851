"""Dependency check and installation logic (Qt-free; pip, metadata and torch installer injectable).

Rules: check versions with ``importlib.metadata`` (never by importing); install ``brainfm`` with an
exact pin and ``--no-deps`` from the bundled source folder or wheel; never let pip replace
``torch``/``torchvision``/``SimpleITK``/``requests`` (skip list); install the other missing
dependencies one by one; torch comes from the PyTorch extension (``PyTorchUtils``), called through
an injected callable; ask one confirmation for everything; report ``needs_restart`` when an already
imported package was replaced.

>>> from BrainFMSceneLib.install import InstallLogic
>>> calls = []
>>> versions = {"torch": "2.5.1", "numpy": "1.26.4", "brainfm": None}
>>> logic = InstallLogic(brainfm_version="0.1.0", pip_runner=calls.append,
...                      metadata_reader=versions.get, requires_reader=lambda name: ["torch>=2.5", "numpy>=1.22"],
...                      imported_modules=lambda: set())
>>> report = logic.setup(confirm=lambda text: True)
>>> calls
[['install', '--no-deps', 'brainfm==0.1.0']]
"""
from __future__ import annotations

import importlib.metadata as importlib_metadata
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Set, Union

from BrainFMSceneLib import __version__ as LIB_VERSION
from BrainFMSceneLib._errors import BrainFMError

#: packages pip must never install or replace inside Slicer
SKIP_PACKAGES = ("torch", "torchvision", "torchaudio", "SimpleITK", "requests")
#: the engine's requirement (``brainfm`` reads PyTorch checkpoints safely with ``torch.serialization.safe_globals``)
TORCH_REQUIREMENT = ">=2.5"
#: distribution name -> import name (for needs_restart)
IMPORT_NAMES = {"scikit-image": "skimage", "pillow": "PIL", "pyyaml": "yaml", "brainfm": "brainfm"}


class InstallError(BrainFMError):
    """Installation failed or was declined; ``restart_required`` tells the GUI to offer a restart."""

    def __init__(self, message: str, *, restart_required: bool = False) -> None:
        super().__init__(message)
        self.restart_required = restart_required


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name (``SimpleITK`` -> ``simpleitk``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_version(name: str) -> Optional[str]:
    """Installed version from the package metadata (None when not installed); never imports it."""
    try:
        return importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
        return None


def installed_requires(name: str) -> List[str]:
    """``Requires-Dist`` lines of an installed distribution."""
    try:
        return list(importlib_metadata.requires(name) or [])
    except importlib_metadata.PackageNotFoundError:
        return []


def default_pip_runner(args: List[str]) -> None:
    """Run ``python -m pip <args>`` (argument list, no shell); raises InstallError on failure."""
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise InstallError(f"pip {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def satisfies(version: Optional[str], specifier: str) -> bool:
    """True when ``version`` meets ``specifier`` (e.g. ``>=2.1,<3``); False when not installed."""
    if version is None:
        return False
    if not specifier:
        return True
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version

        return Version(version) in SpecifierSet(specifier)
    except ImportError:  # pragma: no cover - Slicer ships packaging
        m = re.match(r"^(==|>=)\s*([\w.]+)$", specifier.strip())
        if not m:
            return True
        key = lambda v: [int(x) if x.isdigit() else 0 for x in re.split(r"[.+]", v)]  # noqa: E731
        return version == m.group(2) if m.group(1) == "==" else key(version) >= key(m.group(2))


def split_requirement(req: str) -> Optional[tuple]:
    """``(name, specifier)`` of a ``Requires-Dist`` line, or None when its marker excludes it here."""
    try:
        from packaging.requirements import Requirement

        r = Requirement(req)
        if r.marker is not None and not r.marker.evaluate({"extra": ""}):
            return None
        return r.name, str(r.specifier)
    except ImportError:  # pragma: no cover
        body, _, marker = req.partition(";")
        if "extra" in marker:
            return None
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:\[[^\]]*\])?\s*(.*)$", body)
        return (m.group(1), m.group(2).strip()) if m else None


@dataclass
class InstallReport:
    """What :meth:`InstallLogic.setup` did."""

    installed: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    needs_restart: bool = False


class InstallLogic:
    """Check and install BrainFM's Python dependencies inside Slicer's Python.

    :param brainfm_version: exact version to pin (the extension's version).
    :param source: bundled ``BrainFMCore`` folder or a wheel; else ``brainfm==<version>`` from PyPI.
    :param pip_runner: ``f(args)`` running pip with an argument list (e.g. ``slicer.util.pip_install``).
    :param metadata_reader: ``f(dist_name) -> version | None`` (default ``importlib.metadata``).
    :param requires_reader: ``f(dist_name) -> [Requires-Dist lines]``.
    :param torch_installer: ``f(requirement)`` installing torch (``PyTorchUtilsLogic().installTorch``).
    :param imported_modules: ``f() -> set of imported module names`` (default ``sys.modules``).
    :param log: ``f(text)`` for progress messages.
    """

    def __init__(self, *, brainfm_version: str = LIB_VERSION, source: Optional[Union[str, Path]] = None,
                 pip_runner: Callable[[List[str]], None] = default_pip_runner,
                 metadata_reader: Callable[[str], Optional[str]] = installed_version,
                 requires_reader: Callable[[str], List[str]] = installed_requires,
                 torch_installer: Optional[Callable[[str], None]] = None,
                 imported_modules: Callable[[], Set[str]] = lambda: set(sys.modules),
                 log: Callable[[str], None] = lambda text: None,
                 skip_packages: Sequence[str] = SKIP_PACKAGES, torch_requirement: str = TORCH_REQUIREMENT) -> None:
        self.brainfm_version = brainfm_version
        self.source = Path(source) if source else None
        self.pip_runner = pip_runner
        self.metadata_reader = metadata_reader
        self.requires_reader = requires_reader
        self.torch_installer = torch_installer
        self.imported_modules = imported_modules
        self.log = log
        self.skip = {canonical(p) for p in skip_packages}
        self.torch_requirement = torch_requirement

    # -- checks -----------------------------------------------------------------------------------
    def torch_ok(self) -> bool:
        return satisfies(self.metadata_reader("torch"), self.torch_requirement)

    def brainfm_ok(self) -> bool:
        return self.metadata_reader("brainfm") == self.brainfm_version

    def missing_dependencies(self, requirements: Optional[Iterable[str]] = None) -> List[str]:
        """Requirements of brainfm (not on the skip list) that are missing or too old."""
        reqs = self.requires_reader("brainfm") if requirements is None else list(requirements)
        missing = []
        for line in reqs:
            parsed = split_requirement(line)
            if parsed is None or canonical(parsed[0]) in self.skip:
                continue
            if not satisfies(self.metadata_reader(parsed[0]), parsed[1]):
                missing.append(f"{parsed[0]}{parsed[1]}")
        return missing

    def plan(self) -> List[str]:
        """Human-readable list of what :meth:`setup` would install (empty: all is in place)."""
        items = []
        if not self.torch_ok():
            items.append(f"PyTorch{self.torch_requirement} (through the PyTorch extension)")
        if not self.brainfm_ok():
            items.append(f"brainfm=={self.brainfm_version}")
        elif self.missing_dependencies():
            items.extend(self.missing_dependencies())
        return items

    def is_ready(self) -> bool:
        return not self.plan()

    # -- install ----------------------------------------------------------------------------------
    def brainfm_spec(self) -> str:
        """What pip installs for brainfm: the bundled source/wheel or the exact PyPI pin."""
        if self.source is not None:
            if not self.source.exists():
                raise InstallError(f"bundled BrainFM package not found: {self.source}")
            return str(self.source)
        return f"brainfm=={self.brainfm_version}"

    def setup(self, *, confirm: Optional[Callable[[str], bool]] = None) -> InstallReport:
        """Install what is missing after ONE confirmation; raises :class:`InstallError` if declined."""
        report = InstallReport()
        items = self.plan()
        if not items:
            return report
        if confirm is not None and not confirm(
                "BrainFM needs to install these Python packages (this can take several minutes):\n  - "
                + "\n  - ".join(items)):
            raise InstallError("Installation declined; BrainFM cannot run without these packages.")
        before = {name: self.metadata_reader(name) for name in ("torch", "brainfm")}
        if not self.torch_ok():
            if self.torch_installer is None:
                raise InstallError("PyTorch is missing: install it with the PyTorch extension (PyTorch Utils module).")
            self.log(f"Installing PyTorch{self.torch_requirement} ...")
            self.torch_installer(self.torch_requirement)
            if not self.torch_ok():
                raise InstallError("PyTorch installation did not succeed; use the PyTorch Utils module.")
            report.installed.append("torch")
        if not self.brainfm_ok():
            spec = self.brainfm_spec()
            self.log(f"Installing {spec} (without dependencies) ...")
            self.pip_runner(["install", "--no-deps", spec])
            report.installed.append(f"brainfm=={self.brainfm_version}")
        for line in self.requires_reader("brainfm"):
            parsed = split_requirement(line)
            if parsed is None:
                continue
            if canonical(parsed[0]) in self.skip:
                report.skipped.append(parsed[0])
                continue
            if satisfies(self.metadata_reader(parsed[0]), parsed[1]):
                continue
            before.setdefault(parsed[0], self.metadata_reader(parsed[0]))
            self.log(f"Installing {parsed[0]}{parsed[1]} ...")
            self.pip_runner(["install", f"{parsed[0]}{parsed[1]}"])
            report.installed.append(f"{parsed[0]}{parsed[1]}")
        imported = self.imported_modules()
        for name, old in before.items():
            module = IMPORT_NAMES.get(canonical(name), name)
            if old is not None and module in imported and self.metadata_reader(name) != old:
                report.needs_restart = True
        return report
