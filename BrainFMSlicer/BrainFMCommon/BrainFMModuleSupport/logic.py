"""Base logic of the BrainFM task modules (Slicer application layer).

Every task module's ``process()`` calls :meth:`BrainFMLogicBase.run`, which

1. checks the input and output nodes (clear ``brainfm.errors.InputError`` messages),
2. makes sure torch and ``brainfm`` are installed (``BrainFMSceneLib.install``; one confirmation when
   interactive, nothing asked from scripts),
3. checks the device (CPU-only torch with CUDA chosen, GPU index out of range),
4. writes the input into a private temporary folder and starts ``PythonSlicer -m brainfm run``,
5. imports the result files into the requested nodes (``BrainFMSceneLib.job`` / ``results``) when it ends.

Console example::

    logic = slicer.util.getModuleLogic("BrainFMBiasField")
    logic.logCallback = print
    run = logic.process(volume, device="cpu")   # blocks; raises on failure
"""
import importlib.util
import logging
import os
import shutil
import subprocess
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

from BrainFMSceneLib._errors import InputError, ResourceError
from BrainFMSceneLib.parameters import RunParameters
from BrainFMSceneLib.job import BrainFMJob

from BrainFMModuleSupport.checks import checkInputVolume, checkOutputNodes
from BrainFMModuleSupport.models import ModelLogicMixin, migrateModelParameters
from BrainFMModuleSupport.run import BrainFMRun, ProgressCallback

QUALITY_SETTINGS = {
    # Full: whole volume at 1 mm, float32. Fast: 96-voxel tiles, and half precision on GPUs, which
    # needs a fraction of the memory (results differ slightly; see the README). The precision is
    # "auto": the child process resolves it once it knows the device it runs on (fp16 on a CUDA GPU,
    # fp32 on the CPU), so Fast also works with Device "Auto" on computers without a GPU.
    "full": {"precision": "fp32", "tile_size": None},
    "fast": {"precision": "auto", "tile_size": 96},
}
#: output keys that are not files of their own (the labelmap comes with ``seg``)
LINKED_KEYS = ("seg_labelmap",)


def runParameters(*, tasks: Sequence[str], device: str = "auto", quality: str = "full",
                  model: str = "default", atlas: Optional[str] = None, **extra: Any) -> RunParameters:
    """:class:`RunParameters` for a module run; raises :class:`InputError` with the reason if invalid.

    >>> runParameters(tasks=("seg",), quality="Fast", device="cpu").precision
    'fp32'
    >>> runParameters(tasks=("seg",), quality="Fast", device="auto").precision
    'auto'
    """
    q = str(quality or "full").strip().lower()
    if q not in QUALITY_SETTINGS:
        raise InputError(f"Unknown quality {quality!r}; use 'full' or 'fast'.")
    settings = dict(QUALITY_SETTINGS[q])
    dev = str(device or "auto").strip().lower()
    if dev == "cpu":  # half precision is slow or unsupported on CPUs
        settings["precision"] = "fp32"
    params = RunParameters(tasks=tuple(tasks), model=str(model or "default"), device=dev,
                           atlas=str(atlas) if atlas else None, **settings, **extra)
    ok, reason = params.is_valid()
    if not ok:
        raise InputError(reason)
    return params


