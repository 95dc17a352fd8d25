"""Explanations, explanation-quality metrics, data-leakage checks, the audit runner and the CLI.

Exports resolve lazily so importing ``audit`` (the CLI does) does not import TensorFlow.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "gradcam": "audit.explain",
    "gradcam_plus_plus": "audit.explain",
    "integrated_gradients": "audit.explain",
    "smoothgrad": "audit.explain",
    "overlay": "audit.explain",
    "run_audit": "audit.runner",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'audit' has no attribute {name!r}")
