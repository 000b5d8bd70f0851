"""Which model heads serve which task (torch-free, so model lists can say what a model can do).

:mod:`brainfm.tasks.registry` builds its task table from :data:`TASK_HEADS`; the model store, the
``brainfm models`` command and the Slicer model selector use :func:`tasks_for_heads`.

>>> tasks_for_heads(["T1", "segmentation", "registration"])
['t1', 'seg', 'reg', 'feat']
>>> tasks_for_heads(["image"])   # Brain-ID's anatomy head serves t1
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


def tasks_for_heads(heads: Iterable[str]) -> List[str]:
    """Tasks a model with these heads supports, in canonical order (``feat`` always)."""
    hs = set(heads)
    return [t for t, served_by in TASK_HEADS.items() if not served_by or hs.intersection(served_by)]