class BrainFMLogicBase(ModelLogicMixin, ScriptedLoadableModuleLogic):
    """Shared logic; subclasses define ``OUTPUTS`` (role -> output key of ``brainfm run``), ``MODEL_TASKS``
    (the tasks the module can run, for the model selector) and ``process()``.

    Attributes scripts may set: ``logCallback`` (``print``), ``keepTemporaryFiles`` (debugging),
    ``pythonExecutable`` (default: ``PythonSlicer``).
    """

    OUTPUTS: Dict[str, str] = {}

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.logCallback: Optional[Callable[[str], None]] = None
        self.keepTemporaryFiles = False
        self.pythonExecutable: Optional[str] = None
        self._requirementsOk = False
        self._torchInfo: Optional[Dict[str, Any]] = None

    def getParameterNode(self):
        """The module's parameter node (a scene of an earlier version gets its model id first)."""
        node = ScriptedLoadableModuleLogic.getParameterNode(self)
        migrateModelParameters(node)
        return node

    def log(self, text: str) -> None:
        logging.info(text)
        if self.logCallback is not None:
            self.logCallback(text)

    # -- dependencies ----------------------------------------------------------------------------
    def setupPythonRequirements(self, *, interactive: bool = False, force: bool = False) -> None:
        """Install torch (PyTorch extension) and ``brainfm`` if missing (``BrainFMSceneLib.install``).

        :param interactive: ask one confirmation listing the packages, and offer a restart when an
            already imported package was replaced. Scripts (False) install without asking.
        :param force: check again even if a previous check succeeded in this session.
        Raises ``InstallError`` (a ``BrainFMError``) when declined, failed or a restart is needed.
        """
        if self._requirementsOk and not force:
            return
        from BrainFMSceneLib.install import InstallError, InstallLogic

        installer = InstallLogic(pip_runner=_pipInstall, torch_installer=_installTorch, log=self.log)
        if not installer.is_ready():
            self._torchInfo = None
            with _WaitCursorAfterConfirmation(interactive) as confirm:
                report = installer.setup(confirm=confirm)
            if report.needs_restart:
                message = "BrainFM replaced Python packages that Slicer had already loaded: restart Slicer to use them."
                if interactive and slicer.util.confirmOkCancelDisplay(message + " Restart now?", windowTitle="BrainFM"):
                    slicer.util.restart()
                raise InstallError(message, restart_required=True)
        self._requirementsOk = True

    # -- devices -----------------------------------------------------------------------------------
    def deviceChoices(self) -> List[Tuple[str, str]]:
        """``[(label, value)]`` for the device combo: Auto, CPU, then one entry per NVIDIA GPU."""
        return [("Auto", "auto"), ("CPU", "cpu")] + [
            (f"CUDA {i}: {name}", f"cuda:{i}") for i, name in enumerate(listNvidiaGpus())]

    def torchInfo(self) -> Dict[str, Any]:
        """Torch version, CUDA build and GPUs as seen by the child interpreter (cached per session)."""
        if self._torchInfo is None:
            from BrainFMSceneLib.diagnostics import probe_torch

            self._torchInfo = probe_torch(self.pythonExecutable)
        return self._torchInfo

    def checkDevice(self, device: str) -> None:
        """Raise :class:`ResourceError` when a CUDA device is chosen that torch cannot use."""
        if not str(device).startswith("cuda"):
            return
        info = self.torchInfo()
        version = info.get("torch")
        if not version:
            raise ResourceError(f"PyTorch is not usable ({info.get('torch_error', 'not installed')}); "
                                "install it with the PyTorch Utils module or Advanced > Install.")
        if not info.get("cuda_build"):
            raise ResourceError(
                f"Device {device} was chosen but the installed PyTorch {version} is a CPU-only build. "
                "Choose Device: CPU, or reinstall PyTorch with CUDA support in the PyTorch Utils module.")
        if not info.get("cuda_available"):
            raise ResourceError(
                f"Device {device} was chosen but PyTorch (CUDA {info.get('cuda_build')}) sees no usable GPU "
                "(NVIDIA driver missing or too old?). Choose Device: CPU, or update the driver.")
        index = int(device.split(":")[1]) if ":" in device else 0
        count = len(info.get("gpus") or [])
        if index >= count:
            raise ResourceError(f"Device {device} does not exist: PyTorch sees {count} GPU(s).")

    # -- models and diagnostics -------------------------------------------------------------------
    def expectedSha256(self, model: str) -> Optional[str]:
        """Recorded SHA-256 of a weights file known to the registry (official or custom entry)."""
        if not model or not os.path.isfile(model):
            return None
        from BrainFMSceneLib.registry import ModelRegistry

        target = os.path.realpath(model)
        for choice in ModelRegistry(official_path=model).choices():
            if choice.path and choice.sha256 and os.path.realpath(choice.path) == target:
                return choice.sha256
        return None

    def diagnosticsText(self, *, modelPath: Optional[str] = None, modelId: Optional[str] = None) -> str:
        """Environment report (Python, torch/CUDA, GPUs, brainfm, cache, model file) as text.

        ``modelId`` (what the parameter node stores) or ``modelPath`` names the model to check.
        """
        from BrainFMSceneLib.diagnostics import collect_diagnostics, format_diagnostics
        from BrainFMSceneLib.registry import ModelChoice, ModelRegistry, choice_for

        registry = ModelRegistry(official_path=modelPath)
        choice = choice_for(modelId) if modelId else registry.bundled_choice()
        if modelPath:
            available = os.path.isfile(modelPath)
            choice = ModelChoice("selected", os.path.basename(modelPath), "custom", modelPath, path=modelPath,
                                 sha256=self.expectedSha256(modelPath), available=available,
                                 message="" if available else f"File not found: {modelPath}")
        info = collect_diagnostics(registry=registry, model_choice=choice, python=self.pythonExecutable)
        self._torchInfo = {k: info.get(k) for k in ("torch", "cuda_build", "cuda_available", "gpus", "torch_error")}
        slicerVersion = getattr(slicer.app, "applicationVersion", "?") if hasattr(slicer, "app") else "?"
        return f"3D Slicer: {slicerVersion}\n" + format_diagnostics(info)

    # -- results of earlier runs -------------------------------------------------------------------
    def loadResults(self, caseFolder: str, *, inputVolume=None, inputPath: Optional[str] = None) -> Any:
        """Load a case folder of ``brainfm run`` (e.g. a case of a command-line batch to review): the scan
        it was made from and all its results, placed on the scan, the segmentation with FreeSurfer names
        and colours (``BrainFMSceneLib.case_folders.load_case_folder``).

        :param caseFolder: ``out/<case>`` (or an output folder holding one case).
        :param inputVolume: the scan's volume node when it is already loaded.
        :param inputPath: the scan's file when it has moved since the run (default: the recorded path).
        :return: ``LoadedCase``: ``.input_node`` and ``.results.nodes`` (output key -> node).

        >>> case = BrainFMSegmentationLogic().loadResults("out/sub-07")  # doctest: +SKIP
        """
        from BrainFMSceneLib.case_folders import load_case_folder

        loaded = load_case_folder(slicer.mrmlScene, caseFolder, input_node=inputVolume, input_path=inputPath)
        self.log(f"BrainFM: loaded {len(loaded.results.nodes)} results of '{loaded.input_node.GetName()}' "
                 f"from {caseFolder}")
        return loaded

    # -- run ---------------------------------------------------------------------------------------
    def run(self, inputVolume, *, tasks: Sequence[str], outputs: Dict[str, Any], create: Sequence[str] = (),
            keys: Optional[Dict[str, str]] = None, device: str = "auto", quality: str = "full",
            model: str = "default", atlas: Optional[str] = None, waitForCompletion: bool = True,
            progressCallback: Optional[ProgressCallback] = None,
            finishedCallback: Optional[Callable[[BrainFMRun], None]] = None,
            biasMethod: str = "auto", regMethod: str = "auto", segMethod: str = "auto",
            synthMethod: str = "auto", outputFrame: str = "input", allowThickSlices: bool = False) -> BrainFMRun:
        """Run ``brainfm run`` on ``inputVolume`` and import the results into ``outputs``.

        :param outputs: role -> existing node to fill in place, or None.
        :param create: roles for which a new node is created when ``outputs[role]`` is None (the
            other roles left at None are not produced).
        :param keys: role -> output key of ``brainfm run`` (default: the class's ``OUTPUTS``).
        :param biasMethod: ``auto``, ``fit`` or ``head`` (``brainfm run --bias-method``; tasks with ``bias``).
        :param regMethod: ``auto``, ``fit`` or ``head`` (``brainfm run --reg-method``; tasks with ``reg``).
        :param segMethod: ``auto``, ``fit`` or ``head`` (``brainfm run --seg-method``; every task that reads
            the labels).
        :param synthMethod: ``auto``, ``fit`` or ``head`` (``brainfm run --synth-method``; the synthesis tasks).
        :param outputFrame: ``input`` (results on the input volume's grid) or ``1mm`` (on a 1 mm grid over
            the head, finer than a thick-slice input; ``brainfm run --output-frame``).
        :param allowThickSlices: run on slices thicker than 10 mm, which the engine refuses by default
            (``brainfm run --allow-anisotropic``).
        :return: the run; finished when ``waitForCompletion`` (its error is raised if it failed).
        """
        checkInputVolume(inputVolume)
        checkOutputNodes(inputVolume, outputs)
        self.setupPythonRequirements(interactive=False)
        self.checkModel(model, tasks)
        params = runParameters(tasks=tasks, device=device, quality=quality, model=model, atlas=atlas,
                               model_sha256=self.expectedSha256(model), bias_method=str(biasMethod or "auto"),
                               reg_method=str(regMethod or "auto"), seg_method=str(segMethod or "auto"),
                               synth_method=str(synthMethod or "auto"), output_frame=str(outputFrame or "input"),
                               allow_thick_slices=bool(allowThickSlices))
        self.checkDevice(params.device)
        keys = dict(self.OUTPUTS if keys is None else keys)
        wanted = [role for role, node in outputs.items() if node is not None or role in create]
        job = BrainFMJob(
            inputVolume.GetScene(), inputVolume, params, python=self.pythonExecutable,
            keep_temp=self.keepTemporaryFiles, base_env=self._childEnvironment(),
            output_nodes={keys[role]: node for role, node in outputs.items() if node is not None},
            import_keys=[keys[role] for role in wanted if keys[role] not in LINKED_KEYS])
        run = BrainFMRun(job, {role: keys[role] for role in wanted}, progressCallback=progressCallback,
                         logCallback=self.log, finishedCallback=finishedCallback)
        self.log(f"BrainFM: tasks {','.join(params.tasks)} on '{inputVolume.GetName()}' ({params.device}, {quality})")
        run.start()
        if waitForCompletion:
            run.wait().raiseIfFailed()
        return run

    @staticmethod
    def _childEnvironment() -> Optional[Dict[str, str]]:
        """Slicer's startup environment for ``PythonSlicer`` (None outside the application).

        GPUs are numbered in PCI bus order, as ``nvidia-smi`` (and so the device combo) lists them.
        """
        try:
            env = dict(slicer.util.startupEnvironment())
        except Exception:  # noqa: BLE001 - e.g. no application (tests on slicer-core)
            return None
        env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        return env

    @staticmethod
    def brainfmInstalled() -> bool:
        """Whether the ``brainfm`` package is importable in Slicer's Python (checked without importing it)."""
        return importlib.util.find_spec("brainfm") is not None


