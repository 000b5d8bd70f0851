"""The documents quote the bundled model's measured quality as its sidecar records it: weights that
replace the bundled ones (``Training/bundle_model.py``) change the sidecar, and README and the model
card's status must follow in the same change, not keep an older model's numbers."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import brainfm

CORE = Path(brainfm.__file__).resolve().parents[1]
REPO = CORE.parent
BUNDLED = CORE / "brainfm" / "models" / "bundled"


def quality():
    sidecar = BUNDLED / "brainfm-compact.json"
    if not sidecar.is_file():
        pytest.skip("no bundled model in this checkout")
    return json.loads(sidecar.read_text())["quality"]


def dice(value: float) -> str:
    return f"{value:.3f}"


def test_readme_quotes_the_shipped_real_t1_dice():
    q, text = quality(), (REPO / "README.md").read_text(encoding="utf-8")
    quoted = re.findall(r"merged-17 Dice (0\.\d{3}) on a real T1", text)
    raised = re.findall(r"raises merged-17\s+Dice from 0\.\d{3} to (0\.\d{3})", text)
    assert quoted and raised, "README no longer quotes the bundled model's real-T1 Dice where this test looks"
    assert set(quoted + raised) == {dice(q["real_t1_dice17"])}
    assert f"is {q['level']} level" in text or f"*{q['level']}* level" in text


def test_the_model_card_status_quotes_the_shipped_dice():
    q = quality()
    card = (BUNDLED / "MODEL_CARD.md").read_text(encoding="utf-8")
    status = card.split("<!-- status:begin -->", 1)[1].split("<!-- status:end -->", 1)[0]
    found = re.search(r"reach merged-17 Dice (0\.\d{3}) on a real T1 \((0\.\d{3}) on the held-out label maps\)",
                      " ".join(status.split()))
    assert found, "the status block no longer says what the weights reach where this test looks"
    assert found.groups() == (dice(q["real_t1_dice17"]), dice(q["heldout_dice17"]))
    assert f"{q['level']} level" in status.lower()
    shipped = [row for row in card.splitlines() if row.startswith("| ") and row.rstrip().endswith("| yes, " + q["level"] + " |")]
    # the row as measured when the weights shipped; a re-measurement with later code (stored in the
    # sidecar) is added to the cell in brackets, and the last value of each cell is the sidecar's
    assert shipped
    cells = [re.findall(r"0\.\d{3}", c) for c in shipped[-1].split("|")[6:8]]
    assert [c[-1] if c else None for c in cells] == [dice(q["heldout_dice17"]), dice(q["real_t1_dice17"])]
