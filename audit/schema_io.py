"""Load the audit.json JSON Schema and validate documents against it.

Kept free of TensorFlow so the report renderer (which must work from audit.json alone) can use it.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from model.errors import AlzAuditError

SCHEMA_PATH = Path(__file__).with_name("schema") / "audit.schema.json"
SCHEMA_VERSION = "1.3"

# The vocabulary audit.json shares with its readers (the gate writes it, the report reads it): one home.
# Check statuses, worst first: the order checks are listed in.
STATUS_ORDER = {"ERROR": 0, "FAIL": 1, "NOT_RUN": 2, "WARN": 3, "NOT_APPLICABLE": 4, "PASS": 5}
# NOT_APPLICABLE: the check cannot apply to this data (no masks, no subject IDs...), with its reason.
# NOT_RUN: the check should have run and did not (deselected, interrupted, no threshold): INCOMPLETE.

# The control maps every explanation figure is computed beside (audit.quality.controls), in report order.
CONTROL_NAMES = ("random", "brain_uniform", "edge", "centre")
# Keys of figures.controls, in report order: the words a reader needs, and the stage figure and comparison
# each comes from. Stability adds one key per noise level, "stability_ssim_<sigma>".
CONTROL_FIGURES = {
    "localization_energy": ("Localisation: energy inside mask", "localization", "energy_pointing"),
    "localization_auprc": ("Localisation: AUPRC against mask", "localization", "auprc"),
    "outside_brain_mass": ("Energy outside the brain (lower better)", "localization", "outside_brain"),
    "prior_localization": ("AD evidence prior: energy inside (no masks needed)", "prior_localization", "energy"),
    "deletion_auc": ("Deletion AUC (lower better)", "faithfulness", "deletion_auc"),
    "insertion_auc": ("Insertion AUC", "faithfulness", "insertion_auc"),
    "faithfulness_score": ("Insertion − deletion AUC", "faithfulness", "score"),
    "agreement_spearman": ("Agreement with IG (Spearman, in brain)", "agreement", "spearman"),
}
STABILITY_CONTROL_PREFIX = "stability_ssim_"


@functools.lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """The draft 2020-12 schema of audit.json (cached: it is read on every render and gate run)."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def _json_path(parts) -> str:
    """``$.checks[3].status`` style path, so a user can find the offending field."""
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def validate_audit(obj: Any, *, source: str = "audit.json") -> None:
    """Raise AlzAuditError naming ``source``, the first invalid field's JSON path and the problem."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(obj), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if not errors:
        return
    # best_match picks the most specific error among oneOf branches; fall back to the first by path.
    error = jsonschema.exceptions.best_match(errors) or errors[0]
    message = error.message if len(error.message) <= 200 else error.message[:197] + "..."
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    raise AlzAuditError(f"{source}: invalid at {_json_path(error.absolute_path)}: {message}{more}")
