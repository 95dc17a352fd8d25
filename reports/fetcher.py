"""The only URL fetcher WeasyPrint gets: ``data:`` URIs and files inside one asset folder, nothing else.

WeasyPrint's default fetcher performs HTTP requests and reads any local file (``<link rel="attachment"
href="file:///etc/passwd">`` would embed it in the PDF). Our HTML embeds everything as ``data:`` URIs, so
anything else it asks for is a bug or an injection attempt: refuse it, and with ``fail_on_errors`` the
refusal stops the rendering instead of being logged and ignored. WeasyPrint 70 needs a ``URLFetcher``
subclass (plain function fetchers were removed along with ``default_url_fetcher``).
"""
from __future__ import annotations

import mimetypes
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from weasyprint.urls import URLFetcher, URLFetcherResponse


class RefusedURL(ValueError):
    """A URL outside the allow-list; its message shows only the start of the URL."""


class ReportURLFetcher(URLFetcher):
    """Serves ``data:`` URIs and regular files under ``asset_dir`` (after resolving symlinks); refuses the rest."""

    def __init__(self, asset_dir: Path | str, **kwargs):
        kwargs.setdefault("fail_on_errors", True)
        kwargs.update(allowed_protocols=("data", "file"), allow_redirects=False, timeout=1)
        super().__init__(**kwargs)
        self.asset_dir = Path(asset_dir).resolve()

    def allowed_path(self, url: str) -> Path:
        """The real path a ``file:`` URL names, if it is a file inside the asset folder; else RefusedURL."""
        parts = urlsplit(url)
        if parts.scheme.lower() != "file" or parts.netloc not in ("", "localhost"):
            raise RefusedURL(f"not a local file URL: {url[:80]!r}")
        raw = url2pathname(parts.path)  # decodes %-escapes once
        if "\x00" in raw:
            raise RefusedURL(f"NUL byte in file URL: {url[:80]!r}")
        path = Path(raw).resolve()
        if not path.is_relative_to(self.asset_dir) or not path.is_file():
            raise RefusedURL(f"file outside the report's asset folder: {url[:80]!r}")
        return path

    def fetch(self, url: str, headers: dict | None = None) -> URLFetcherResponse:
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme == "data":
            return super().fetch(url, headers)  # urllib's DataHandler: decodes in memory, no I/O
        if scheme == "file":
            path = self.allowed_path(url)
            mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            return URLFetcherResponse(path.as_uri(), body=path.read_bytes(), headers={"Content-Type": mime})
        raise RefusedURL(f"URL scheme {scheme or '(none)'!r} is not allowed: {url[:80]!r}")
