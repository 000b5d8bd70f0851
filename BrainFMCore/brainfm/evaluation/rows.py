"""The result record of one row of the evaluation table, and the "model has no X head" check.

A row is a plain JSON-ready dict: ``row`` (name), ``status`` (``ok``, ``n/a`` or ``skipped``),
``headline`` (one line for the markdown table), ``metrics``, ``anchor``, ``goal``, ``passed``
(bool, or None when not applicable), ``note``, and later ``command`` and ``montage`` (added by
:mod:`brainfm.evaluation.table`).

>>> r = na_row("synthesis", "T2", "beat the baseline")
>>> r["status"], r["headline"]
('n/a', 'n/a: model has no T2 head')
>>> row("x", metrics={"dice": 0.9}, goal=">= 0.8", passed=True)["status"]
'ok'
"""
from __future__ import annotations

from typing import Any, Dict, Optional

#: task -> head description used in "n/a: model has no <X> head"
HEAD_WORDS = {"seg": "segmentation", "bias": "bias field", "reg": "registration", "t1": "T1",
              "t2": "T2", "flair": "FLAIR", "ct": "CT", "dist": "distance", "sr": "super-resolution"}


def has_task(predictor: Any, task: str) -> bool:
    """Whether ``predictor`` (a :class:`brainfm.inference.Predictor`) can run ``task``."""
    return task in getattr(predictor, "available_tasks", [])


def row(name: str, *, metrics: Optional[Dict[str, Any]] = None, anchor: Optional[Dict[str, Any]] = None,
        goal: str = "", passed: Optional[bool] = None, headline: str = "", note: str = "",
        status: str = "ok") -> Dict[str, Any]:
    """A row record (see the module docstring)."""
    return {"row": name, "status": status, "headline": headline, "metrics": dict(metrics or {}),
            "anchor": dict(anchor or {}), "goal": goal, "passed": passed, "note": note}


def na_row(name: str, head: str, goal: str) -> Dict[str, Any]:
    """Row of a model that lacks the head the row needs."""
    return row(name, goal=goal, status="n/a", headline=f"n/a: model has no {head} head")


def skipped_row(name: str, reason: str, goal: str = "") -> Dict[str, Any]:
    """Row that could not run (e.g. its data are missing)."""
    return row(name, goal=goal, status="skipped", headline=f"skipped: {reason}")
