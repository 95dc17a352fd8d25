"""Read the images audit.json names, safely, and embed them as small ``data:`` URIs.

Paths come from a file anyone could have edited, so each one is confined to the audit folder: absolute
paths, ``..`` parts and symlinks that lead outside are refused (the image is skipped and a note says why),
and only PNG/JPEG files of sane size are decoded. Images are downscaled to the size they print at and
re-encoded (JPEG for photographic overlays, palette PNG for line art) so the PDF stays small.
"""
from __future__ import annotations

import base64
import io
from pathlib import Path, PurePosixPath, PureWindowsPath

from PIL import Image

MAX_FILE_BYTES = 25 * 1024 * 1024
MAX_PIXELS = 40_000_000
JPEG_QUALITY = 82


def to_data_uri(data: bytes, mime: str) -> str:
    """A ``data:`` URI: the only kind of URL the report's HTML contains."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def encode_image(image: Image.Image, max_px: int) -> tuple[bytes, str]:
    """Downscale to at most ``max_px`` on the long side and encode compactly; returns (bytes, mime)."""
    image.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
    if image.mode not in ("L", "RGB"):
        image = image.convert("L" if image.mode in ("LA", "I", "I;16") else "RGB")
    few_colours = image.getcolors(maxcolors=256) is not None
    buf = io.BytesIO()
    if few_colours:  # line art, charts: lossless palette PNG is smaller and sharper than JPEG
        image.convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(buf, "PNG", optimize=True)
        return buf.getvalue(), "image/png"
    image.save(buf, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return buf.getvalue(), "image/jpeg"


def _is_unsafe(rel: str) -> str | None:
    """Why a path string is refused before touching the file system, or None if it may be looked up."""
    if not rel or "\x00" in rel:
        return "empty or contains a NUL byte"
    if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute() or PureWindowsPath(rel).drive:
        return "absolute path"
    if rel.startswith("\\") or ".." in PurePosixPath(rel.replace("\\", "/")).parts:
        return "'..' escapes the audit folder"
    return None


class AssetReader:
    """Resolves audit.json's relative image paths inside one folder and records every image it skipped."""

    def __init__(self, audit_dir: Path):
        self.root = Path(audit_dir).resolve()
        self.notes: list[str] = []

    def resolve(self, rel: str | None, what: str) -> Path | None:
        """The real path of ``rel`` if it is a file inside the audit folder; otherwise None and a note."""
        if rel is None:
            return None
        if not isinstance(rel, str):
            self.notes.append(f"{what}: image path is not a string; skipped")
            return None
        reason = _is_unsafe(rel)
        if reason is None:
            try:
                path = (self.root / rel).resolve()
            except (OSError, RuntimeError, ValueError):
                path, reason = None, "cannot be resolved"
            else:
                if not path.is_relative_to(self.root):
                    reason = "leads outside the audit folder"
                elif not path.is_file():
                    reason = "file not found"
                elif path.stat().st_size > MAX_FILE_BYTES:
                    reason = "file larger than 25 MB"
        if reason is not None:
            self.notes.append(f"{what}: {rel!r} not shown ({reason})")
            return None
        return path

    def data_uri(self, rel: str | None, what: str, *, max_px: int = 224) -> str | None:
        """The image at ``rel`` as a downscaled ``data:`` URI, or None (with a note) when it can't be used."""
        path = self.resolve(rel, what)
        if path is None:
            return None
        try:
            with Image.open(path, formats=["PNG", "JPEG"]) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise ValueError("image has too many pixels")
                image.load()
                data, mime = encode_image(image, max_px)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            self.notes.append(f"{what}: {rel!r} not shown (not a readable PNG/JPEG: {type(exc).__name__})")
            return None
        return to_data_uri(data, mime)