def listNvidiaGpus(*, timeout: float = 5.0) -> List[str]:
    """Names of the NVIDIA GPUs (PCI bus order) from ``nvidia-smi``; empty when there is none.

    Uses no torch, so the device combo can be filled before PyTorch is installed.
    """
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=timeout, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def _pipInstall(args: List[str]) -> None:
    """pip runner for ``InstallLogic``: Slicer's own pip (``slicer.util.pip_install``).

    ``slicer.util.pip_install`` raises ``subprocess.CalledProcessError`` (pip's output went to the
    Python console); it becomes the ``InstallError`` the ``InstallLogic`` contract promises.
    """
    from BrainFMSceneLib.install import InstallError

    args = list(args)
    if args and args[0] == "install":
        args = args[1:]
    try:
        slicer.util.pip_install(args)
    except subprocess.CalledProcessError as e:
        raise InstallError(f"pip install {' '.join(args)} failed (exit code {e.returncode}); "
                           "pip's messages are in the Python console (View > Python Console).") from e


def _installTorch(requirement: str) -> None:
    """torch installer for ``InstallLogic``: the PyTorch extension picks the CUDA build."""
    from BrainFMSceneLib.install import InstallError

    try:
        import PyTorchUtils
    except ImportError:
        raise InstallError("The PyTorch extension is missing: install 'PyTorch' from the Extensions Manager "
                           "and restart Slicer.", restart_required=True) from None
    try:
        PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=requirement)
    except subprocess.CalledProcessError as e:  # light-the-torch / pip failed
        raise InstallError(f"Installing PyTorch{requirement} failed (exit code {e.returncode}); see the Python "
                           "console, or install it in the PyTorch Utils module.") from e
    except (ImportError, OSError) as e:  # installed, but cannot be imported into this running Slicer
        raise InstallError(f"PyTorch was installed but cannot be loaded yet ({e}); restart Slicer.",
                           restart_required=True) from e


class _WaitCursorAfterConfirmation:
    """Context giving ``InstallLogic.setup`` its ``confirm`` callable: one dialog when interactive
    (None from scripts), then a wait cursor for the installation, restored on exit."""

    def __init__(self, interactive: bool) -> None:
        self.interactive = interactive
        self._cursor = False

    def _confirm(self, text: str) -> bool:
        ok = bool(slicer.util.confirmOkCancelDisplay(text, windowTitle="BrainFM"))
        if ok:
            import qt

            qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
            self._cursor = True
        return ok

    def __enter__(self) -> Optional[Callable[[str], bool]]:
        return self._confirm if self.interactive else None

    def __exit__(self, *exc: Any) -> None:
        if self._cursor:
            import qt

            qt.QApplication.restoreOverrideCursor()
