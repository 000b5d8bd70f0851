"""Which model heads serve which task (torch-free, so model lists can say what a model can do).

:mod:`brainfm.tasks.registry` builds its task table from :data:`TASK_HEADS`; the model store, the
``brainfm models`` command and the Slicer model selector use :func:`tasks_for_heads`.

>>> tasks_for_heads(["T1", "segmentation", "registration"])
['t1', 'seg', 'reg', 'feat']
>>> tasks_for_heads(["image"])   # Brain-ID's anatomy head serves t1
['t1', 'feat']
>>> tasks_for_heads(["T1", "high_res_residual"], voxel_mm=2.0)   # no 1 mm super-resolution on a 2 mm grid
['t1', 'feat']
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Tuple

#: task name -> heads that can serve it (first present wins); ``feat`` needs only the backbone
TASK_HEADS: Dict[str, Tuple[str, ...]] = {
    "t1": ("T1", "image"),
    "t2": ("T2",),
    "flair": ("FLAIR",),
    "ct": ("CT",),
    "sr": ("high_res_residual",),
    "seg": ("segmentation",),
    "dist": ("distance",),
    "bias": ("bias_field_log",),
    "reg": ("registration",),
    "feat": (),
}


#: heads whose task needs a 1 mm working grid (hidden for models with ``voxel_mm > 1``)
COARSE_GRID_HIDDEN_HEADS: Tuple[str, ...] = ("high_res_residual",)


def served_heads(heads: Iterable[str], *, voxel_mm: float = 1.0) -> List[str]:
    """The heads that serve tasks on a model working at ``voxel_mm``: a model on a grid coarser than
    1 mm offers no 1 mm super-resolution."""
    coarse = float(voxel_mm or 1.0) > 1.0 + 1e-6
    return [h for h in heads if not (coarse and h in COARSE_GRID_HIDDEN_HEADS)]


def tasks_for_heads(heads: Iterable[str], *, voxel_mm: float = 1.0) -> List[str]:
    """Tasks a model with these heads supports at its working grid ``voxel_mm``, in canonical order
    (``feat`` always)."""
    hs = set(served_heads(heads, voxel_mm=voxel_mm))
    return [t for t, served_by in TASK_HEADS.items() if not served_by or hs.intersection(served_by)]
