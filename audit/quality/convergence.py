"""Integrated Gradients convergence: how far each attribution is from satisfying completeness.

IG's attributions should sum to f(x) − f(baseline) (Sundararajan et al. 2017); a large gap means the
path integral was under-sampled (too few steps) and the map is a poor approximation of IG.
"""
from __future__ import annotations

import numpy as np

from audit.quality.base import CITES, MetricResult


def convergence(errors: np.ndarray) -> MetricResult:
    """Distribution of per-image completeness errors |Σ attributions − (f(x) − f(baseline))|, lower better.

    Takes the errors the IG explainer reports (absolute or relative, as it computes them); the sign is
    dropped and non-finite values are kept as undefined (None in JSON), not hidden.
    """
    e = np.abs(np.asarray(errors, dtype=np.float64).ravel())
    return MetricResult("ig_completeness_error", e, False, [CITES["sundararajan2017"]])
