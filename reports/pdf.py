"""HTML → PDF with WeasyPrint, confined by ReportURLFetcher (see reports/fetcher.py)."""
from __future__ import annotations

import logging
from pathlib import Path

from model.errors import AlzAuditError
from reports.fetcher import ReportURLFetcher


class _QuietFontFallback(logging.Filter):
    """Drop WeasyPrint's per-font 'install HarfBuzz-Subset' advice; it is printed once per font, every render."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "instead of HarfBuzz-Subset" not in record.getMessage()


def html_to_pdf(html: str, asset_dir: Path, *, target_name: str = "report.pdf") -> bytes:
    """Render ``html`` to PDF bytes; relative URLs resolve into ``asset_dir``, the only readable folder."""
    from weasyprint import HTML
    from weasyprint.urls import FatalURLFetchingError

    fetcher = ReportURLFetcher(asset_dir)
    base_url = Path(asset_dir).resolve().as_uri() + "/"
    quiet = _QuietFontFallback()
    logger = logging.getLogger("weasyprint")
    logger.addFilter(quiet)
    try:
        return HTML(string=html, base_url=base_url, url_fetcher=fetcher).write_pdf()
    except FatalURLFetchingError as exc:  # a BaseException in WeasyPrint: convert, keep it on one line
        reason = exc.__cause__ or exc
        raise AlzAuditError(f"{target_name}: rendering stopped, {reason}") from None
    finally:
        logger.removeFilter(quiet)
