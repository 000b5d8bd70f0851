"""Paired comparison of two training runs forked from one checkpoint.

Two runs continued from the same checkpoint (``Training/grow_run.py`` forks one, with another recipe
or a grown network) draw the same batches at the same steps, so the difference of a logged value at
matching steps is far less noisy than the value itself: its mean and standard error tell whether
a change helps within a few hundred steps.

>>> a = [{"step": s, "seg_ce": 0.50} for s in (10, 20, 30)]
>>> b = [{"step": s, "seg_ce": 0.50 - 0.01 * i} for i, s in enumerate((10, 20, 30))]
>>> r = paired_difference(a, b, "seg_ce")
>>> r["n"], round(r["diff"], 3), round(r["sem"], 3)
(3, -0.01, 0.006)
"""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, Mapping, Optional


def paired_difference(rows_a: Iterable[Mapping[str, Any]], rows_b: Iterable[Mapping[str, Any]], key: str, *,
                      after: int = 0, until: Optional[int] = None) -> Dict[str, float]:
    """Mean of ``key`` in both runs over the steps both logged (``after < step <= until``) and the
    mean difference ``b - a`` with its standard error. ``rows_*``: rows of
    :func:`brainfm.training.runlog.read_csv_log`.

    Returns ``{"n", "mean_a", "mean_b", "diff", "sem"}`` (``sem`` is NaN below 2 steps; every value NaN
    without a common step).
    """
    def by_step(rows: Iterable[Mapping[str, Any]]) -> Dict[int, float]:
        out: Dict[int, float] = {}
        for r in rows:
            if key in r and "step" in r and after < int(r["step"]) and (until is None or int(r["step"]) <= until):
                out[int(r["step"])] = float(r[key])  # a resumed run's later row for a step wins
        return out

    a, b = by_step(rows_a), by_step(rows_b)
    steps = sorted(set(a) & set(b))
    n = len(steps)
    if not n:
        nan = float("nan")
        return {"n": 0, "mean_a": nan, "mean_b": nan, "diff": nan, "sem": nan}
    d = [b[s] - a[s] for s in steps]
    mean = sum(d) / n
    sem = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1) / n) if n > 1 else float("nan")
    return {"n": n, "mean_a": sum(a[s] for s in steps) / n, "mean_b": sum(b[s] for s in steps) / n,
            "diff": mean, "sem": sem}
