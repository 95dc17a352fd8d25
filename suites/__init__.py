"""The acceptance gate: ``pytest suites/ --model M --data D`` (see suites/conftest.py)."""
from pathlib import Path

SUITES_DIR = Path(__file__).resolve().parent
DEFAULT_THRESHOLDS = SUITES_DIR / "thresholds.toml"
