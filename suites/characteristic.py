"""The gate's operating characteristic: how often each check passes known-good models and fails known-bad ones.

``benchmarks/gate_bank.py`` gates a bank of good and bad models (with and without masks) and calls
``characteristic`` on their audit.json documents; the result is committed as ``docs/gate_characteristic.json``
(and a table in ``docs/gate_characteristic.md``). Per check and for the whole verdict: the PASS rate on the
good bank and the FAIL rate on the bad bank with exact (Clopper-Pearson) 95% intervals, and the AUROC of the
check's judged figure between the banks (the CI's lower bound for skill rules, else the value, oriented so
that higher is better). No toolkit reports this about itself; a reviewer who signs a PASS needs it.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

SCHEMA_VERSION = "1.0"
CONDITIONS = ("with_masks", "without_masks")
RECORD = Path(__file__).resolve().parents[1] / "docs" / "gate_characteristic.json"
MIN_AUROC = 0.8          # a check that separates the banks less well than this can only warn
MIN_BANK = (6, 7)        # (good, bad) models a record needs before it may demote a check


def clopper_pearson(k: int, n: int, level: float = 0.95) -> list[float | None]:
    """Exact binomial interval for k successes in n trials; [None, None] when n = 0."""
    if n == 0:
        return [None, None]
    from scipy.stats import beta

    alpha = 1.0 - level
    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return [round(lo, 4), round(hi, 4)]


def auroc(good: Iterable[float], bad: Iterable[float]) -> float | None:
    """P(a good model's figure > a bad model's), ties counting half (the Mann-Whitney statistic)."""
    good, bad = [g for g in good if _finite(g)], [b for b in bad if _finite(b)]
    if not good or not bad:
        return None
    wins = sum((g > b) + 0.5 * (g == b) for g in good for b in bad)
    return round(wins / (len(good) * len(bad)), 4)


def judged_figure(check: dict) -> float | None:
    """The number the rule judged, oriented so that higher is better (None when not judged)."""
    if check.get("status") in ("NOT_APPLICABLE", "NOT_RUN"):
        return None
    if check.get("basis") == "skill":
        ci = (check.get("comparison") or {}).get("skill_ci") or [None]
        value = ci[0]
    elif check.get("basis") == "delta":
        return None
    else:
        value = check.get("value")
    if not _finite(value):
        return None
    return -float(value) if check.get("direction") == "max" else float(value)


def characteristic(bank, documents: dict[str, dict[str, dict]], *, wall_seconds: int | None = None,
                   thresholds=None) -> dict:
    """The record: every model with its verdict and check statuses per condition, the per-check table, and
    where the bank puts each explanation threshold (``bank_thresholds``).

    ``bank``: entries with ``name``, ``kind`` ("good" | "bad") and ``failure``; ``documents``:
    ``{name: {condition: audit.json document}}``. Statuses and verdicts are those the committed gate gives:
    ``thresholds`` (default: the shipped file) and this record's own AUROCs applied to the recorded figures
    (``rejudge``); each model also keeps the verdict its run printed (``verdict_as_run``)."""
    if thresholds is None:
        from suites.thresholds import load_thresholds

        thresholds = load_thresholds()
    as_run = _models(bank, documents, None)
    first = _record(as_run, wall_seconds)   # AUROCs come from figures alone: the same in both passes
    models = _models(bank, documents, lambda doc, cond: rejudge(doc["checks"], thresholds, first, cond))
    record = _record(models, wall_seconds)
    for model, ran in zip(record["models"], as_run):
        for cond, run in ran["conditions"].items():
            model["conditions"][cond]["verdict_as_run"] = run["verdict"]
    record["thresholds"] = bank_thresholds(record, {cid: rule.severity for cid, rule in thresholds.rules.items()})
    for cid, row in record["thresholds"].items():
        rule = thresholds.rule(cid)
        sign = -1.0 if rule is not None and rule.direction == "max" else 1.0   # max rules judge -value
        row["in_file"] = None if rule is None else rule.threshold
        row["derived_in_file_terms"] = None if row["derived"] is None else round(sign * row["derived"], 3)
    from audit.writer import file_sha256_or_none

    record["thresholds_file_sha256"] = file_sha256_or_none(thresholds.path)
    return record


def _models(bank, documents, judge) -> list[dict]:
    models = []
    for entry in bank:
        conditions = documents.get(entry.name) or {}
        if not conditions:
            continue
        judged = {cond: judge(doc, cond) if judge else (doc["verdict"], {c["id"]: c["status"] for c in doc["checks"]})
                  for cond, doc in conditions.items()}
        first_cond = next(iter(conditions))
        statuses = judged[first_cond][1]
        performance = [c["id"] for c in conditions[first_cond]["checks"]
                       if c["group"] == "performance" and c["severity"] == "fail"]
        models.append({
            "name": entry.name, "kind": entry.kind, "failure": entry.failure or None,
            "accurate": bool(performance) and all(statuses[cid] == "PASS" for cid in performance),
            "balanced_accuracy": next((c["value"] for c in conditions[first_cond]["checks"]
                                       if c["id"] == "performance.balanced_accuracy"), None),
            "conditions": {cond: {"verdict": judged[cond][0], "checks": judged[cond][1],
                                  "judged": {c["id"]: judged_figure(c) for c in doc["checks"]}}
                           for cond, doc in conditions.items()}})
    return models


def _record(models: list[dict], wall_seconds) -> dict:
    table = {cond: _table(models, cond) for cond in CONDITIONS}
    return {"schema_version": SCHEMA_VERSION, "wall_seconds": wall_seconds,
            "n_good": sum(m["kind"] == "good" for m in models), "n_bad": sum(m["kind"] == "bad" for m in models),
            "models": [{**m, "conditions": {c: {"verdict": d["verdict"], "checks": d["checks"]}
                                            for c, d in m["conditions"].items()}} for m in models],
            "judged": {m["name"]: {c: d["judged"] for c, d in m["conditions"].items()} for m in models},
            "checks": table}


BANK_SET = ("explanations.", "stability.")   # the checks whose thresholds the bank sets (performance and data
                                            # thresholds are the user's requirements, not a discrimination)


def bank_thresholds(record: dict, severities: dict[str, str] | None = None) -> dict[str, dict]:
    """Where the reference bank puts each explanation/stability threshold: the rule of docs/thresholds.md.

    The judged figures (skill CI lower bound, or the value; oriented so higher is better) of every model in
    both mask conditions are pooled. When every good model's figure is above every bad model's, the banks
    are separated and the threshold is the midpoint of the gap between the worst good and the best bad
    figure; otherwise there is no gap to put it in, and the threshold stays at its control-derived value
    (the pooled AUROC then decides whether the check may fail a model). ``severities``: check id ->
    "fail" | "warn"; warn-only checks are listed but not set."""
    kinds = {m["name"]: m["kind"] for m in record.get("models", [])}
    pooled: dict[str, dict[str, list[float]]] = {}
    for name, conditions in (record.get("judged") or {}).items():
        for figures in conditions.values():
            for cid, value in figures.items():
                if cid.startswith(BANK_SET) and _finite(value) and kinds.get(name) in ("good", "bad"):
                    pooled.setdefault(cid, {"good": [], "bad": []})[kinds[name]].append(float(value))
    out = {}
    for cid, banks in sorted(pooled.items()):
        good, bad = banks["good"], banks["bad"]
        if not good or not bad:
            continue
        worst_good, best_bad = min(good), max(bad)
        gap = worst_good > best_bad
        gating = (severities or {}).get(cid, "fail") == "fail"
        out[cid] = {"auroc": auroc(good, bad), "worst_good": round(worst_good, 4), "best_bad": round(best_bad, 4),
                    "n_good": len(good), "n_bad": len(bad), "separated": gap, "gating": gating,
                    "derived": round((worst_good + best_bad) / 2, 3) if gap and gating else None}
    return out


def _table(models: list[dict], condition: str) -> dict[str, Any]:
    runs = [m for m in models if condition in m["conditions"]]
    ids = sorted({cid for m in runs for cid in m["conditions"][condition]["checks"]})
    out: dict[str, Any] = {}
    for cid in ["verdict", *ids]:
        good = [m for m in runs if m["kind"] == "good"]
        bad = [m for m in runs if m["kind"] == "bad"]

        def status(m):
            c = m["conditions"][condition]
            return c["verdict"] if cid == "verdict" else c["checks"].get(cid)

        g = [status(m) for m in good if status(m) not in (None, "NOT_APPLICABLE", "NOT_RUN")]
        b = [status(m) for m in bad if status(m) not in (None, "NOT_APPLICABLE", "NOT_RUN")]
        passed, rejected = sum(s == "PASS" for s in g), sum(s in ("FAIL", "ERROR") for s in b)
        row = {"good_passed": passed, "good_n": len(g), "good_pass_rate_ci": clopper_pearson(passed, len(g)),
               "bad_rejected": rejected, "bad_n": len(b), "bad_fail_rate_ci": clopper_pearson(rejected, len(b))}
        if cid != "verdict":
            row["auroc"] = auroc([m["conditions"][condition]["judged"].get(cid) for m in good],
                                 [m["conditions"][condition]["judged"].get(cid) for m in bad])
        out[cid] = row
    return out


def to_markdown(record: dict) -> str:
    """The per-check table of the record, one section per mask condition."""
    lines = ["# The gate's operating characteristic", "",
             f"{record['n_good']} good and {record['n_bad']} bad models (`benchmarks/gate_bank.py`, "
             f"the gates behind this record took {round((record.get('wall_seconds') or 0) / 60)} min of wall, training "
             "not included). "
             "PASS rate on the good bank and FAIL rate on the bad bank with exact 95% intervals; AUROC of the "
             "check's judged figure (the skill CI's lower bound, or the value) between the banks.", ""]
    lines += ["| model | kind | accurate | balanced accuracy | " + " | ".join(f"verdict {c}" for c in CONDITIONS) + " |",
              "| --- | --- | --- | --- | " + " | ".join("---" for _ in CONDITIONS) + " |"]
    for m in record["models"]:
        verdicts = [_verdict_text(m["conditions"].get(c)) for c in CONDITIONS]
        bac = m.get("balanced_accuracy")
        bac_text = "n/a" if bac is None else f"{bac:.3f}"
        lines.append(f"| {m['name']} | {m['kind']} | {'yes' if m['accurate'] else 'no'} | {bac_text} | "
                     + " | ".join(verdicts) + " |")
    lines += ["", "## Where the bank puts the thresholds", "",
              "Judged figures of both conditions pooled (oriented: higher is better). Where every good model is "
              "above every bad one, the threshold is the midpoint of the gap; elsewhere it keeps its "
              "control-derived value (docs/thresholds.md).", "",
              "| check | AUROC | worst good | best bad | separated | from the bank | in thresholds.toml |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for cid, row in (record.get("thresholds") or {}).items():
        area = "—" if row.get("auroc") is None else f"{row['auroc']:.2f}"
        derived = "—" if row.get("derived_in_file_terms") is None else f"{row['derived_in_file_terms']:g}"
        kept = "—" if row.get("in_file") is None else f"{row['in_file']:g}"
        lines.append(f"| {cid}{'' if row.get('gating') else ' (warn)'} | {area} | {row['worst_good']:+.3f} | "
                     f"{row['best_bad']:+.3f} | {'yes' if row['separated'] else 'no'} | {derived} | {kept} |")
    for condition in CONDITIONS:
        lines += ["", f"## {condition.replace('_', ' ')}", "",
                  "| check | good passed | pass rate 95% CI | bad rejected | fail rate 95% CI | AUROC |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for cid, row in record["checks"][condition].items():
            if row["good_n"] == 0 and row["bad_n"] == 0:
                continue  # not applicable to any model here (change.* without a baseline)
            area = "—" if row.get("auroc") is None else f"{row['auroc']:.2f}"
            lines.append(f"| {cid} | {row['good_passed']}/{row['good_n']} | {_ci(row['good_pass_rate_ci'])} | "
                         f"{row['bad_rejected']}/{row['bad_n']} | {_ci(row['bad_fail_rate_ci'])} | {area} |")
    return "\n".join(lines) + "\n"


def _verdict_text(run: dict | None) -> str:
    if not run:
        return "not run"
    ran = run.get("verdict_as_run")
    return run["verdict"] + (f" (ran: {ran})" if ran and ran != run["verdict"] else "")


def _ci(ci) -> str:
    return "—" if ci[0] is None else f"{ci[0]:.2f}–{ci[1]:.2f}"


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


RECORD_ENV = "ALZAUDIT_BANK_RECORD"


def load_record(path: Path | None = None) -> dict | None:
    """The committed record (a source checkout or editable install has it), or None.

    ``$ALZAUDIT_BANK_RECORD`` names another record, or ``none`` for none: the bank's own runs are gated
    without one, so the record they build cannot change their verdicts half-way (``rejudge`` applies it)."""
    if path is None:
        chosen = os.environ.get(RECORD_ENV, "")
        if chosen.lower() == "none":
            return None
        path = Path(chosen) if chosen else RECORD
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def rejudge(checks: list[dict], thresholds, record: dict | None, condition: str) -> tuple[str, dict[str, str]]:
    """(verdict, {check id: status}) that ``thresholds`` and the bank ``record`` give these recorded checks.

    A check's figure does not depend on its threshold, so a bank gated once can be judged again when the
    thresholds move or the record demotes a check, without recomputing anything. Kept as recorded: checks
    that did not run, could not apply or errored, paired deltas, and a check recorded warn-only while its
    rule fails (the gate made it warn-only on this data, e.g. prior_localization beside lesion masks)."""
    statuses: dict[str, str] = {}
    for check in checks:
        cid, status = check["id"], check["status"]
        rule = thresholds.rule(cid)
        if check.get("basis") == "skill":
            figure = ((check.get("comparison") or {}).get("skill_ci") or [None])[0]
        else:
            figure = check.get("value")
        if status not in ("PASS", "WARN", "FAIL") or rule is None or check.get("basis") == "delta" \
                or not _finite(figure):
            statuses[cid] = status
            continue
        evidence = bank_evidence(record, cid, condition)
        warn_only = rule.severity == "warn" or check.get("severity") == "warn" or bool(evidence and evidence["demoted"])
        statuses[cid] = "PASS" if rule.passes(float(figure)) else ("WARN" if warn_only else "FAIL")
    from suites.gate import verdict_of  # suites.gate imports this module

    return verdict_of(statuses.values(), fail_on_warn=thresholds.fail_on_warn), statuses


def bank_evidence(record: dict | None, check_id: str, condition: str) -> dict | None:
    """What the reference bank says of one check on data like this (with or without masks): how many
    known-bad models it rejected and known-good ones it passed, its AUROC, and whether that AUROC is too low
    for the check to fail a model (only once the bank is big enough to say so)."""
    row = ((record or {}).get("checks") or {}).get(condition, {}).get(check_id)
    if not row:
        return None
    big_enough = record.get("n_good", 0) >= MIN_BANK[0] and record.get("n_bad", 0) >= MIN_BANK[1]
    area = row.get("auroc")
    # Only the checks the bank is built to judge can be demoted: performance and data bars are the user's
    # requirements, and half the bad models are accurate on purpose (their AUROC says nothing of the bar).
    judged_by_bank = check_id.startswith(BANK_SET)
    return {"condition": condition, "bad_rejected": row["bad_rejected"], "bad_n": row["bad_n"],
            "good_passed": row["good_passed"], "good_n": row["good_n"], "auroc": area,
            "demoted": bool(judged_by_bank and big_enough and area is not None and area < MIN_AUROC)}
