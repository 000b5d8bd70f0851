"""Memory planning of one prediction: tile size, compact accumulation and the expected peak.

The budget is a target for the **peak resident memory of the process** while it predicts (model,
input and everything the prediction allocates). :func:`plan_memory` starts from what the process
holds when the forward is planned (``baseline``) and adds, per phase:

- forward: one tile's activations (:func:`brainfm.inference.device.forward_bytes`) and head
  outputs, the blending band of :class:`~brainfm.inference.tiling.TileAccumulator` (float32 sums
  of every channel for one tile edge of rows) and the finished raw outputs on the network grid
  (continuous heads float32, the segmentation as a 1-byte label decision, features float16);
- post-processing: the finished raw outputs plus the outputs on the output grid that are held at
  once: one task's outputs when they are handed on as they are produced (``streaming``, the
  ``brainfm run`` command), all of them otherwise; and, when the labels are refined to the scan
  (``refine``), the tissue model held while the tasks that read it run (:data:`REFINE_CHANNELS`).

The largest tile (multiple of 16 and of the backbone's :func:`aligned_voxels` side multiple) whose
forward phase fits is chosen, its activations counted on the padded side; the whole volume runs at
once when it fits. When even the smallest tile (:data:`MIN_PLAN_TILE`, at least the network's
``2 ** (levels - 1)``) does not fit, the plan is over budget and :func:`check_plan` raises a
:class:`~brainfm.errors.ResourceError` before any work, with advice that applies to the request.

>>> p = plan_memory((200, 200, 200), output_voxels=200**3, f_maps=16, num_levels=5,
...                 channels={"T1": 1, "segmentation": 33}, tasks=["t1", "seg"], budget_bytes=2e9,
...                 baseline_bytes=0.3e9, device=torch.device("cpu"), reduce={"segmentation": "argmax"})
>>> p.tile_size, p.fits
(96, True)
>>> p.expected_peak_bytes <= 2e9
True
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from brainfm.errors import ResourceError
from brainfm.inference import device as devmod
from brainfm.inference.tiling import band_rows, plan_tiles

#: smallest tile edge the planner goes down to before declaring a plan over budget
MIN_PLAN_TILE = 32
#: margin on every phase estimate: allocator fragmentation and run-to-run variation (measured up
#: to ~8 % above the plain sum on a 128^3 tiled prediction)
SLACK = 1.15

#: output-grid channels (float32 equivalents) each task holds at once, temporaries included
#: (measured on a 400^3 input, 2 mm model: one-channel images peak at ~3.5 channels: the output,
#: its float32 source, anti-alias and denormalisation temporaries)
TASK_OUTPUT_CHANNELS: Dict[str, float] = {
    "t1": 3.5, "t2": 3.5, "flair": 3.5, "ct": 3.5, "sr": 3.5,
    "seg": 2.5,  # int32 labels + uint8 indices + mask
    "dist": 5.0, "bias": 3.0,
    "reg": 6.0,  # coordinates (3) + displacement (3) (measured peak ~5 channels)
}
#: extra output-grid channels of ``reg`` when an atlas is warped (warped atlas + foreground samples)
REG_ATLAS_CHANNELS = 3.0
#: output-grid channels (float32 equivalents) of the segmentation's refinement to the scan, held from
#: the label decision until the segmentation head is released (the fitted bias field, the grouped prior,
#: posteriors and intensities of the labelled voxels; measured ~6.9 on the voxelmorph T1, whose labelled
#: voxels are 28 % of its grid)
REFINE_CHANNELS = 8.0


@dataclass
class MemoryPlan:
    """How a prediction runs within its memory budget (bytes throughout)."""

    tile_size: Optional[int]  #: None: the whole volume in one forward
    fallback_tile: int  #: tile edge retried after an out-of-memory error
    budget_bytes: float  #: peak resident memory target of the process
    baseline_bytes: float  #: resident memory when the forward was planned
    forward_bytes: float  #: forward phase: tile activations + band + finished raw outputs
    postprocess_bytes: float  #: post-processing phase: raw outputs + outputs held at once
    band_rows: int  #: rows of the first axis held as float32 blending sums
    reduce: Dict[str, str] = field(default_factory=dict)
    streaming: bool = False
    budget_given: bool = False  #: the caller set the budget (a hard limit)
    device_budget_bytes: Optional[float] = None  #: GPU memory for the forward (CUDA), else None
    forward_host_bytes: float = 0.0  #: host part of the forward phase (band + raw outputs + tile outputs)

    @property
    def expected_peak_bytes(self) -> float:
        """Planned peak resident memory of the process."""
        host_forward = self.forward_bytes if self.device_budget_bytes is None else self.forward_host_bytes
        return self.baseline_bytes + max(host_forward, self.postprocess_bytes)

    @property
    def fits(self) -> bool:
        """True when the expected peak is within the budget."""
        return self.expected_peak_bytes <= self.budget_bytes

    def summary(self) -> Dict[str, object]:
        """JSON-friendly figures (GB) for the prediction metadata."""
        gb = lambda b: round(float(b) / 1e9, 3)  # noqa: E731
        return {"budget_gb": gb(self.budget_bytes), "expected_peak_gb": gb(self.expected_peak_bytes),
                "baseline_gb": gb(self.baseline_bytes), "forward_gb": gb(self.forward_bytes),
                "postprocess_gb": gb(self.postprocess_bytes), "band_rows": self.band_rows,
                "compact_outputs": dict(self.reduce), "streaming": self.streaming}


def min_tile(num_levels: int) -> int:
    """Smallest useful tile edge: :data:`MIN_PLAN_TILE` and at least one voxel at the deepest level.

    >>> min_tile(5), min_tile(7)
    (32, 64)
    """
    return max(MIN_PLAN_TILE, 2 ** (max(int(num_levels), 1) - 1))


def aligned_voxels(shape: Sequence[int], num_levels: int) -> float:
    """Voxels the backbone computes for an input of ``shape``: each side padded to a multiple of
    ``2 ** (num_levels - 1)`` (:attr:`brainfm.models.unet.UNet3D.size_multiple`).

    >>> aligned_voxels((80, 81, 17), 5)
    245760.0
    """
    m = 2 ** (max(int(num_levels), 1) - 1)
    return float(np.prod([-(-int(n) // m) * m for n in shape[:3]]))


def _raw_bytes(voxels: float, channels: Mapping[str, int], reduce: Mapping[str, str]) -> float:
    total = 0.0
    for name, c in channels.items():
        how = reduce.get(name, "mean")
        total += voxels * (1.0 if how == "argmax" else 2.0 * c if how == "float16" else 4.0 * c)
    return total


def _output_bytes(tasks: Sequence[str], voxels: float, channels: Mapping[str, int], *, streaming: bool,
                  probabilities: bool, seg_channels: int, f_maps: int, atlas: bool = True) -> float:
    per = []
    for t in tasks:
        if t == "feat":
            b = voxels * (2.0 * f_maps + 4.0)  # float16 features + one float32 channel in flight
        else:
            b = voxels * 4.0 * TASK_OUTPUT_CHANNELS.get(t, 2.0)
            if t == "reg" and atlas:
                b += voxels * 4.0 * REG_ATLAS_CHANNELS
            if t == "seg" and probabilities:
                b += voxels * 8.0 * seg_channels  # softmax + probabilities on the output grid
        per.append(b)
    if not per:
        return 0.0
    return max(per) if streaming else sum(per)


def plan_memory(net_shape: Sequence[int], *, output_voxels: float, f_maps: int, num_levels: int,
                channels: Mapping[str, int], tasks: Sequence[str], budget_bytes: float, baseline_bytes: float,
                device: torch.device, reduce: Optional[Mapping[str, str]] = None, streaming: bool = False,
                probabilities: bool = False, amp_dtype: Optional[torch.dtype] = None,
                channels_last: bool = False, tile_size: Optional[int] = None, tile_overlap: float = 0.25,
                budget_given: bool = False, device_budget_bytes: Optional[float] = None,
                atlas: bool = True, grid_bytes: float = 0.0, test_time_flip: bool = False,
                refine: bool = False) -> MemoryPlan:
    """Plan tiles and compact accumulation for a network-frame shape (see the module docstring).

    ``channels``: raw outputs of the forward, name -> channels (``feat`` included when wanted).
    ``atlas``: whether registration also warps an atlas. ``grid_bytes``: the sampling grid kept for
    mapping outputs onto the output grid (:class:`~brainfm.geometry.GridMapper`).
    ``tile_size`` forces tiles of that edge. ``device_budget_bytes``: GPU memory available to the
    forward (CUDA); the tile is then chosen from it and the host side is checked against
    ``budget_bytes``. ``test_time_flip``: a tile's head outputs are held twice (the mirrored pass).
    ``refine``: the segmentation is refined to the scan (``seg_method`` fit).
    """
    reduce = dict(reduce or {})
    shape = tuple(int(s) for s in net_shape[:3])
    voxels = float(np.prod(shape))
    n_ch = float(sum(channels.values()))
    n_tile_ch = n_ch * (2.0 if test_time_flip else 1.0)  # head outputs of a tile held at once
    seg_channels = int(channels.get("segmentation", 0))
    finished = _raw_bytes(voxels, channels, reduce)
    post = SLACK * (finished + float(grid_bytes) + _output_bytes(tasks, output_voxels, channels, streaming=streaming,
                                             probabilities=probabilities, seg_channels=seg_channels, f_maps=f_maps,
                                             atlas=atlas)
                    + (float(output_voxels) * 4.0 * REFINE_CHANNELS if refine else 0.0))
    lo = min_tile(num_levels)
    step = max(16, 2 ** (max(int(num_levels), 1) - 1))  # tiles the backbone needs no padding for

    def tile_cost(edge: Optional[int]):
        """(device bytes of one tile, host bytes of the forward phase, band rows)."""
        if edge is None or edge >= max(shape):
            # whole volume: head outputs full size, reduced right after the forward
            dev = devmod.forward_bytes(aligned_voxels(shape, num_levels), f_maps, autocast_dtype_=amp_dtype,
                                       channels_last=channels_last)
            heads = voxels * 4.0 * n_tile_ch
            return SLACK * (dev + heads), SLACK * (heads + finished), shape[0]
        tiles = plan_tiles(shape, edge, tile_overlap)
        tv = float(np.prod([min(edge, s) for s in shape]))
        rows = band_rows(tiles, shape[0])
        band = 4.0 * (n_ch + 1.0) * rows * shape[1] * shape[2]
        dev = devmod.forward_bytes(aligned_voxels([min(edge, s) for s in shape], num_levels), f_maps,
                                   autocast_dtype_=amp_dtype, channels_last=channels_last)
        heads = 1.5 * tv * 4.0 * n_tile_ch
        return SLACK * (dev + heads), SLACK * (band + heads + finished), rows

    on_gpu = device_budget_bytes is not None
    host_left = budget_bytes - baseline_bytes

    def fits(edge: Optional[int]) -> bool:
        dev, host, _ = tile_cost(edge)
        if on_gpu:
            return dev <= float(device_budget_bytes) and host <= host_left
        return dev + host <= host_left

    if tile_size is not None:
        tile = None if tile_size >= max(shape) else int(tile_size)
    elif fits(None):
        tile = None
    else:
        tile = None
        edge = (int(max(shape)) // step) * step
        while edge >= lo:
            if edge < max(shape) and fits(edge):
                tile = edge
                break
            edge -= step
        if tile is None:  # nothing fits: the smallest tiles (check_plan reports it)
            tile = lo if max(shape) > lo else None
    dev, host, rows = tile_cost(tile)
    fallback = max(lo, ((tile or max(shape)) // 2 // step) * step)
    if tile is None:
        fallback = max(lo, min(((int(max(shape)) // 2) // step) * step, 128))
    plan = MemoryPlan(tile_size=tile, fallback_tile=fallback, budget_bytes=float(budget_bytes),
                      baseline_bytes=float(baseline_bytes), forward_bytes=(host if on_gpu else dev + host),
                      postprocess_bytes=post, band_rows=rows, reduce=reduce, streaming=streaming,
                      budget_given=budget_given, device_budget_bytes=device_budget_bytes, forward_host_bytes=host)
    return plan


def memory_advice(*, device: torch.device, n_tasks: int, output_frame: str, output_voxels: float,
                  net_voxels: float, streaming: bool, probabilities: bool, feat: bool, budget_given: bool,
                  need_bytes: float, available_bytes: Optional[float], tiled: bool) -> List[str]:
    """What the caller can change to need less memory, listing only options that exist and apply
    (Python keyword and ``brainfm run`` option).

    >>> memory_advice(device=torch.device("cpu"), n_tasks=1, output_frame="1mm", output_voxels=1e6,
    ...               net_voxels=1e6, streaming=True, probabilities=False, feat=False, budget_given=False,
    ...               need_bytes=1e9, available_bytes=None, tiled=True)
    ['free memory by closing other programs']
    """
    tips: List[str] = []
    if device.type in ("cuda", "mps"):
        tips.append("run on the CPU (device='cpu', --device cpu), which uses main memory")
    if probabilities:
        tips.append("leave out the segmentation probabilities (return_probabilities=False, no --probabilities)")
    if feat:
        tips.append("leave out the 'feat' task (features cost 2 bytes per channel and voxel)")
    if n_tasks > 1:
        tips.append("request fewer tasks (tasks=[...], --tasks seg,t1)")
    if output_frame == "input" and output_voxels > 1.5 * net_voxels:
        tips.append("write the outputs on the network grid (output_frame='1mm', --output-frame 1mm), "
                    f"{output_voxels / max(net_voxels, 1.0):.0f}x fewer voxels than this input grid")
    if not streaming and n_tasks > 1:
        tips.append("hand each output on as soon as it is ready (predict(..., on_output=...); the "
                    "brainfm run command does this)")
    if budget_given and available_bytes is not None and available_bytes > need_bytes:
        tips.append(f"raise the memory budget (memory_budget_gb=, --memory-gb; about "
                    f"{available_bytes / 1e9:.1f} GB are available now)")
    if not tiled:
        tips.append("force tiling (tile_size=96, --tile-size 96)")
    tips.append("free memory by closing other programs")
    return tips


def check_plan(plan: MemoryPlan, *, available_bytes: float, advice: Sequence[str]) -> Optional[str]:
    """Raise :class:`ResourceError` when the plan cannot work; return a warning when it exceeds a
    default budget but fits the memory available now (None when within the budget).

    A budget the caller set is a hard limit. A default budget (a share of the available memory)
    only warns, unless the plan needs more than the memory available now.
    """
    if plan.fits:
        return None
    need = plan.expected_peak_bytes
    over = (f"this prediction needs about {need / 1e9:.1f} GB (already held {plan.baseline_bytes / 1e9:.1f}, "
            f"network pass {max(plan.forward_bytes, plan.forward_host_bytes) / 1e9:.1f}, outputs "
            f"{plan.postprocess_bytes / 1e9:.1f})")
    if plan.budget_given or need > plan.baseline_bytes + available_bytes:
        limit = (f"the memory budget is {plan.budget_bytes / 1e9:.1f} GB" if plan.budget_given
                 else f"only {available_bytes / 1e9:.1f} GB of memory are available")
        raise ResourceError(f"{over} but {limit}; to need less: " + "; ".join(advice))
    return f"{over}, more than the default budget of {plan.budget_bytes / 1e9:.1f} GB; it may be slow or fail"
