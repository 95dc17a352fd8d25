"""audit.json → report.html (one self-contained file) and report.pdf, written atomically."""
from __future__ import annotations

import contextlib
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from model.errors import AlzAuditError
from reports.assets import AssetReader
from reports.context import build_context
from reports.facts import sha256_bytes
from reports.loader import load_audit
from reports.pdf import html_to_pdf

PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATES = PACKAGE_DIR / "templates"
STATIC = PACKAGE_DIR / "static"  # the report's own asset folder: the only files the PDF renderer may read


def make_environment() -> Environment:
    """Autoescape everywhere (also for string templates) and fail loudly on a misspelt variable."""
    return Environment(loader=FileSystemLoader(str(TEMPLATES)),
                       autoescape=select_autoescape(default=True, default_for_string=True),
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder and os.replace, so readers never see half a report."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def audit_sha256(path: Path) -> str | None:
    """SHA-256 of audit.json's bytes as read now: the report ID a reviewer signs is derived from it."""
    try:
        return sha256_bytes(Path(path).read_bytes())
    except OSError:
        return None


def render_html(audit_json_path: Path) -> str:
    """The report as one HTML string: images and figures inline as data: URIs, CSS inline."""
    audit = load_audit(audit_json_path)
    assets = AssetReader(audit_json_path.parent)
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    ctx = build_context(audit, assets, source_name=audit_json_path.name, generated=generated,
                        audit_sha256=audit_sha256(audit_json_path))
    css = Markup((STATIC / "report.css").read_text(encoding="utf-8"))  # our own file, not audit data
    return make_environment().get_template("report.html.j2").render(css=css, **ctx)


def render_report(audit_json_path: Path | str, out_dir: Path | str | None = None, *,
                  pdf: bool = True) -> dict[str, Path]:
    """Render ``report.html`` (and ``report.pdf``) into ``out_dir`` (default: beside audit.json)."""
    source = Path(audit_json_path)
    out = Path(out_dir) if out_dir is not None else source.parent
    html = render_html(source)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AlzAuditError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from None
    written = {"html": out / "report.html"}
    write_atomic(written["html"], html.encode("utf-8"))
    if pdf:
        written["pdf"] = out / "report.pdf"
        write_atomic(written["pdf"], html_to_pdf(html, STATIC))
    return written
