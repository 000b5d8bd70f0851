"""Task post-processing: raw head outputs (network grid, reference units) -> user-facing outputs
(mm, mm^3, HU, FreeSurfer label numbers) on the output grid. One small module per task; the
mapping task -> heads -> post-processor is in :mod:`brainfm.tasks.registry`.

>>> from brainfm.tasks import available_tasks
>>> available_tasks(["CT", "distance"])
['ct', 'dist', 'feat']
"""
from __future__ import annotations

from brainfm.tasks.context import TaskContext
from brainfm.tasks.registry import TASK_NAMES, TASKS, TaskSpec, available_tasks, head_map, resolve_tasks

__all__ = ["TASKS", "TASK_NAMES", "TaskSpec", "TaskContext", "available_tasks", "head_map", "resolve_tasks"]
