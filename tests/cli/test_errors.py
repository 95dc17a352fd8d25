"""Errors name what the reader typed: the library its parameter, the command line its flag."""
from __future__ import annotations

import numpy as np
import pytest

from model.errors import AlzAuditError, ParameterError


def test_the_library_names_the_parameter_not_a_flag():
    from audit.explain.overlay import overlay
    from model.splits import parse_ratios

    with pytest.raises(ParameterError) as info:
        parse_ratios("0.5,0.5")
    assert str(info.value).startswith("ratios: ") and "--" not in str(info.value)
    with pytest.raises(ParameterError, match=r"^alpha: must be in \[0, 1\]"):
        overlay(np.zeros((4, 4)), np.zeros((4, 4)), alpha=2.0)
    assert issubclass(ParameterError, AlzAuditError)  # every caller that catches the one type still does


def test_the_cli_shows_its_flag(oasis_dir, capsys):
    from alzaudit.cli import FLAGS, main

    assert main(["data", "split", str(oasis_dir), "--ratios", "0.5,0.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("alzaudit: error: --ratios: need three") and len(err.strip().splitlines()) == 1
    assert ParameterError("n_samples", "must be at least 1").with_flag(FLAGS) == "--samples: must be at least 1"
