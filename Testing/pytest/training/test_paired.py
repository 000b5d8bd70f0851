"""Paired comparison of two forked runs (brainfm.training.paired, Training/compare_pair.py)."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from brainfm.training.paired import paired_difference
from brainfm.training.runlog import CsvLog, read_csv_log

REPO = Path(__file__).resolve().parents[3]


def _run(folder: Path, values, start: int = 100) -> Path:
    log = CsvLog(folder / "log.csv")
    for i, v in enumerate(values):
        log.write({"step": start + 10 * i, "seg_ce": v, "loss": 2 * v})
    return folder


def test_difference_over_common_steps_only(tmp_path):
    a = read_csv_log(_run(tmp_path / "a", [0.5, 0.4, 0.3, 0.2]) / "log.csv")             # steps 100..130
    b = read_csv_log(_run(tmp_path / "b", [0.45, 0.36, 0.29, 0.2, 0.1], start=110) / "log.csv")  # 110..150
    r = paired_difference(a, b, "seg_ce")
    # common steps 110, 120, 130: a = 0.4, 0.3, 0.2; b = 0.45, 0.36, 0.29
    assert r["n"] == 3
    assert r["mean_a"] == pytest.approx(0.3) and r["mean_b"] == pytest.approx(0.3667, abs=1e-4)
    assert r["diff"] == pytest.approx(0.0667, abs=1e-4)
    assert r["sem"] == pytest.approx(0.0120, abs=1e-4)  # differences 0.05, 0.06, 0.09
    r = paired_difference(a, b, "seg_ce", after=110, until=120)
    assert r["n"] == 1 and r["diff"] == pytest.approx(0.06) and math.isnan(r["sem"])
    assert paired_difference(a, b, "no_such_value")["n"] == 0


def test_script_prints_the_paired_table(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("compare_pair", REPO / "Training" / "compare_pair.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    _run(tmp_path / "a", [0.5, 0.4, 0.3])
    _run(tmp_path / "b", [0.4, 0.3, 0.2])
    assert mod.main([str(tmp_path / "a"), str(tmp_path / "b"), "--keys", "seg_ce", "loss"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[:5] == ["seg_ce", "3", "0.4000", "0.3000", "-0.1000"]
    assert out[2].split()[4] == "-0.2000"
    assert mod.main([str(tmp_path / "a"), str(tmp_path / "missing")]) == 2
