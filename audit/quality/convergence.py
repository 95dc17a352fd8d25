"""Integrated Gradients convergence: how far each attribution is from satisfying completeness.

IG's attributions should sum to f(x) − f(baseline) (Sundararajan et al. 2017); a large gap means the
path integral was under-sampled (too few steps) and the map is a poor approximation of IG. Where
f(x) − f(baseline) is too small to divide by, the IG explainer reports the error as NaN (not estimable):
such images are counted apart, never folded into the summary as a huge ratio or as zero.
"""
from __future__ import annotations

import numpy as np

from audit.quality.base import CITES, MetricResult, summarize


def convergence(errors: np.ndarray) -> MetricResult:
    """Distribution of per-image completeness errors |Σ attributions − (f(x) − f(baseline))|, lower better.

    Takes the errors the IG explainer reports (absolute or relative, as it computes them); the sign is
    dropped and non-finite values are kept as undefined (None in JSON), not hidden. The summary's ``n``
    counts the estimable (finite) errors only; ``n_not_estimable`` counts the rest.
    """
    e = np.abs(np.asarray(errors, dtype=np.float64).ravel())
    summary = {**summarize(e), "n_not_estimable": int((~np.isfinite(e)).sum())}
    return MetricResult("ig_completeness_error", e, False, [CITES["sundararajan2017"]], summary)
