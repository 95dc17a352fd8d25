"""Verdicts: compare a figure with its rule and record the check; ``outcome`` hands them to the writer."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace

import pytest

from audit.schema_io import STATUS_ORDER
from suites.catalog import SCOPE, describe
from suites.characteristic import MIN_AUROC, bank_evidence
from suites.thresholds import Thresholds


class GateWarning(UserWarning):
    """A check with severity "warn" missed its threshold."""


@dataclass
class Gate:
    thresholds: Thresholds
    checks: dict[str, dict] = field(default_factory=dict)
    expected: list[str] = field(default_factory=list)   # every check id this gate must decide
    bank: dict | None = None           # the reference bank's record (suites.characteristic), if committed
    condition: str = "with_masks"      # which of its conditions this data is like: with or without lesion masks

    def check(self, check_id: str, value, *, detail: str = "", comparison: dict | None = None,
              not_gating: str | None = None) -> None:
        """Record a verdict for ``value``; fail the calling test when a fail-severity rule is missed.

        ``comparison`` (from ``audit.quality.skill.compare_to_controls``) is the figure beside its control
        maps; it is stored with the check, and a ``skill_min`` rule judges its lower CI bound.
        ``not_gating``: why this check only warns on this data (e.g. a stronger check applies).
        """
        title, group, meaning, cites = describe(check_id)
        rule = self._rule_or_not_run(check_id, None if value is None else float(value), comparison)
        evidence = bank_evidence(self.bank, check_id, self.condition)
        if evidence and evidence["demoted"] and not not_gating:
            not_gating = (f"in the reference bank it separated good from bad models with AUROC "
                          f"{evidence['auroc']:.2f} < {MIN_AUROC}, too weakly to fail a model")
        if not_gating:
            rule = replace(rule, severity="warn")
            detail = "; ".join(filter(None, [detail, f"warn only: {not_gating}"]))
        if rule.basis == "skill":
            self._check_skill(check_id, rule, comparison, detail, (title, group, meaning, cites))
            return
        number = None if value is None else float(value)
        if number is None or math.isnan(number):
            self._record(check_id, title, group, None, rule, "ERROR",
                         f"{meaning}; the figure could not be computed{': ' + detail if detail else ''}", cites,
                         comparison)
            pytest.fail(f"{check_id}: figure not computed ({detail or 'no value'})", pytrace=False)
        passed = rule.passes(number)
        status = "PASS" if passed else ("WARN" if rule.severity == "warn" else "FAIL")
        relation = ">=" if rule.direction == "min" else "<="
        message = (f"{check_id} = {number:.4g}, needs {relation} {rule.threshold:g}: {meaning}"
                   + (f" ({detail})" if detail else "") + _controls_note(comparison))
        self._record(check_id, title, group, number, rule, status, message, cites, comparison)
        self._raise(status, message)

    def _check_skill(self, check_id, rule, comparison, detail, described) -> None:
        title, group, meaning, cites = described
        lower = None if comparison is None else (comparison.get("skill_ci") or [None])[0]
        if lower is None or math.isnan(float(lower)):
            why = ("no controls were computed" if comparison is None else
                   f"skill is not estimable on {comparison.get('n_units', 0)} {comparison.get('ci_unit', 'unit')}(s)")
            self._record(check_id, title, group, None, rule, "ERROR", f"{meaning}; {why}"
                         + (f" ({detail})" if detail else ""), cites, comparison)
            pytest.fail(f"{check_id}: {why}", pytrace=False)
        lo, hi = comparison["skill_ci"]
        status = "PASS" if lower >= rule.threshold else ("WARN" if rule.severity == "warn" else "FAIL")
        message = (f"{check_id}: skill over the best control ({comparison['best_control']}) = "
                   f"{comparison['skill']:+.3f} [95% CI {lo:+.3f} to {hi:+.3f}, by {comparison['ci_unit']}, "
                   f"n={comparison['n_units']}], needs lower bound >= {rule.threshold:g}: {meaning}"
                   + (f" ({detail})" if detail else "") + _controls_note(comparison))
        self._record(check_id, title, group, float(comparison["skill"]), rule, status, message, cites, comparison)
        self._raise(status, message)

    def check_change(self, check_id: str, change: dict | None, *, detail: str = "") -> None:
        """Judge a paired delta candidate − baseline (audit.compare) on its CI bound; see [change] rules."""
        title, group, meaning, cites = describe(check_id)
        rule = self._rule_or_not_run(check_id)
        ci = (change or {}).get("delta_ci") or [None, None]
        bound = ci[0] if rule.direction == "min" else ci[1]
        if change is None or bound is None:
            why = "the delta is not estimable (fewer than 2 resampling units)" if change else "no delta computed"
            self._record(check_id, title, group, None, rule, "ERROR", f"{meaning}; {why}", cites)
            self.checks[check_id]["change"] = change
            pytest.fail(f"{check_id}: {why}", pytrace=False)
        passed = rule.passes(float(bound))
        status = "PASS" if passed else ("WARN" if rule.severity == "warn" else "FAIL")
        which, relation = ("lower", ">=") if rule.direction == "min" else ("upper", "<=")
        message = (f"{check_id}: candidate {change['candidate']:.4g} vs baseline {change['baseline']:.4g}, "
                   f"delta {change['delta']:+.4f} [95% CI {ci[0]:+.4f} to {ci[1]:+.4f}, paired by "
                   f"{change['ci_unit']}, n={change['n_units']}], needs the {which} bound {relation} "
                   f"{rule.threshold:+g}: {meaning}" + (f" ({detail})" if detail else ""))
        self._record(check_id, title, group, float(change["delta"]), rule, status, message, cites)
        self.checks[check_id]["change"] = change
        self._raise(status, message)

    @staticmethod
    def _raise(status: str, message: str) -> None:
        if status == "WARN":
            warnings.warn(GateWarning(message))
        elif status == "FAIL":
            pytest.fail(message, pytrace=False)

    def _rule_or_not_run(self, check_id: str, value=None, comparison: dict | None = None):
        """The check's rule; without one the check is recorded NOT_RUN (the verdict becomes INCOMPLETE)."""
        rule = self.thresholds.rule(check_id)
        if rule is None:
            title, group, meaning, cites = describe(check_id)
            why = f"no threshold configured for {check_id} in {self.thresholds.path}"
            self._record(check_id, title, group, value, None, "NOT_RUN", f"{meaning}; not judged: {why}", cites,
                         comparison)
            pytest.skip(why)
        return rule

    def not_applicable(self, check_id: str, reason: str) -> None:
        """The check cannot apply to this data (e.g. no masks): recorded NOT_APPLICABLE with the reason."""
        title, group, meaning, cites = describe(check_id)
        self._record(check_id, title, group, None, self.thresholds.rule(check_id), "NOT_APPLICABLE",
                     f"{meaning}; not applicable: {reason}", cites)
        pytest.skip(f"{check_id}: not applicable: {reason}")

    def finish(self, reason: str = "not run: deselected (-k), or the session stopped before it") -> None:
        """Record every expected check that never reported as NOT_RUN, so audit.json is complete."""
        for check_id in self.expected:
            if check_id not in self.checks:
                title, group, meaning, cites = describe(check_id)
                self._record(check_id, title, group, None, self.thresholds.rule(check_id), "NOT_RUN",
                             f"{meaning}; {reason}", cites)

    def error(self, check_id: str, message: str) -> None:
        """A check whose computation crashed: ERROR, never silently missing."""
        if check_id in self.checks:
            return
        title, group, meaning, cites = describe(check_id)
        self._record(check_id, title, group, None, self.thresholds.rule(check_id), "ERROR",
                     f"{meaning}; error: {' '.join(message.split())[:400]}", cites)

    def _record(self, check_id, title, group, value, rule, status, message, cites, comparison=None) -> None:
        self.checks[check_id] = {
            "id": check_id, "title": title, "group": group, "value": value,
            "threshold": rule.threshold if rule else None, "direction": rule.direction if rule else None,
            "severity": rule.severity if rule else "fail", "status": status, "message": message,
            "cites": list(cites), "basis": rule.basis if rule else "value"}
        if comparison is not None:
            self.checks[check_id]["comparison"] = comparison
        evidence = bank_evidence(self.bank, check_id, self.condition)
        if evidence:
            self.checks[check_id]["bank"] = evidence
        if check_id in SCOPE:
            detects, blind_to = SCOPE[check_id]
            self.checks[check_id]["scope"] = {"detects": detects, "cannot_detect": blind_to}

    def verdict(self) -> str:
        """The verdict of the checks recorded so far (``verdict_of``); INCOMPLETE while an expected check is
        missing."""
        return verdict_of([c["status"] for c in self.checks.values()], fail_on_warn=self.thresholds.fail_on_warn,
                          missing=any(c not in self.checks for c in self.expected))

    def ordered(self) -> list[dict]:
        return sorted(self.checks.values(), key=lambda c: (STATUS_ORDER[c["status"]], c["id"]))


def verdict_of(statuses, *, fail_on_warn: bool, missing: bool = False) -> str:
    """The gate's one rule, for a live gate and for a recorded one judged again (``characteristic.rejudge``):
    FAIL on any FAIL or ERROR (or WARN with fail_on_warn); else INCOMPLETE when a check did not run, none
    did, or an expected one is ``missing``; else PASS. Only a complete PASS accepts the model."""
    found = set(statuses)
    if found & ({"FAIL", "ERROR"} | ({"WARN"} if fail_on_warn else set())):
        return "FAIL"
    if "NOT_RUN" in found or not found or missing:
        return "INCOMPLETE"
    return "PASS"


def _controls_note(comparison: dict | None) -> str:
    """'; controls: random 0.21, edge 0.30 (best)' — the figure's context, in every message."""
    if not comparison or not comparison.get("controls"):
        return ""
    parts = [f"{name} {value:.3g}" + (" (best)" if name == comparison.get("best_control") else "")
             for name, value in comparison["controls"].items() if value is not None]
    return f"; model {comparison['value']:.3g}, controls: " + ", ".join(parts) if parts and comparison.get(
        "value") is not None else ""
