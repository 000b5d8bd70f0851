"""Options of ``brainfm finetune``: command line > ``--config`` YAML > defaults, the shipped config file,
and early errors for values out of range."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from brainfm.cli.finetune_cmd import add_parser, resolve_options
from brainfm.errors import InputError
from brainfm.training.finetune import finetune
from brainfm.training.finetune_options import FINETUNE_DEFAULTS, FOREGROUND_SHARE, read_finetune_config

REPO = Path(__file__).resolve().parents[3]
SHIPPED = REPO / "Training" / "configs" / "finetune.yaml"


def _options(argv):
    sub = argparse.ArgumentParser().add_subparsers()
    return resolve_options(add_parser(sub).parse_args(["--data", "d", "--out", "o", *argv]))


def test_foreground_share_from_command_line_then_config_then_default(tmp_path):
    assert _options([])["foreground_share"] == FOREGROUND_SHARE == 0.05
    conf = tmp_path / "ft.yaml"
    conf.write_text("foreground_share: 0.0\nsteps: 40\n")
    o = _options(["--config", str(conf)])
    assert (o["foreground_share"], o["steps"]) == (0.0, 40)
    o = _options(["--config", str(conf), "--foreground-share", "0.2", "--steps", "7"])
    assert (o["foreground_share"], o["steps"]) == (0.2, 7)


def test_shipped_config_states_the_defaults():
    conf = read_finetune_config(SHIPPED)
    assert set(conf) <= set(FINETUNE_DEFAULTS)
    assert "foreground_share" in conf
    assert {k: v for k, v in conf.items()} == {k: FINETUNE_DEFAULTS[k] for k in conf}


def test_unknown_config_key_is_named(tmp_path):
    conf = tmp_path / "ft.yaml"
    conf.write_text("foreground_shares: 0.1\n")
    with pytest.raises(InputError, match="foreground_shares"):
        read_finetune_config(conf)


@pytest.mark.parametrize("share", [-0.1, 1.5, float("nan")])
def test_foreground_share_out_of_range_fails_before_any_work(tmp_path, share):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(InputError, match="foreground_share must be a share from 0 to 1"):
        finetune("bundled", missing, tmp_path / "run", foreground_share=share, device="cpu")
    assert not (tmp_path / "run").exists()
