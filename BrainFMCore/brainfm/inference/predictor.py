"""The :class:`Predictor`: load a model once, predict many volumes.

>>> import numpy as np, torch
>>> from brainfm.models import BrainFMNet, ModelConfig
>>> from brainfm.volume import Volume
>>> from brainfm.inference import Predictor
>>> torch.manual_seed(0) and None
>>> net = BrainFMNet(ModelConfig(f_maps=8, num_levels=3, heads={"CT": 1, "distance": 4}))
>>> p = Predictor(net, device="cpu")
>>> p.available_tasks
['ct', 'dist', 'feat']
>>> img = Volume(np.random.default_rng(0).random((16, 16, 16)).astype(np.float32), np.eye(4))
>>> out = p.predict(img, tasks=["dist"])
>>> sorted(out.outputs), out["dist_lp"].shape, float(np.abs(out["dist_lp"].data).max()) <= 3
(['dist_lp', 'dist_lw', 'dist_rp', 'dist_rw'], (16, 16, 16), True)
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from brainfm.errors import BrainFMError, InputError, ModelNotAvailableError
from brainfm.inference import device as devmod
from brainfm.inference.forward import run_with_fallback
from brainfm.geometry import GridMapper, resample_to_grid
from brainfm.inference.headmask import HEAD_MASK_METHOD, head_mask
from brainfm.inference.plan import MemoryPlan, check_plan, memory_advice, plan_memory
from brainfm.inference.prediction import TILING_NOTE, Prediction
from brainfm.inference.preprocess import ImageLike, Prepared, load_image, prepare
from brainfm.inference.tiling import MIN_TILE
from brainfm.progress import CancelToken, ProgressCallback, ensure_callback, scaled
from brainfm.models.task_heads import COARSE_GRID_HIDDEN_HEADS, served_heads  # noqa: F401 (public name kept here)
from brainfm.models.quality import task_warnings, unreliable_tasks
from brainfm.tasks.bias import CT_FIT_WARNING, METHOD_NAMES as BIAS_METHOD_NAMES, check_method as check_bias_method
from brainfm.tasks.bias import resolve_method as resolve_bias_method
from brainfm.tasks.context import TaskContext
from brainfm.tasks.registration import METHOD_NAMES as REG_METHOD_NAMES, check_method as check_reg_method
from brainfm.tasks.registration import resolve_method as resolve_reg_method
from brainfm.tasks.segmentation import METHOD_NAMES as SEG_METHOD_NAMES, check_method as check_seg_method
from brainfm.tasks.segmentation import resolve_method as resolve_seg_method
from brainfm.tasks.synthesis import METHOD_NAMES as SYNTH_METHOD_NAMES, SYNTH_TASKS
from brainfm.tasks.synthesis import check_method as check_synth_method, resolve_method as resolve_synth_method
from brainfm.tasks.registry import FEAT, TASKS, available_tasks, head_map, resolve_tasks
from brainfm.volume import Volume

OUTPUT_FRAMES = ("input", "1mm")


class _Monotone:
    """Progress wrapper that never goes backwards and ends at exactly 1."""

    def __init__(self, cb: Optional[ProgressCallback]) -> None:
        self.cb = ensure_callback(cb)
        self.last = 0.0

    def __call__(self, fraction: float, message: str) -> None:
        self.last = max(self.last, min(max(float(fraction), 0.0), 1.0))
        self.cb(self.last, message)


class Predictor:
    """Run a BrainFM model on volumes: pre-processing, forward (whole or tiled), post-processing.

    ``loaded_model`` is a :class:`brainfm.models.LoadedModel` (``net`` + ``info``) or a bare
    :class:`brainfm.models.BrainFMNet`. Options: ``device`` (``auto``/``cpu``/``cuda``/``cuda:N``/
    ``mps``), ``precision`` (``auto``: bf16 on CPUs with native bfloat16 for models whose bf16
    agreement was measured, else fp32, see
    :func:`brainfm.inference.device.resolve_precision`; ``fp32``/``bf16``/``fp16``, fp16 on CUDA
    only; heads and post-processing always fp32), ``memory_budget_gb`` (target for the peak resident
    memory of the process while predicting; a hard limit, checked before any work; default: what
    the process holds + 60 % of the available RAM; on CUDA it bounds the GPU memory of the forward,
    default 60 % of the free GPU memory), ``tile_size`` (force tiling with cubes of that edge,
    >= 16), ``tile_overlap`` (fraction in [0, 1)), ``threads`` (torch CPU threads),
    ``channels_last`` (run in the ``channels_last_3d`` memory format; default: on the CPU for
    compact-width networks, :func:`brainfm.inference.device.use_channels_last`), ``test_time_flip``
    (also run the left-right mirrored input and average the two, twice the network time; default:
    the model's :attr:`~brainfm.models.ModelInfo.test_time_flip`).
    """

    def __init__(
        self,
        loaded_model: Any,
        *,
        device: str = "auto",
        precision: str = "auto",
        memory_budget_gb: Optional[float] = None,
        tile_size: Optional[int] = None,
        tile_overlap: float = 0.25,
        threads: Optional[int] = None,
        channels_last: Optional[bool] = None,
        test_time_flip: Optional[bool] = None,
    ) -> None:
        net = getattr(loaded_model, "net", loaded_model)
        if not isinstance(net, torch.nn.Module) or not hasattr(net, "head"):
            raise InputError("Predictor needs a LoadedModel or a BrainFMNet (with task heads)")
        self.info = getattr(loaded_model, "info", None)
        self.device = devmod.select_device(device)
        #: the precision asked for (``auto`` included) and the one used
        self.precision_requested = str(precision).lower()
        quality = getattr(self.info, "quality", None) or {}
        self.precision = devmod.resolve_precision(precision, self.device,
                                                  bf16_validated=bool(quality.get(devmod.BF16_QUALITY_KEY)))
        self.amp_dtype = devmod.autocast_dtype(self.precision, self.device)
        self._channels_last_opt = channels_last
        if memory_budget_gb is not None and not float(memory_budget_gb) > 0:
            raise InputError(f"memory_budget_gb must be > 0, got {memory_budget_gb}")
        if tile_size is not None and int(tile_size) < MIN_TILE:
            raise InputError(f"tile_size must be >= {MIN_TILE} voxels, got {tile_size}")
        if not 0.0 <= float(tile_overlap) < 1.0:
            raise InputError(f"tile_overlap must be in [0, 1), got {tile_overlap}")
        self.memory_budget_gb = None if memory_budget_gb is None else float(memory_budget_gb)
        self.tile_size = None if tile_size is None else int(tile_size)
        self.tile_overlap = float(tile_overlap)
        devmod.set_threads(threads)
        for p in net.parameters():
            p.requires_grad_(False)
        self.net = net.eval().to(self.device)
        cl = self._channels_last_opt
        self.channels_last = devmod.use_channels_last(self.device, self.f_maps) if cl is None else bool(cl)
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last_3d)
        self.head_names: List[str] = list(getattr(net, "head_names", None) or net.head.names)
        #: edge (mm) of the network frame's voxels: the model's working resolution
        self.voxel_mm: float = float(getattr(self.info, "voxel_mm", 1.0) or 1.0)
        #: inputs are low-pass filtered before resampling to a coarser working grid, as the model expects
        self.input_antialias: bool = bool(getattr(self.info, "input_antialias", True))
        #: each prediction is averaged with the one of the left-right mirrored input
        self.test_time_flip: bool = (bool(getattr(self.info, "test_time_flip", False)) if test_time_flip is None
                                     else bool(test_time_flip))
        #: heads that serve tasks: a model working on a grid coarser than 1 mm offers no 1 mm super-resolution
        self.task_heads: List[str] = served_heads(self.head_names, voxel_mm=self.voxel_mm)
        self.available_tasks: List[str] = available_tasks(self.task_heads)
        self._atlas_cache: Dict[str, Optional[Volume]] = {}
        #: the default atlas could not be had (not in the cache, no download): a fitted registration then
        #: uses the template of :meth:`_fallback_atlas` (an atlas the user named never is replaced)
        self._default_atlas_unavailable = False
        self._atlas_labels_cache: Dict[str, Volume] = {}

    @classmethod
    def from_pretrained(cls, spec: str = "default", *, expected_sha256: Optional[str] = None, **kw: Any) -> "Predictor":
        """Resolve ``spec`` (``default``, a registry id or a path), load it and build a Predictor."""
        from brainfm.models import load_model
        from brainfm.models.registry import resolve_model

        path = resolve_model(spec)
        return cls(load_model(path, expected_sha256=expected_sha256, map_location="cpu"), **kw)

    # -- helpers --------------------------------------------------------------------------------
    @property
    def f_maps(self) -> int:
        cfg = getattr(self.net, "config", None)
        return int(getattr(cfg, "f_maps", 64))

    def _model_meta(self) -> Dict[str, Any]:
        info = self.info
        if info is None:
            return {"name": "unnamed", "heads": list(self.head_names), "voxel_mm": self.voxel_mm,
                    "test_time_flip": self.test_time_flip}
        meta = {k: getattr(info, k, None) for k in ("name", "version", "format", "sha256", "label_scheme")}
        if getattr(info, "quality", None):
            meta["quality"] = dict(info.quality)
        meta["heads"] = list(self.head_names)
        meta["voxel_mm"] = self.voxel_mm
        meta["input_antialias"] = self.input_antialias
        meta["test_time_flip"] = self.test_time_flip
        return meta

    def _scheme(self) -> Any:
        """The model's label scheme (:func:`brainfm.labels.decide_scheme` of its declared scheme and
        its segmentation head), None when undecided (the segmentation task then decides by the
        head's channel count, or writes channel indices)."""
        from brainfm.labels import decide_scheme

        name = getattr(self.info, "label_scheme", None) if self.info is not None else None
        n_channels = self.net.head.channels()["segmentation"] if "segmentation" in self.head_names else None
        try:
            return decide_scheme(name or None, n_channels=n_channels)
        except BrainFMError:
            return None

    def _lr_partner(self) -> Tuple[int, ...]:
        """Left/right partner of each segmentation channel (empty when the scheme is undecided)."""
        scheme = self._scheme()
        return tuple(scheme.lr_partner) if scheme is not None else ()

    def _atlas(self, atlas: Any, warnings: List[str]) -> Optional[Volume]:
        if isinstance(atlas, Volume):
            return atlas
        key = str(atlas)
        if key in self._atlas_cache:  # loaded once per Predictor (a failed default lookup too)
            vol = self._atlas_cache[key]
            if vol is None:
                warnings.append("atlas template not available (see the first prediction's warning)")
            return vol
        from brainfm.models.registry import resolve_atlas

        try:
            path = atlas if atlas is not None and _is_existing_file(atlas) else resolve_atlas(atlas)
            vol: Optional[Volume] = load_image(path)
        except BrainFMError as exc:
            if atlas is not None:
                raise
            warnings.append(f"atlas template not available ({exc})")
            vol = None
            self._default_atlas_unavailable = isinstance(exc, ModelNotAvailableError)
        self._atlas_cache[key] = vol  # type: ignore[assignment]
        return vol

    def _fallback_atlas(self, warnings: List[str]) -> Optional[Volume]:
        """The template a fitted registration uses when the default atlas is not available: MNI ICBM152
        2009a (:mod:`brainfm.models.templates`), with a warning that says so; None without nilearn."""
        from brainfm.models.templates import ICBM_TEMPLATE_NAME, icbm_template_path

        key = "\0fallback"
        if key not in self._atlas_cache:
            path = icbm_template_path()
            vol = None
            if path is not None:
                try:
                    vol = load_image(path)
                    vol.meta["atlas_name"] = ICBM_TEMPLATE_NAME
                except BrainFMError:
                    vol = None
            self._atlas_cache[key] = vol  # type: ignore[assignment]
        vol = self._atlas_cache[key]
        if vol is not None:
            warnings.append(f"registration: fitted to the {ICBM_TEMPLATE_NAME} instead, so atlas coordinates "
                            "and the warped atlas are in that template's space; give the atlas (--atlas PATH, or "
                            "the environment variable BRAINFM_ATLAS) for the default atlas's space")
        return vol

    @property
    def segments_anatomy(self) -> bool:
        """Whether this model segments the brain's anatomy in FreeSurfer's labels, which the fitted
        methods read (labels refined to the scan, bias field, registration and synthesis fitted to
        them); False without a segmentation head, or with one fine-tuned for labels of a user's own
        (:attr:`brainfm.labels.LabelScheme.anatomical`)."""
        if "seg" not in self.available_tasks:
            return False
        scheme = self._scheme()
        return scheme is None or bool(getattr(scheme, "anatomical", True))

    def registration_method(self, requested: str = "auto") -> str:
        """``"head"`` or ``"fit"``: how this model registers for ``reg_method`` ``requested``
        (``auto``: fitted to the segmentations when the model's measured quality says its registration
        head is not reliable and it segments; :func:`brainfm.tasks.registration.resolve_method`).

        >>> from brainfm.inference import Predictor
        >>> Predictor.from_pretrained("bundled", device="cpu").registration_method()  # doctest: +SKIP
        'fit'
        """
        return resolve_reg_method(
            requested, head_reliable="reg" not in unreliable_tasks(getattr(self.info, "quality", None)),
            has_seg=self.segments_anatomy)

    def atlas_labels(self, atlas: Volume, *, cancel: Optional[CancelToken] = None) -> Volume:
        """This model's segmentation of the ``atlas`` template (FreeSurfer numbers on the atlas grid),
        which ``reg_method "fit"`` carries the scan's segmentation onto; computed once per model and
        atlas, then read from memory or the cache (:mod:`brainfm.inference.atlaslabels`)."""
        from brainfm.inference import atlaslabels

        key = atlaslabels.atlas_key(atlas)
        if key in self._atlas_labels_cache:
            return self._atlas_labels_cache[key]
        sha = str(getattr(self.info, "sha256", "") or "")
        path = atlaslabels.cache_path(sha, key) if sha else None
        labels = atlaslabels.load_cached(path, atlas) if path is not None else None
        if labels is None:
            labels = self.predict(atlas, tasks=["seg"], cancel=cancel)["seg"]
            if path is not None:
                atlaslabels.store(path, labels)
        self._atlas_labels_cache[key] = labels
        return labels

    def plan(self, net_shape: Sequence[int], raw_channels: int) -> Dict[str, Any]:
        """Whole volume or tiles for a network-frame shape (forward only):
        ``{"tile_size", "fallback_tile", "budget_bytes", "bytes_per_voxel"}``; see :meth:`memory_plan`
        for the plan a prediction uses."""
        mp = self.memory_plan(net_shape, {"raw": int(raw_channels)}, tasks=[], output_voxels=0.0)
        bpv = devmod.forward_bytes(1e6, self.f_maps, autocast_dtype_=self.amp_dtype) / 1e6
        return {"tile_size": mp.tile_size, "fallback_tile": mp.fallback_tile, "budget_bytes": mp.budget_bytes,
                "bytes_per_voxel": bpv}

    def memory_plan(self, net_shape: Sequence[int], channels: Dict[str, int], *, tasks: Sequence[str],
                    output_voxels: float, reduce: Optional[Dict[str, str]] = None, streaming: bool = False,
                    probabilities: bool = False, atlas: bool = True, grid_bytes: float = 0.0,
                    refine: bool = False) -> MemoryPlan:
        """The :class:`~brainfm.inference.plan.MemoryPlan` for a network-frame shape and raw outputs
        ``channels`` (name -> channels), against this Predictor's budget (``refine``: the labels are
        refined to the scan)."""
        rss = float(devmod.resident_bytes())
        given = self.memory_budget_gb * 1e9 if self.memory_budget_gb is not None else None
        device_budget = None
        if self.device.type == "cuda":
            device_budget = given if given is not None else devmod.default_budget_bytes(self.device)
            budget, given_host = rss + devmod.default_budget_bytes(torch.device("cpu")), False
        else:
            budget = given if given is not None else rss + devmod.default_budget_bytes(self.device)
            given_host = given is not None
        cfg = getattr(self.net, "config", None)
        return plan_memory(net_shape, output_voxels=output_voxels, f_maps=self.f_maps,
                           num_levels=int(getattr(cfg, "num_levels", 6)), channels=channels, tasks=tasks,
                           budget_bytes=budget, baseline_bytes=rss, device=self.device, reduce=reduce,
                           streaming=streaming, probabilities=probabilities, amp_dtype=self.amp_dtype,
                           channels_last=self.channels_last, tile_size=self.tile_size,
                           tile_overlap=self.tile_overlap, budget_given=given_host,
                           device_budget_bytes=device_budget, atlas=atlas, grid_bytes=grid_bytes,
                           test_time_flip=self.test_time_flip, refine=refine)

    # -- prediction -----------------------------------------------------------------------------
    def predict(
        self,
        image: ImageLike,
        *,
        tasks: Union[str, Iterable[str]] = ("all",),
        output_frame: str = "input",
        atlas: Any = None,
        crop_foreground: bool = True,
        return_probabilities: bool = False,
        mask_background: bool = True,
        keep_raw: bool = False,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
        allow_anisotropic: bool = False,
        on_output: Optional[Callable[[str, Volume], None]] = None,
        bias_method: str = "auto",
        reg_method: str = "auto",
        seg_method: str = "auto",
        synth_method: str = "auto",
    ) -> Prediction:
        """Predict ``tasks`` for ``image`` (Volume or file path); see :class:`Prediction`.

        ``output_frame``: ``"input"`` (outputs on the input grid) or ``"1mm"`` (the RAS 1 mm
        network frame). ``atlas``: Volume, path or registry id of the atlas template for ``reg``
        (default: :func:`brainfm.models.registry.resolve_atlas`). ``mask_background``: zero outputs
        outside the input foreground like the reference demo (the head when the background is noise,
        :func:`brainfm.inference.headmask.head_mask`). ``keep_raw``: also return the raw
        head outputs on the network grid (``Prediction.raw``). ``allow_anisotropic``: accept slices
        thicker than 10 mm (e.g. 1 x 1 x 12 mm), refused by default as unreliable.
        ``on_output(key, volume)``: called with every output as soon as its task is done; the
        outputs are then not kept in the returned Prediction (``metadata["streamed_outputs"]``
        lists them), so only one task's outputs are in memory at a time (used to write large
        volumes within the memory budget). ``bias_method``: ``"auto"``, ``"head"`` or ``"fit"``
        (:func:`brainfm.tasks.bias.resolve_method`; ``auto`` fits the field to the segmentation when
        the model's measured quality says its own bias-field head is not reliable;
        ``metadata["bias_method"]`` says which was used). ``reg_method``: the same for the registration
        to the atlas (:func:`brainfm.tasks.registration.resolve_method`; ``fit`` carries the
        segmentation of the scan onto this model's segmentation of the atlas template, which is
        computed once per Predictor; ``metadata["reg_method"]``). ``seg_method``: ``"head"`` (the
        model's labels), ``"fit"`` (refined to the scan's intensities with the model's probabilities as
        the prior, :mod:`brainfm.tasks.segrefine`) or ``"auto"`` (the refinement for models on a grid
        coarser than 1 mm, except on CT; :func:`brainfm.tasks.segmentation.resolve_method`); every task
        that reads the labels (``seg``, the fitted bias field and registration) gets the same ones;
        ``metadata["seg_method"]``. ``synth_method``: ``"head"`` (the model's synthetic T1 / T2 / FLAIR /
        CT), ``"fit"`` (the model's contrast per tissue on the scan's own detail, from the tissue model
        fitted when the labels are refined, :mod:`brainfm.tasks.synthfit`; the segmentation is then
        refined, and ``seg_method="head"`` refuses it) or ``"auto"`` (``fit`` whenever the labels are
        refined); ``metadata["synth_method"]``.

        Memory: the forward is planned against the budget (:meth:`memory_plan`); the segmentation
        label decision is taken while blending (1 byte per voxel instead of 4 per class) unless
        probabilities or raw outputs are asked for or the labels are refined, and raw outputs are released as soon as the
        last task that needs them is done.
        """
        t_start, c_start = time.perf_counter(), time.process_time()
        timings: Dict[str, float] = {}
        cpu: Dict[str, float] = {}  # process CPU seconds (all threads) per stage
        task_times: Dict[str, float] = {}
        cb = _Monotone(progress)
        check = cancel.raise_if_cancelled if cancel is not None else (lambda: None)
        task_list = resolve_tasks(tasks, self.head_names, voxel_mm=self.voxel_mm)
        check_bias_method(bias_method)  # a misspelt method: refused before any work
        check_reg_method(reg_method)
        check_seg_method(seg_method)
        check_synth_method(synth_method)
        if output_frame not in OUTPUT_FRAMES:
            raise InputError(f"output_frame must be one of {OUTPUT_FRAMES}, got {output_frame!r}")
        check()
        cb(0.0, "preprocessing")
        t0, c0 = time.perf_counter(), time.process_time()
        prep = prepare(image, crop_foreground=crop_foreground, allow_anisotropic=allow_anisotropic,
                       spacing=self.voxel_mm, antialias=self.input_antialias)
        warnings = list(prep.warnings)
        timings["preprocess"], cpu["preprocess"] = time.perf_counter() - t0, time.process_time() - c0
        check()
        atlas_vol = self._atlas(atlas, warnings) if "reg" in task_list else None
        heads = head_map(task_list, self.task_heads)
        uses = {t: {h} for t, h in heads.items()}  # task -> the heads it reads
        has_seg = self.segments_anatomy  # the fitted methods read the segmentation of the anatomy
        if not has_seg and "seg" in self.available_tasks and check_seg_method(seg_method) == "fit":
            raise InputError("seg_method 'fit' refines FreeSurfer's anatomy to the scan, but this model's "
                             "segmentation is of labels of your own; use 'head' or 'auto'")
        bias_how = None
        if "bias" in task_list:
            bias_how = resolve_bias_method(
                bias_method, head_reliable="bias" not in unreliable_tasks(getattr(self.info, "quality", None)),
                has_seg=has_seg, ct=prep.ct_window)
            if bias_how == "fit" and prep.ct_window:  # asked for explicitly
                warnings.append(CT_FIT_WARNING)
            if bias_how == "fit":  # the fit reads the segmentation, asked for or not
                heads.setdefault("seg", head_map(["seg"], self.task_heads)["seg"])
                uses["bias"] = {heads["bias"], heads["seg"]}
        reg_how, atlas_labels, no_atlas = None, None, False
        if "reg" in task_list:
            reg_how = self.registration_method(reg_method)
            if reg_how == "fit" and atlas_vol is None and self._default_atlas_unavailable:
                atlas_vol = self._fallback_atlas(warnings)
            no_atlas = reg_how == "fit" and atlas_vol is None
            if no_atlas:  # one warning that says what to do (the head's own warning would advise the fit)
                warnings.append("registration: no atlas template to fit the map to, so the model's registration "
                                "head was used, and this model's head is not reliable yet; give the atlas "
                                "(--atlas PATH, or the environment variable BRAINFM_ATLAS) to fit the map")
                reg_how = "head"
            if reg_how == "fit":  # the fit reads the segmentation, asked for or not
                heads.setdefault("seg", head_map(["seg"], self.task_heads)["seg"])
                uses["reg"] = {heads["reg"], heads["seg"]}
                cb(0.0, "registration: segmentation of the atlas template")
                atlas_labels = self.atlas_labels(atlas_vol, cancel=cancel)
        seg_would = (resolve_seg_method(seg_method, coarse_grid=self.voxel_mm > 1.0 + 1e-6, ct=prep.ct_window)
                     if has_seg else "head" if "seg" in self.available_tasks else None)
        synth_how = None
        synth_tasks = [t for t in task_list if t in SYNTH_TASKS]
        if synth_tasks:
            synth_how = resolve_synth_method(synth_method, has_seg=has_seg, refined=seg_would == "fit")
            if synth_how == "fit":  # the fit reads the tissue model of the refined segmentation
                if check_seg_method(seg_method) == "head":
                    raise InputError("synth_method 'fit' uses the tissue model fitted when the segmentation is "
                                     "refined to the scan, but seg_method is 'head'; use seg_method 'auto' or "
                                     "'fit', or synth_method 'head'")
                heads.setdefault("seg", head_map(["seg"], self.task_heads)["seg"])
                for t in synth_tasks:
                    uses[t] = {heads[t], heads["seg"]}
        seg_how = None
        if "seg" in heads:
            seg_how = "fit" if synth_how == "fit" else seg_would
        raw_heads = list(dict.fromkeys(h for t, h in heads.items() if t != FEAT))
        head_ch = self.net.head.channels()
        channels = {h: int(head_ch[h]) for h in raw_heads}
        if FEAT in heads:
            channels[FEAT] = self.f_maps
        reduce: Dict[str, str] = {}
        if not keep_raw:
            # a coarse-grid model decides labels on the 1 mm grid from interpolated logits: keep them
            if "seg" in heads and not return_probabilities and int(round(self.voxel_mm)) <= 1 and seg_how != "fit":
                reduce[heads["seg"]] = "argmax"
            if FEAT in heads:
                reduce[FEAT] = "float16"
        out_vox = float(np.prod(prep.image.shape if output_frame == "input" else prep.net.shape))
        plan = self.memory_plan(prep.net.shape, channels, tasks=task_list, output_voxels=out_vox, reduce=reduce,
                                streaming=on_output is not None, probabilities=return_probabilities,
                                atlas=atlas_vol is not None, grid_bytes=_grid_bytes(prep, output_frame),
                                refine=seg_how == "fit")
        avail = float(devmod.available_memory_bytes(torch.device("cpu")))
        advice = memory_advice(
            device=self.device, n_tasks=len(task_list), output_frame=output_frame, output_voxels=out_vox,
            net_voxels=float(np.prod(prep.net.shape)), streaming=on_output is not None,
            probabilities=return_probabilities, feat=FEAT in heads, budget_given=plan.budget_given,
            need_bytes=plan.expected_peak_bytes - plan.baseline_bytes, available_bytes=avail,
            tiled=plan.tile_size is not None)
        note = check_plan(plan, available_bytes=avail, advice=advice)
        if note:
            warnings.append(note)
        cb(0.1, "preprocessing done")
        t0, c0 = time.perf_counter(), time.process_time()
        raw, used_tile = run_with_fallback(
            self.net, np.asarray(prep.net.data, np.float32), tile_size=plan.tile_size,
            fallback_tile_size=plan.fallback_tile, heads=raw_heads, want_feat=FEAT in heads,
            device=self.device, amp_dtype=self.amp_dtype, tile_overlap=self.tile_overlap,
            progress=scaled(cb, 0.1, 0.8), cancel=cancel, reduce=reduce, channels_last=self.channels_last,
            advice="; ".join(advice), test_time_flip=self.test_time_flip, lr_partner=self._lr_partner(),
        )
        labels = {h: (raw.pop(h), channels[h]) for h, how in reduce.items() if how == "argmax"}
        timings["forward"], cpu["forward"] = time.perf_counter() - t0, time.process_time() - c0
        check()
        t0, c0 = time.perf_counter(), time.process_time()
        ctx = self._context(prep, raw, heads, output_frame, atlas_vol, return_probabilities, mask_background)
        ctx.labels = labels
        outputs: Dict[str, Volume] = {}
        streamed: List[str] = []
        ctx.bias_method = bias_how or "head"
        ctx.reg_method, ctx.atlas_labels = reg_how or "head", atlas_labels
        ctx.seg_method = seg_how or "head"
        ctx.synth_method = synth_how or "head"
        last_use = {h: max(i for i, t in enumerate(task_list) if h in uses[t]) for h in set().union(*uses.values())}
        n = len(task_list)
        for i, task in enumerate(task_list):
            check()
            cb(0.8 + 0.18 * i / n, f"post-processing {task}" + (", back to input grid" if output_frame == "input" else ""))
            t1 = time.perf_counter()
            produced = TASKS[task].run(ctx)
            task_times[task] = round(time.perf_counter() - t1, 4)
            if not keep_raw:  # release raw outputs no later task needs
                for h in [h for h, last in last_use.items() if last == i]:
                    ctx.raw.pop(h, None)
                    ctx.labels.pop(h, None)
                    if h == heads.get("seg"):
                        ctx.decided = None
            if on_output is None:
                outputs.update(produced)
            else:
                for key in list(produced):  # in the task's order, each released once handed on
                    vol = produced.pop(key)
                    check()
                    on_output(key, vol)
                    streamed.append(key)
                    del vol
            del produced
        timings["postprocess"], cpu["postprocess"] = time.perf_counter() - t0, time.process_time() - c0
        check()
        warnings += ctx.warnings
        if bias_how is not None:
            bias_how = ctx.bias_method  # what was used: a failed fit falls back to the head
        if reg_how is not None:
            reg_how = ctx.reg_method
        if seg_how is not None:
            seg_how = ctx.seg_method
        if synth_how is not None:
            synth_how = ctx.synth_method
        # a fitted result needs no head warning, nor does a head used for want of an atlas (warned above)
        fitted = {"bias": bias_how == "fit", "reg": reg_how == "fit" or no_atlas}
        warned_tasks = [t for t in task_list if not fitted.get(t, False)]
        warnings += task_warnings(getattr(self.info, "quality", None), warned_tasks, can_fit=has_seg)
        timings["total"], cpu["total"] = time.perf_counter() - t_start, time.process_time() - c_start
        metadata = {
            "model": self._model_meta(),
            "device": str(self.device),
            "precision": self.precision,
            "precision_requested": self.precision_requested,
            "channels_last": self.channels_last,
            "tasks": task_list,
            "heads": heads,
            "bias_method": BIAS_METHOD_NAMES[bias_how] if bias_how else None,
            "reg_method": REG_METHOD_NAMES[reg_how] if reg_how else None,
            "atlas": _atlas_name(atlas_vol) if reg_how and atlas_vol is not None else None,
            "seg_method": SEG_METHOD_NAMES[seg_how] if seg_how else None,
            "synth_method": SYNTH_METHOD_NAMES[synth_how] if synth_how else None,
            "output_frame": output_frame,
            "tiled": used_tile is not None,
            "tile_size": used_tile,
            "tile_overlap": self.tile_overlap if used_tile is not None else None,
            "tiling_note": TILING_NOTE,
            "segmentation_blending": "logits (softmax after blending)",
            "label_mask": HEAD_MASK_METHOD if mask_background else None,
            "memory_budget_gb": round(plan.budget_bytes / 1e9, 3),
            "memory_plan": plan.summary(),
            "network_shape": list(prep.net.shape),
            "network_affine": prep.net.affine.tolist(),
            "crop_foreground": bool(crop_foreground),
            "intensity_normalisation": {"method": "min-max", "min": prep.norm_range[0], "max": prep.norm_range[1],
                                        "ct_window_hu": [0.0, 80.0] if prep.ct_window else None},
            "input_shape": list(prep.image.shape),
            "input_affine": prep.image.affine.tolist(),
            "input_path": prep.image.meta.get("source_path"),
            "timings": {k: round(v, 4) for k, v in timings.items()},
            "cpu_timings": {k: round(v, 4) for k, v in cpu.items()},
            "task_timings": task_times,
            "warnings": warnings,
        }
        if on_output is not None:
            metadata["streamed_outputs"] = streamed
        result = Prediction(outputs=outputs, tables=dict(ctx.tables), metadata=metadata)
        if keep_raw:
            result.raw, result.raw_affine = raw, prep.net.affine.copy()
        cb(1.0, "done")
        return result

    def _context(self, prep: Prepared, raw: Dict[str, np.ndarray], heads: Dict[str, str], output_frame: str,
                 atlas: Optional[Volume], return_probabilities: bool, mask_background: bool) -> TaskContext:
        net_aff = prep.net.affine
        # one mapper per grid pair, built once: identity / exact copy / cached-grid resampling
        # (the mapper behind prep.frame.to_input)
        to_input = prep.frame.mapper()
        net_image = np.asarray(prep.net.data, np.float32)
        lo, hi = prep.norm_range
        if output_frame == "input":
            out_aff, out_shape, to_out = prep.image.affine, prep.image.shape, to_input
            image_out = np.asarray(prep.image.data, np.float32)
            if prep.ct_window:
                image_out = np.clip(image_out, 0.0, 80.0)
            fg_out = prep.foreground_in
        elif self.voxel_mm == 1.0:
            out_aff, out_shape = net_aff, prep.net.shape
            to_out = GridMapper(net_aff, prep.net.shape, net_aff, prep.net.shape)  # identity
            image_out = (net_image * (hi - lo) + lo).astype(np.float32)
            fg_out = net_image > 0
        else:  # a coarser network grid: the 1 mm RAS grid over the same box
            out_aff, out_shape = one_mm_grid(net_aff, prep.net.shape, self.voxel_mm)
            to_out = GridMapper(net_aff, prep.net.shape, out_aff, out_shape)
            src = prep.image if not prep.ct_window else prep.image.with_data(np.clip(prep.image.data, 0.0, 80.0))
            image_out = np.asarray(resample_to_grid(src, out_aff, out_shape, order="linear").data, np.float32)
            fg_out = image_out > lo
        if prep.ct_window and output_frame != "input":  # CT: not air (above CT_AIR_HU), mapped from the input
            fg_vol = prep.image.with_data(prep.foreground_in.astype(np.uint8))
            fg_out = np.asarray(resample_to_grid(fg_vol, out_aff, tuple(out_shape), order="nearest").data) > 0
        extra: Dict[str, Any] = {}
        fg_in = prep.foreground_in
        # a scan whose background is noise: the input's foreground (above its minimum) is the whole field
        # of view, so the outputs are kept where the head is, as a masked scan's are where it is not zero
        noisy = mask_background and not prep.ct_window and prep.masked is False
        if mask_background and ("seg" in heads or noisy):
            hm = prep.head if prep.head is not None else head_mask(net_image, voxel_mm=self.voxel_mm, masked=prep.masked)
            hm = hm.astype(np.uint8)
            head_in = prep.head_in if prep.head_in is not None else np.asarray(to_input(hm, "nearest", 0)) > 0
            head_out = head_in if output_frame == "input" else np.asarray(to_out(hm, "nearest", 0)) > 0
            if "seg" in heads:
                extra["head_in"], extra["head_out"] = head_in, head_out
            if noisy:
                fg_in = fg_in & head_in
                fg_out = fg_out & head_out
        factor = int(round(self.voxel_mm))
        if factor > 1 and abs(self.voxel_mm - factor) < 1e-6 and "seg" in heads:
            # labels of a coarse model are decided on the 1 mm grid of the same box (logits interpolated)
            fine_aff, fine_shape = one_mm_grid(net_aff, prep.net.shape, factor)
            extra["fine_factor"] = factor
            extra["fine_to_output"] = GridMapper(fine_aff, fine_shape, np.asarray(out_aff, float), tuple(out_shape))
            extra["fine_to_input"] = GridMapper(fine_aff, fine_shape, prep.frame.input_affine, prep.frame.input_shape)
        return TaskContext(
            raw=raw, heads=heads, net_image=net_image, net_affine=net_aff, norm_range=(lo, hi),
            out_affine=np.asarray(out_aff, float), out_shape=tuple(out_shape), image_out=image_out,  # type: ignore[arg-type]
            foreground_out=fg_out, to_output=to_out, to_input=to_input,
            input_affine=prep.image.affine, input_shape=prep.image.shape, foreground_in=fg_in,
            scheme=self._scheme() if "seg" in heads else None, atlas=atlas,
            return_probabilities=return_probabilities, mask_background=mask_background,
            output_exact=to_out.exact, output_channels=to_out.channels, output_points=to_out.points,
            meta={"model": self._model_meta().get("name"), "frame": output_frame}, **extra,
        )


def one_mm_grid(affine: np.ndarray, shape: Sequence[int], voxel_mm: float) -> Tuple[np.ndarray, Tuple[int, int, int]]:
    """The 1 mm grid covering the same box as an axis-aligned grid of ``voxel_mm`` voxels.

    >>> aff, shp = one_mm_grid(np.diag([2.0, 2.0, 2.0, 1.0]), (3, 4, 5), 2.0)
    >>> shp, float(aff[0, 0]), float(aff[0, 3])
    ((6, 8, 10), 1.0, -0.5)
    """
    a = np.asarray(affine, np.float64)
    f = float(voxel_mm)
    out = a.copy()
    out[:3, :3] = a[:3, :3] / f
    out[:3, 3] = a[:3, 3] - a[:3, :3] @ np.full(3, (f - 1.0) / (2.0 * f))
    return out, tuple(int(round(s * f)) for s in shape)  # type: ignore[return-value]


def _grid_bytes(prep: Prepared, output_frame: str) -> float:
    """Bytes of the sampling grid the output mapping keeps (0 when outputs are copied exactly)."""
    from brainfm.geometry.mapping import GRID_CACHE_BYTES

    if output_frame != "input":
        return 0.0
    m = prep.frame.mapper()
    return 0.0 if m.exact else float(min(13 * int(np.prod(prep.frame.input_shape)), GRID_CACHE_BYTES))


def _atlas_name(atlas: Volume) -> str:
    """How the outputs name the atlas a registration used: its name, or its file's name.

    >>> _atlas_name(Volume(np.zeros((2, 2, 2), np.float32), np.eye(4), {"source_path": "/data/gca.mgz"}))
    'gca.mgz'
    """
    meta = getattr(atlas, "meta", None) or {}
    if meta.get("atlas_name"):
        return str(meta["atlas_name"])
    return Path(str(meta["source_path"])).name if meta.get("source_path") else "an atlas volume given in memory"


def _is_existing_file(x: Any) -> bool:
    try:
        return Path(x).is_file()
    except TypeError:
        return False
