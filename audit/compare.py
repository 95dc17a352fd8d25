"""A candidate model against a baseline on the same images: paired deltas with subject-bootstrap CIs.

The question an acceptance gate is asked most is "is the new model at least as good as the one we
accepted?" (TFMA's change thresholds). Both models are audited on the same split; every figure is written
as a function of per-image weights, and one set of subject draws weights both models at once, so each
bootstrap replicate gives a *paired* delta candidate − baseline (slices of one brain move together). For
accuracy the paired predictions also get McNemar's exact test. ``alzaudit drift`` asks a different
question (one model, two environments) and stays separate; both use the same SSIM of maps.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from model.classes import CLASSES
from model.evaluate import ECE_BINS

N_BOOT = 2000
CI_LEVEL = 0.95
CHEAP_FIGURES = ("accuracy", "balanced_accuracy", "per_class_recall", "ece")  # from predictions alone

# figure -> (higher is better, what it is)
FIGURES: dict[str, tuple[bool, str]] = {
    "accuracy": (True, "share of slices classified correctly"),
    "balanced_accuracy": (True, "mean recall over the stages present"),
    "per_class_recall": (True, "the worst per-stage change of recall (stages with >= 5 subjects)"),
    "ece": (False, "expected calibration error, 15 bins"),
    "localization_energy": (True, "localisation skill over the best control (energy inside masks)"),
    "localization_auprc": (True, "localisation skill over the best control (AUPRC)"),
    "faithfulness_score": (True, "faithfulness skill over the best control (insertion - deletion)"),
    "agreement_spearman": (True, "Grad-CAM/IG agreement skill over the best control"),
    "stability_ssim": (True, "map SSIM under noise (worst noise level)"),
}


def subject_weights(subjects: Sequence, n_boot: int = N_BOOT, seed: int = 0) -> tuple[np.ndarray, str, int]:
    """``(W (n_boot + 1, N), unit kind, n_units)``: row 0 weights every image 1 (the point estimate), the
    other rows are the subject bootstrap of ``audit.quality.skill.bootstrap_weights``."""
    from audit.quality.skill import bootstrap_weights

    boot, kind, n_units = bootstrap_weights(subjects, len(subjects), n_boot=n_boot, seed=seed, salt=17)
    return np.vstack([np.ones((1, len(subjects))), boot]), kind, n_units


def _wmean(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    total = weights.sum(axis=1)
    return np.where(total > 0, weights @ values / np.where(total > 0, total, 1.0), np.nan)


def recall_per_class(weights: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """(replicates, classes) recall; NaN where a replicate holds no image of the class."""
    out = np.full((len(weights), len(CLASSES)), np.nan)
    for c in range(len(CLASSES)):
        mask = y_true == c
        if mask.any():
            out[:, c] = _wmean(weights[:, mask], (y_pred[mask] == c).astype(float))
    return out


def ece_weighted(weights: np.ndarray, probs: np.ndarray, y_true: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(float)
    bins = np.clip((conf * n_bins).astype(int), 0, n_bins - 1)
    total = weights.sum(axis=1)
    ece = np.zeros(len(weights))
    for b in range(n_bins):
        mask = bins == b
        if not mask.any():
            continue
        wb = weights[:, mask]
        gap = np.abs(wb @ correct[mask] - wb @ conf[mask])  # bin weight x |accuracy - confidence|
        ece += np.where(total > 0, gap / np.where(total > 0, total, 1.0), 0.0)
    return ece


def skill_weighted(weights: np.ndarray, indices: np.ndarray, value: np.ndarray, controls: dict[str, np.ndarray],
                   higher_is_better: bool) -> np.ndarray:
    """Skill over the best control per replicate, for per-image arrays over split images ``indices``."""
    w = weights[:, np.asarray(indices, dtype=int)]
    table = np.stack([value] + list(controls.values()))
    keep = np.isfinite(table).all(axis=0)
    w, table = w[:, keep], table[:, keep]
    sign = 1.0 if higher_is_better else -1.0
    means = np.stack([_wmean(w, row) for row in table], axis=1)  # (B, 1 + controls)
    return sign * means[:, 0] - np.max(sign * means[:, 1:], axis=1)


def mcnemar_exact(base_correct: np.ndarray, cand_correct: np.ndarray) -> dict[str, Any]:
    """McNemar's exact test on paired correctness: two-sided binomial test of the discordant pairs."""
    from scipy.stats import binomtest

    b = int(np.sum(base_correct & ~cand_correct))   # baseline right, candidate wrong
    c = int(np.sum(~base_correct & cand_correct))   # baseline wrong, candidate right
    p = 1.0 if b + c == 0 else float(binomtest(c, b + c, 0.5).pvalue)
    return {"baseline_only_correct": b, "candidate_only_correct": c, "p_value": p}


def _summary(higher_is_better: bool, kind: str, n_units: int, candidate: np.ndarray,
             baseline: np.ndarray) -> dict[str, Any]:
    """Point estimates from row 0, a percentile CI of the delta from the other rows."""
    delta = candidate - baseline
    point = delta[0]
    boot = delta[1:][np.isfinite(delta[1:])]
    alpha = (1.0 - CI_LEVEL) / 2.0
    ci = [None, None]
    if n_units >= 2 and boot.size and np.isfinite(point):
        lo, hi = np.quantile(boot, [alpha, 1.0 - alpha])
        ci = [float(lo), float(hi)]
    clean = lambda x: None if x is None or not np.isfinite(x) else float(x)  # noqa: E731
    return {"candidate": clean(candidate[0]), "baseline": clean(baseline[0]), "delta": clean(point),
            "delta_ci": ci, "higher_is_better": higher_is_better, "ci_unit": kind, "n_units": n_units}


