"""Disk cache of an audit's expensive arrays (predictions, Grad-CAM maps), keyed so it cannot go stale.

A key covers everything that changes the array: the model file, the evaluated images' contents, the
manifest, the settings, and the versions of TensorFlow, Keras and alzaudit's own source.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Callable

import numpy as np

from model.fileio import atomic_path

_FINGERPRINT: tuple | None = None


def software_fingerprint() -> tuple:
    """(TensorFlow, Keras, alzaudit version, hash of alzaudit's own source): part of every cache key, so an
    upgrade or a fix (even without a version bump) recomputes cached arrays instead of reusing them."""
    global _FINGERPRINT
    if _FINGERPRINT is None:
        import keras
        import tensorflow as tf

        _FINGERPRINT = (tf.__version__, keras.__version__, *source_fingerprint())
    return _FINGERPRINT


@functools.lru_cache(maxsize=1)
def source_fingerprint() -> tuple[str, str]:
    """(alzaudit version, hash of alzaudit's own ``audit`` and ``model`` sources), without TensorFlow."""
    try:
        from importlib.metadata import version

        own = version("alzaudit")
    except Exception:  # noqa: BLE001 - running from a source tree
        own = "source"
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for package in ("audit", "model"):
        for source in sorted((root / package).rglob("*.py")):
            digest.update(source.relative_to(root).as_posix().encode())
            digest.update(source.read_bytes())
    return own, digest.hexdigest()[:16]


class ArrayCache:
    """``.npy`` files under ``folder``, each named by the array's name and a hash of its key parts."""

    def __init__(self, folder: Path, key_parts: Callable[[], tuple], *, enabled: bool = True):
        self.folder = Path(folder)
        self._key_parts = key_parts  # called lazily: the parts need the model and the images
        self.enabled = enabled

    def path(self, name: str, *extra) -> Path:
        parts = (*self._key_parts(), *software_fingerprint(), *extra)
        key = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]
        return self.folder / f"{name}-{key}.npy"

    def get(self, name: str, compute: Callable[[], np.ndarray], *extra) -> np.ndarray:
        """The cached array, or ``compute()`` saved atomically for next time."""
        if not self.enabled:
            return compute()
        path = self.path(name, *extra)
        if path.is_file():
            return np.load(path)
        value = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, value)
        return value


def user_cache_dir() -> Path | None:
    """Where per-machine results that depend only on the software live: ``$ALZAUDIT_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/alzaudit``, else ``~/.cache/alzaudit``; ``ALZAUDIT_CACHE_DIR=""`` turns it off."""
    import os

    chosen = os.environ.get("ALZAUDIT_CACHE_DIR")
    if chosen is not None:
        return Path(chosen) if chosen.strip() else None
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except (RuntimeError, KeyError):  # no home directory (e.g. an arbitrary uid in a container)
            return None
    return Path(base) / "alzaudit"


def cached_arrays(name: str, compute: Callable[[], dict[str, np.ndarray]], *key_parts) -> dict[str, np.ndarray]:
    """``compute()`` (a dict of arrays) once per machine and software: kept as ``<name>-<key>.npz`` in
    ``user_cache_dir()``, keyed by ``key_parts`` (the versions of the libraries ``compute`` uses) and
    ``source_fingerprint()``. Loaded without pickle; an unreadable, damaged or unwritable cache only costs the
    computation, never the run."""
    folder = user_cache_dir()
    if folder is None:
        return compute()
    parts = (*key_parts, *source_fingerprint())
    path = folder / f"{name}-{hashlib.sha256('|'.join(map(str, parts)).encode()).hexdigest()[:16]}.npz"
    try:
        if path.is_file():
            with np.load(path, allow_pickle=False) as saved:
                return {key: saved[key] for key in saved.files}
    except Exception:  # noqa: BLE001 - damaged, truncated or unreadable: recompute and overwrite
        pass
    value = compute()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, **value)
    except OSError:
        pass
    return value
