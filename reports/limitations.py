"""Limitations stated in plain words, derived from what audit.json shows (not from a fixed list).

A reviewer signs off on these, so each sentence names the figure that triggered it.
"""
from __future__ import annotations

from typing import Any

ALWAYS = ("Results are for 2-D axial slices from the evaluated split only; they say nothing about whole "
          "volumes, other scanners or other populations, and this audit is not a clinical validation.")


def _get(d: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def absent_classes(audit: dict[str, Any]) -> list[str]:
    """Classes with no image in the evaluated split (from the performance figures or the data counts),
    in the model's class order."""
    per_class = _get(audit, "figures", "performance", "per_class")
    per_class = per_class if isinstance(per_class, dict) else {}
    found = [c for c, row in per_class.items() if isinstance(row, dict) and row.get("support") == 0]
    data = audit.get("data") if isinstance(audit.get("data"), dict) else {}
    counts = _get(data, "counts", data.get("split") or "test")
    found += [c for c, n in (counts if isinstance(counts, dict) else {}).items() if n == 0]
    order = list(_get(audit, "model", "classes") or [])
    found = list(dict.fromkeys(found))
    return [c for c in order if c in found] + [c for c in found if c not in order]


def derive_limitations(audit: dict[str, Any]) -> list[str]:
    """Sentences for section 7, most consequential first."""
    out: list[str] = []
    data, figures = audit.get("data") or {}, audit.get("figures") or {}
    checks = audit.get("checks") or []

    errored = [c.get("id", "?") for c in checks if c.get("status") == "ERROR"]
    if errored:
        out.append(f"{len(errored)} check(s) raised an error, so their outcome is unknown: {', '.join(errored)}.")
    not_run = [c.get("id", "?") for c in checks if c.get("status") == "NOT_RUN"]
    if not_run:
        out.append(f"{len(not_run)} check(s) did not run, so the audit is INCOMPLETE and cannot accept the model: "
                   f"{', '.join(not_run)}.")
    not_applicable = [c.get("id", "?") for c in checks if c.get("status") == "NOT_APPLICABLE"]
    if not_applicable:
        out.append(f"{len(not_applicable)} check(s) do not apply to this data and say nothing about the model: "
                   f"{', '.join(not_applicable)} (each message gives the reason).")
    worst = "FAIL" if any(c.get("status") in ("FAIL", "ERROR") for c in checks) else (
        "FAIL" if audit.get("fail_on_warn") and any(c.get("status") == "WARN" for c in checks) else
        "INCOMPLETE" if not_run or not checks else "PASS")
    if audit.get("verdict") and audit.get("verdict") != worst:
        out.append(f"The recorded verdict ({audit.get('verdict')}) disagrees with the check statuses "
                   f"(which imply {worst}); audit.json may have been edited.")
    if data.get("synthetic"):
        out.append("The data are synthetic: performance and explanation quality on real MRI are not established.")
    if data.get("subjects_known") is False:
        out.append("No subject IDs are known: splits may put slices of one person in several splits, "
                   "confidence intervals resample slices (optimistic), and subject leakage cannot be excluded.")
    absent = absent_classes(audit)
    split = data.get("split", "test")
    for name in absent:
        out.append(f"Class {name!s} is absent from the {split} split: its recall, precision, F1 and ROC AUC are "
                   "not estimable, and balanced accuracy and macro F1 average over the stages present only.")
    for name in data.get("not_estimable") or []:
        if name not in absent:
            out.append(f"Class {name!s} has fewer than 5 subjects in the {split} split; "
                       "its per-class metrics are not estimable.")
    perf_ci = (figures.get("performance") or {}).get("ci")
    if isinstance(perf_ci, dict) and perf_ci.get("estimable") is False:
        out.append(f"Confidence intervals are not estimable ({' '.join(str(perf_ci.get('reason') or '').split())}).")
    leakage = figures.get("leakage") or {}
    rate = leakage.get("max_rate")
    if isinstance(rate, (int, float)) and rate > 0:
        out.append(f"{rate:.1%} of evaluated slices have a near-duplicate in another split (worst direction); "
                   "metrics may be inflated.")
    overlap = leakage.get("subject_overlap")
    if isinstance(overlap, int) and overlap > 0:
        out.append(f"{overlap} subject(s) appear in more than one split.")
    if not leakage:
        out.append("Near-duplicate leakage between splits was not computed.")
    perf = figures.get("performance") or {}
    if perf.get("ci_method") == "slice bootstrap":
        out.append("Confidence intervals resample slices, not subjects; they understate the uncertainty.")
    randomization = figures.get("randomization") or {}
    if randomization.get("passed") is False:
        out.append("The model-randomisation sanity check failed: the explanation maps barely depend on the "
                   "learned weights, so they must not be read as evidence of what the model uses.")
    elif not randomization:
        out.append("The model-randomisation sanity check was not computed.")
    if not data.get("has_masks") or not figures.get("localization"):
        out.append("No ground-truth masks were evaluated: whether explanations point at atrophy is unknown.")
    skipped = data.get("skipped") or []
    if skipped:
        out.append(f"{len(skipped)} file(s) of the dataset were skipped (listed in section 3).")
    if (audit.get("model") or {}).get("training") is None:
        out.append("The training configuration is not recorded.")
    out.append(ALWAYS)
    return out
