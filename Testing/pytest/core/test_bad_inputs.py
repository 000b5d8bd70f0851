"""Every bad or unusual input of ``bad_inputs.SCENARIOS`` through ``brainfm run``: the expected exit
code and a clear first line naming the problem, the input files byte for byte unchanged (SHA-256),
and nothing written unless the scenario documents a correct result (then exactly that)."""
from __future__ import annotations

import re

import pytest

import ckpt_factory
from bad_inputs import SCENARIOS, out_entries, run_scenario


from cli_fixtures import _private_cache, model  # noqa: E402,F401 - shared fixtures


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_bad_input(tmp_path, model, name):
    base = tmp_path / "case"
    base.mkdir()
    scenario = SCENARIOS[name](base, model, ckpt_factory)
    if scenario.skip:
        pytest.skip(scenario.skip)
    try:
        outcome = run_scenario(scenario, base)
    finally:
        if scenario.cleanup is not None:
            scenario.cleanup()
    assert outcome.code == scenario.code, outcome.stderr
    assert re.search(scenario.message, outcome.first_line), (outcome.first_line, outcome.stderr)
    assert "Traceback" not in outcome.stderr and "internal error" not in outcome.stderr
    assert outcome.inputs_unchanged, "an input file changed"
    if scenario.written is None:
        assert outcome.written == [], f"wrote {outcome.written}"
    else:
        assert out_entries(outcome, base) == sorted(scenario.written), outcome.written
        assert not any(".partial" in w or ".tmp" in w for w in outcome.written)
    if scenario.check is not None:
        scenario.check(outcome)
