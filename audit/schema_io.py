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
SCHEMA_VERSION = "1.2"


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
