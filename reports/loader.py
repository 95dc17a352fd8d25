"""Read and validate audit.json, turning every way it can be wrong into one-line AlzAuditErrors."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from audit.schema_io import validate_audit
from model.errors import AlzAuditError


def load_audit(path: Path) -> dict[str, Any]:
    """The parsed, schema-valid audit.json at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AlzAuditError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AlzAuditError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from None
    try:
        audit = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AlzAuditError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    validate_audit(audit, source=str(path))
    return audit
