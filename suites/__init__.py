"""The acceptance gate: ``pytest suites/ --model M --data D`` (see suites/conftest.py), or ``run_gate``
(``suites.inprocess``) in this process."""
from pathlib import Path

SUITES_DIR = Path(__file__).resolve().parent
DEFAULT_THRESHOLDS = SUITES_DIR / "thresholds.toml"


def __getattr__(name: str):
    if name == "run_gate":  # lazy: importing suites must not import pytest
        from suites.inprocess import run_gate

        return run_gate
    raise AttributeError(f"module 'suites' has no attribute {name!r}")
