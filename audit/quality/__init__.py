"""Explanation-quality metrics: agreement, stability, faithfulness, randomization, localization, convergence.

Each metric returns per-sample values plus a summary (:class:`MetricResult`), declares whether higher is
better and cites its paper; ``to_jsonable`` turns any metric output into audit.json-ready values.
Definitions, directions and citations: ``docs/metrics.md``.
"""
from __future__ import annotations

from audit.quality.agreement import agreement
from audit.quality.base import CITES, MetricResult, normalize_maps, summarize, to_jsonable
from audit.quality.convergence import convergence
from audit.quality.faithfulness import faithfulness
from audit.quality.localization import localization
from audit.quality.randomization import cascading_randomization, independent_randomization, passes_sanity
from audit.quality.stability import sigma_key, stability

__all__ = [
    "CITES", "MetricResult", "agreement", "cascading_randomization", "convergence", "faithfulness",
    "independent_randomization", "localization", "normalize_maps", "passes_sanity", "sigma_key", "stability",
    "summarize", "to_jsonable",
]
