"""Static HTML + PDF reports rendered from audit.json alone (no TensorFlow).

``render_report(audit_json_path, out_dir=None, *, pdf=True) -> {"html": Path, "pdf": Path}``.
The import is lazy so ``import reports`` stays cheap for the CLI.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["render_report"]


def render_report(audit_json_path: Path | str, out_dir: Path | str | None = None, *,
                  pdf: bool = True) -> dict[str, Path]:
    """Render report.html (and report.pdf unless ``pdf=False``); see reports.render.render_report."""
    from reports.render import render_report as _render

    return _render(audit_json_path, out_dir, pdf=pdf)
