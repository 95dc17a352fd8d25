"""Data (manifest, splits, tf.data, synthetic cohort), the classifier, training and evaluation.

Exports are resolved lazily so that ``import model`` (and the CLI's data commands) never pull in
TensorFlow unless a TensorFlow-backed name is actually used.
"""
from __future__ import annotations

import importlib

from model.classes import CLASSES, canonical_class
from model.errors import AlzAuditError

_LAZY = {
    "build_classifier": "model.network",
    "load_model": "model.network",
    "Manifest": "model.manifest",
    "Sample": "model.manifest",
    "index_dataset": "model.manifest",
    "load_dataset": "model.manifest",
    "read_manifest": "model.manifest",
    "write_manifest": "model.manifest",
    "split_manifest": "model.splits",
}

__all__ = ["CLASSES", "AlzAuditError", "canonical_class", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
