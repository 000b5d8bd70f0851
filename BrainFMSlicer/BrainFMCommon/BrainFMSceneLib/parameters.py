"""Run settings of one ``brainfm run`` invocation as a plain dataclass.

The Slicer modules keep their GUI state in a parameter node; when Apply is pressed they build a
:class:`RunParameters`, check it with :meth:`RunParameters.is_valid` and turn it into the
command-line options of the child process with :meth:`RunParameters.as_arg_list`.

>>> from BrainFMSceneLib.parameters import RunParameters
>>> p = RunParameters(tasks=("seg", "reg"), device="cuda:1")
>>> p.is_valid()
(True, '')
>>> p.as_arg_list()
['--tasks', 'seg,reg', '--model', 'default', '--device', 'cuda:0', '--precision', 'fp32', '--progress', 'machine', '--no-png', '--no-compress']
>>> p.environment_updates()
{'CUDA_VISIBLE_DEVICES': '1'}
>>> RunParameters(tasks=("segmentation",)).is_valid()[0]
False
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

#: Task names accepted by ``brainfm run --tasks`` (DESIGN.md).
TASKS: Tuple[str, ...] = ("t1", "t2", "flair", "ct", "sr", "seg", "dist", "bias", "reg", "feat", "all")
#: ``auto``: the child picks once it knows its device (fp16 on a CUDA GPU, fp32 elsewhere)
PRECISIONS: Tuple[str, ...] = ("fp32", "bf16", "fp16", "auto")
OUTPUT_FRAMES: Tuple[str, ...] = ("input", "1mm")
#: ``brainfm run --bias-method``: the model's head, a fit to its segmentation, or auto (the fit when the
#: model's measured quality says its head is not reliable)
BIAS_METHODS: Tuple[str, ...] = ("auto", "fit", "head")
#: ``brainfm run --reg-method``: the same choice for the registration to the atlas
REG_METHODS: Tuple[str, ...] = ("auto", "fit", "head")
#: ``brainfm run --seg-method``: the model's labels, or refined to the scan's intensities
SEG_METHODS: Tuple[str, ...] = ("auto", "fit", "head")
#: ``brainfm run --synth-method``: the model's synthesis, or its contrast per tissue on the scan's detail
SYNTH_METHODS: Tuple[str, ...] = ("auto", "fit", "head")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda|cuda:\d+)$")
_SHA_RE = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass
class RunParameters:
    """Settings of one BrainFM run (everything except the input and output paths).

    :param tasks: task names (``t1``, ``t2``, ``flair``, ``ct``, ``sr``, ``seg``, ``dist``, ``bias``,
        ``reg``, ``feat`` or ``all``).
    :param model: ``default``/``bundled``, a registry id or a weights file path.
    :param model_sha256: expected SHA-256 of the weights file (verified by the engine).
    :param atlas: atlas file for registration (None: the engine's default resolution).
    :param device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    :param precision: ``fp32``, ``bf16``, ``fp16`` or ``auto`` (resolved by the child once the device is
        known: fp16 on a CUDA GPU, fp32 on the CPU; what Quality "Fast" uses with Device "Auto").
    :param tile_size: tile edge in voxels (None: whole volume / automatic).
    :param memory_gb: memory budget for tiling (None: automatic).
    :param output_frame: ``input`` (outputs on the input grid, the default) or ``1mm`` (a 1 mm grid over
        the head: finer than a thick-slice input; Slicer shows such results in world coordinates).
    :param allow_thick_slices: run on slices thicker than 10 mm, which the engine refuses by default
        (``--allow-anisotropic``).
    :param crop_foreground: crop to the head before inference (``--no-crop`` when False).
    :param probabilities: also write segmentation probabilities.
    :param frame: frame index for 4D inputs.
    :param write_png: write the montage PNG (off in Slicer: the scene shows the results).
    :param compress_outputs: write ``.nii.gz`` results (off in Slicer: uncompressed temp files import faster).
    :param bias_method: bias field from the model's head (``head``), fitted to its segmentation
        (``fit``) or ``auto`` (the engine's default).
    :param reg_method: registration to the atlas from the model's head (``head``), fitted to the
        segmentations of the scan and of the atlas (``fit``) or ``auto`` (the engine's default).
    :param seg_method: the model's labels (``head``), refined to the scan's intensities (``fit``) or
        ``auto`` (the engine's default).
    :param synth_method: the model's synthetic images (``head``), fitted to the scan (``fit``: the
        model's contrast per tissue on the scan's own detail) or ``auto`` (the engine's default).
    """

    tasks: Tuple[str, ...] = ("all",)
    model: str = "default"
    model_sha256: Optional[str] = None
    atlas: Optional[str] = None
    device: str = "auto"
    precision: str = "fp32"
    tile_size: Optional[int] = None
    memory_gb: Optional[float] = None
    output_frame: str = "input"
    allow_thick_slices: bool = False
    crop_foreground: bool = True
    probabilities: bool = False
    frame: Optional[int] = None
    write_png: bool = False
    compress_outputs: bool = False
    bias_method: str = "auto"
    reg_method: str = "auto"
    seg_method: str = "auto"
    synth_method: str = "auto"
    extra_args: Tuple[str, ...] = field(default_factory=tuple)

    # -- checks ---------------------------------------------------------------------------------
    def is_valid(self) -> Tuple[bool, str]:
        """``(True, "")`` or ``(False, reason)`` with a sentence the GUI can show as is."""
        tasks = tuple(self.tasks)
        if not tasks:
            return False, "Select at least one task."
        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            return False, f"Unknown task(s) {', '.join(map(repr, unknown))}; choose from {', '.join(TASKS)}."
        if not str(self.model).strip():
            return False, "No model selected: choose the bundled model or a weights file."
        model_path = Path(str(self.model)).expanduser()
        looks_like_path = any(sep in str(self.model) for sep in ("/", "\\")) or model_path.suffix in (
            ".pth", ".pt", ".safetensors", ".json")
        if looks_like_path and not model_path.is_file():
            return False, f"Model file not found: {model_path}"
        if self.model_sha256 is not None and not _SHA_RE.match(str(self.model_sha256)):
            return False, "The expected SHA-256 must be 64 hexadecimal characters."
        if self.atlas is not None and not Path(str(self.atlas)).expanduser().is_file():
            return False, f"Atlas file not found: {self.atlas}"
        if not _DEVICE_RE.match(str(self.device)):
            return False, f"Unknown device {self.device!r}; use auto, cpu, cuda, cuda:N or mps."
        if self.precision not in PRECISIONS:
            return False, f"Unknown precision {self.precision!r}; use {', '.join(PRECISIONS)}."
        if self.output_frame not in OUTPUT_FRAMES:
            return False, f"Unknown output frame {self.output_frame!r}; use {', '.join(OUTPUT_FRAMES)}."
        if self.tile_size is not None and int(self.tile_size) < 16:
            return False, "Tile size must be at least 16 voxels."
        if self.memory_gb is not None and float(self.memory_gb) <= 0:
            return False, "Memory budget must be positive."
        if self.frame is not None and int(self.frame) < 0:
            return False, "Frame index must be 0 or larger."
        if self.bias_method not in BIAS_METHODS:
            return False, f"Unknown bias-field method {self.bias_method!r}; use {', '.join(BIAS_METHODS)}."
        if self.reg_method not in REG_METHODS:
            return False, f"Unknown registration method {self.reg_method!r}; use {', '.join(REG_METHODS)}."
        if self.seg_method not in SEG_METHODS:
            return False, f"Unknown segmentation method {self.seg_method!r}; use {', '.join(SEG_METHODS)}."
        if self.synth_method not in SYNTH_METHODS:
            return False, f"Unknown synthesis method {self.synth_method!r}; use {', '.join(SYNTH_METHODS)}."
        return True, ""

    # -- command line ---------------------------------------------------------------------------
    def child_device(self) -> str:
        """Device name as seen by the child process once :meth:`environment_updates` is applied."""
        return "cuda:0" if re.match(r"^cuda:\d+$", self.device) else self.device

    def environment_updates(self) -> Dict[str, str]:
        """Environment for the child: ``cpu`` hides all GPUs, ``cuda:N`` shows only GPU N."""
        if self.device == "cpu":
            return {"CUDA_VISIBLE_DEVICES": "-1"}
        m = re.match(r"^cuda:(\d+)$", self.device)
        if m:
            return {"CUDA_VISIBLE_DEVICES": m.group(1)}
        return {}

    def as_arg_list(self) -> List[str]:
        """Options for ``python -m brainfm run INPUT -o OUT <options>`` (always machine progress)."""
        args = ["--tasks", ",".join(self.tasks), "--model", str(self.model)]
        if self.model_sha256:
            args += ["--sha256", str(self.model_sha256).lower()]
        if self.atlas:
            args += ["--atlas", str(self.atlas)]
        args += ["--device", self.child_device(), "--precision", self.precision]
        if self.tile_size is not None:
            args += ["--tile-size", str(int(self.tile_size))]
        if self.memory_gb is not None:
            args += ["--memory-gb", f"{float(self.memory_gb):g}"]
        if self.output_frame != "input":
            args += ["--output-frame", self.output_frame]
        if self.allow_thick_slices:
            args.append("--allow-anisotropic")
        if not self.crop_foreground:
            args.append("--no-crop")
        if self.probabilities:
            args.append("--probabilities")
        if self.frame is not None:
            args += ["--frame", str(int(self.frame))]
        if self.bias_method != "auto":
            args += ["--bias-method", self.bias_method]
        if self.reg_method != "auto":
            args += ["--reg-method", self.reg_method]
        if self.seg_method != "auto":
            args += ["--seg-method", self.seg_method]
        if self.synth_method != "auto":
            args += ["--synth-method", self.synth_method]
        args += ["--progress", "machine"]
        if not self.write_png:
            args.append("--no-png")
        if not self.compress_outputs:
            args.append("--no-compress")
        return args + [str(a) for a in self.extra_args]

    # -- persistence (QSettings / parameter node store strings) ---------------------------------
    def to_settings(self) -> Dict[str, str]:
        """Flat ``{name: string}`` mapping (None becomes an empty string)."""
        out: Dict[str, str] = {}
        for key, value in asdict(self).items():
            if isinstance(value, (tuple, list)):
                out[key] = ",".join(str(v) for v in value)
            elif value is None:
                out[key] = ""
            else:
                out[key] = str(value)
        return out

    @classmethod
    def from_settings(cls, values: Mapping[str, Any]) -> "RunParameters":
        """Inverse of :meth:`to_settings`; unknown keys are ignored, missing keys keep defaults."""
        kwargs: Dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in values:
                continue
            raw = values[f.name]
            text = "" if raw is None else str(raw)
            if f.name in ("tasks", "extra_args"):
                kwargs[f.name] = tuple(t for t in text.split(",") if t)
            elif f.name in ("model_sha256", "atlas"):
                kwargs[f.name] = text or None
            elif f.name in ("tile_size", "frame"):
                kwargs[f.name] = int(text) if text else None
            elif f.name == "memory_gb":
                kwargs[f.name] = float(text) if text else None
            elif f.name in ("allow_thick_slices", "crop_foreground", "probabilities", "write_png", "compress_outputs"):
                kwargs[f.name] = text.strip().lower() in ("1", "true", "yes", "on")
            else:
                kwargs[f.name] = text
        return cls(**kwargs)