def compare_runs(candidate, baseline, *, seed: int = 0, n_boot: int = N_BOOT,
                 figures: Sequence[str] | None = None) -> dict[str, Any]:
    """Paired deltas candidate − baseline for every figure both runs can compute (``FIGURES``).

    ``candidate`` and ``baseline`` are ``audit.runner.AuditRun`` objects over the same split (same
    images in the same order). Returns ``{figure: {candidate, baseline, delta, delta_ci, higher_is_better,
    ci_unit, n_units}}``; a figure a run cannot compute (no masks) is left out. The subject draws depend
    only on the seed and the subjects, so figures computed in separate calls share them.
    """
    if [str(s.path) for s in candidate.split.samples] != [str(s.path) for s in baseline.split.samples]:
        from model.errors import AlzAuditError

        raise AlzAuditError("baseline: the two audits do not evaluate the same images in the same order")
    wanted = list(figures or FIGURES)
    weights, kind, n_units = subject_weights(candidate.subjects, n_boot, seed)
    y = candidate.labels
    out: dict[str, Any] = {}
    makers: dict[str, Callable[[Any], np.ndarray]] = {
        "accuracy": lambda r: _wmean(weights, (r.predicted == y).astype(float)),
        "balanced_accuracy": lambda r: np.nanmean(recall_per_class(weights, y, r.predicted), axis=1),
        "ece": lambda r: ece_weighted(weights, r.probs, y),
    }
    for name in wanted:
        higher = FIGURES[name][0]
        try:
            if name in makers:
                cand, base = makers[name](candidate), makers[name](baseline)
            elif name == "per_class_recall":
                cand, base = _worst_class_delta(candidate, baseline, weights, y)
            else:
                cand, base = _skill_pair(name, candidate, baseline, weights)
        except _NotComputable:
            continue
        out[name] = _summary(higher, kind, n_units, cand, base)
    return out


def prediction_changes(candidate, baseline) -> dict[str, Any]:
    """McNemar's exact test and the slices whose prediction changed, each marked fixed / broken / still wrong."""
    y = candidate.labels
    changed = np.flatnonzero(candidate.predicted != baseline.predicted)
    return {"mcnemar": mcnemar_exact(baseline.predicted == y, candidate.predicted == y),
            "changed_predictions": [
                {"path": str(candidate.split.samples[i].path), "true": CLASSES[y[i]],
                 "baseline": CLASSES[baseline.predicted[i]], "candidate": CLASSES[candidate.predicted[i]],
                 "direction": "fixed" if candidate.predicted[i] == y[i] else
                 ("broken" if baseline.predicted[i] == y[i] else "still wrong")} for i in changed[:200]],
            "n_changed_predictions": int(len(changed))}


class _NotComputable(Exception):
    pass


def _worst_class_delta(candidate, baseline, weights, y) -> tuple[np.ndarray, np.ndarray]:
    """Per replicate, the class whose recall changed most for the worse (estimable classes: >= 5 subjects,
    or slices when subject IDs are unknown, as ``model.evaluate`` decides);
    returns (candidate recall, baseline recall) of that class, so delta = the worst change."""
    from model.evaluate import not_estimable

    excluded = set(not_estimable(y, candidate.subjects))  # the same rule as the per-class recall check
    estimable = [c for c in range(len(CLASSES)) if CLASSES[c] not in excluded]
    if not estimable:
        raise _NotComputable
    rc = recall_per_class(weights, y, candidate.predicted)[:, estimable]
    rb = recall_per_class(weights, y, baseline.predicted)[:, estimable]
    worst = np.nanargmin(np.where(np.isnan(rc - rb), np.inf, rc - rb), axis=1)
    rows = np.arange(len(weights))
    return rc[rows, worst], rb[rows, worst]


def _skill_pair(name: str, candidate, baseline, weights) -> tuple[np.ndarray, np.ndarray]:
    def pieces(run):
        if name.startswith("localization_"):
            result = run.localization
            if result is None or not result.get("indices"):
                raise _NotComputable
            key = "energy_pointing" if name == "localization_energy" else "auprc"
            return (result["indices"], result[key].per_sample,
                    {k: v[key].per_sample for k, v in result["controls"].items()}, True)
        if name == "faithfulness_score":
            result = run.faithfulness
            return (result["indices"], result["score"].per_sample,
                    {k: v["score"].per_sample for k, v in result["controls"].items()}, True)
        if name == "agreement_spearman":
            result = run.agreement
            return (run.ig_indices, result["spearman"].per_sample,
                    {k: v["spearman"].per_sample for k, v in result["controls"].items()}, True)
        if name == "stability_ssim":  # at the noise level where the candidate is least stable
            result, reference = run.stability, candidate.stability
            worst = min(reference["ssim"], key=lambda k: reference["ssim"][k].mean)
            return result["indices"], result["ssim"][worst].per_sample, None, True
        raise _NotComputable

    c_idx, c_val, c_ctrl, higher = pieces(candidate)
    b_idx, b_val, b_ctrl, _ = pieces(baseline)
    if c_ctrl is None:  # a plain figure, not a skill
        return (_wmean(weights[:, np.asarray(c_idx, dtype=int)], c_val),
                _wmean(weights[:, np.asarray(b_idx, dtype=int)], b_val))
    return (skill_weighted(weights, c_idx, c_val, c_ctrl, higher),
            skill_weighted(weights, b_idx, b_val, b_ctrl, higher))
