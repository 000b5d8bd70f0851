"""Task names -> heads -> post-processors.

A task is available when the model has one of its heads (``feat`` is always available):

======  ==========================  ==============================================================
task    heads (first present wins)  outputs
======  ==========================  ==============================================================
t1      T1, image (Brain-ID)        synth_t1
t2      T2                          synth_t2
flair   FLAIR                       synth_flair
ct      CT                          synth_ct
sr      high_res_residual           superres
seg     segmentation                seg, seg_probabilities (optional), tables["seg_volumes"]
dist    distance                    dist_lp, dist_lw, dist_rp, dist_rw
bias    bias_field_log              bias_field, bias_corrected
reg     registration                reg_atlas_coords, reg_displacement, atlas_warped, subject_in_atlas
feat    (backbone feature)          features
======  ==========================  ==============================================================

>>> available_tasks(["T1", "segmentation", "registration"])
['t1', 'seg', 'reg', 'feat']
>>> resolve_tasks(["all"], ["image"])   # 'all' leaves out the large 'feat' unless asked
['t1']
>>> resolve_tasks(["sr"], ["T1", "high_res_residual"], voxel_mm=2.0)
Traceback (most recent call last):
  ...
brainfm.errors.InputError: task 'sr' (1 mm super-resolution) is not offered by a model that works on a 2 mm grid; available tasks: t1, feat
>>> head_map(["t1"], ["image"])
{'t1': 'image'}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Sequence, Tuple

from brainfm.errors import InputError
from brainfm.models.task_heads import COARSE_GRID_HIDDEN_HEADS, TASK_HEADS, tasks_for_heads
from brainfm.tasks import bias, distance, features, registration, segmentation, superres, synthesis
from brainfm.tasks.context import TaskContext
from brainfm.volume import Volume

FEAT = "feat"


@dataclass(frozen=True)
class TaskSpec:
    """One task: the heads that can serve it, its output keys and its post-processor."""

    name: str
    heads: Tuple[str, ...]
    outputs: Tuple[str, ...]
    description: str
    run: Callable[[TaskContext], Dict[str, Volume]]


TASKS: Dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("t1", TASK_HEADS["t1"], ("synth_t1",), "synthetic T1-weighted image", synthesis.run_t1),
        TaskSpec("t2", TASK_HEADS["t2"], ("synth_t2",), "synthetic T2-weighted image", synthesis.run_t2),
        TaskSpec("flair", TASK_HEADS["flair"], ("synth_flair",), "synthetic FLAIR image", synthesis.run_flair),
        TaskSpec("ct", TASK_HEADS["ct"], ("synth_ct",), "synthetic CT (HU)", synthesis.run_ct),
        TaskSpec("sr", TASK_HEADS["sr"], ("superres",), "1 mm super-resolution", superres.run_sr),
        TaskSpec("seg", TASK_HEADS["seg"], ("seg", "seg_probabilities"), "anatomical segmentation",
                 segmentation.run_seg),
        TaskSpec("dist", TASK_HEADS["dist"], ("dist_lp", "dist_lw", "dist_rp", "dist_rw"),
                 "signed distance to cortical surfaces (mm)", distance.run_dist),
        TaskSpec("bias", TASK_HEADS["bias"], ("bias_field", "bias_corrected"), "bias-field estimation",
                 bias.run_bias),
        TaskSpec("reg", TASK_HEADS["reg"],
                 ("reg_atlas_coords", "reg_displacement", "atlas_warped", "subject_in_atlas"),
                 "registration to the atlas", registration.run_reg),
        TaskSpec(FEAT, TASK_HEADS[FEAT], ("features",), "backbone features (X,Y,Z,C) float16", features.run_feat),
    )
}
TASK_NAMES: Tuple[str, ...] = tuple(TASKS)


def _head_for(spec: TaskSpec, heads: Sequence[str]) -> str:
    for h in spec.heads:
        if h in heads:
            return h
    return ""


def available_tasks(heads: Iterable[str]) -> List[str]:
    """Tasks the model's heads support, in canonical order (``feat`` always):
    :func:`brainfm.models.task_heads.tasks_for_heads`."""
    return tasks_for_heads(heads)


def resolve_tasks(requested: Iterable[str], heads: Iterable[str], *, voxel_mm: float = 1.0) -> List[str]:
    """Expand ``all``, lower-case, de-duplicate and check the requested tasks against the model
    (its ``heads`` and the grid it works on, ``voxel_mm``: a coarser grid than 1 mm offers no 1 mm
    super-resolution, :func:`~brainfm.models.task_heads.tasks_for_heads`).

    ``all`` means every available task except ``feat`` (large) unless listed explicitly.
    Raises :class:`InputError` naming what is available and, for a task the model has the head of
    but not the grid for, why.
    """
    if isinstance(requested, str):
        requested = [t for t in requested.replace(",", " ").split() if t]
    hs = list(heads)
    avail = tasks_for_heads(hs, voxel_mm=voxel_mm)
    out: List[str] = []
    for t in requested:
        name = str(t).strip().lower()
        if name == "all":
            names = [a for a in avail if a != FEAT]
        elif name not in TASKS:
            raise InputError(
                f"unknown task {t!r}; known tasks: {', '.join(TASK_NAMES)} or 'all' "
                f"(this model supports: {', '.join(avail)})"
            )
        elif name not in avail and set(TASKS[name].heads) & set(hs) & set(COARSE_GRID_HIDDEN_HEADS):
            raise InputError(
                f"task {name!r} ({TASKS[name].description}) is not offered by a model that works on a "
                f"{float(voxel_mm):g} mm grid; available tasks: {', '.join(avail)}"
            )
        elif name not in avail:
            raise InputError(
                f"task {name!r} needs the model head {' or '.join(TASKS[name].heads)}, which this model does "
                f"not have; available tasks: {', '.join(avail)}"
            )
        else:
            names = [name]
        for n in names:
            if n not in out:
                out.append(n)
    if not out:
        raise InputError(f"no task requested; available tasks: {', '.join(avail)}")
    return [n for n in TASK_NAMES if n in out]


def head_map(tasks: Iterable[str], heads: Iterable[str]) -> Dict[str, str]:
    """task -> head name serving it (``feat`` maps to ``feat``)."""
    hs = list(heads)
    return {t: (FEAT if t == FEAT else _head_for(TASKS[t], hs)) for t in tasks}
