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


def characteristic(bank, documents: dict[str, dict[str, dict]], *, wall_seconds: int | None = None) -> dict:
    """The record: every model with its verdict and check statuses per condition, and the per-check table.

    ``bank``: entries with ``name``, ``kind`` ("good" | "bad") and ``failure``; ``documents``:
    ``{name: {condition: audit.json document}}``."""
    models = []
    for entry in bank:
        conditions = documents.get(entry.name) or {}
        if not conditions:
            continue
        first = next(iter(conditions.values()))
        performance = [c for c in first["checks"] if c["group"] == "performance" and c["severity"] == "fail"]
        models.append({
            "name": entry.name, "kind": entry.kind, "failure": entry.failure or None,
            "accurate": bool(performance) and all(c["status"] == "PASS" for c in performance),
            "balanced_accuracy": next((c["value"] for c in first["checks"]
                                       if c["id"] == "performance.balanced_accuracy"), None),
            "conditions": {cond: {"verdict": doc["verdict"],
                                  "checks": {c["id"]: c["status"] for c in doc["checks"]},
                                  "judged": {c["id"]: judged_figure(c) for c in doc["checks"]}}
                           for cond, doc in conditions.items()}})
    table = {cond: _table(models, cond) for cond in CONDITIONS}
    return {"schema_version": SCHEMA_VERSION, "wall_seconds": wall_seconds,
            "n_good": sum(m["kind"] == "good" for m in models), "n_bad": sum(m["kind"] == "bad" for m in models),
            "models": [{**m, "conditions": {c: {"verdict": d["verdict"], "checks": d["checks"]}
                                            for c, d in m["conditions"].items()}} for m in models],
            "judged": {m["name"]: {c: d["judged"] for c, d in m["conditions"].items()} for m in models},
            "checks": table}


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
             f"{record.get('wall_seconds') or '?'} s wall for the runs this record was computed from). "
             "PASS rate on the good bank and FAIL rate on the bad bank with exact 95% intervals; AUROC of the "
             "check's judged figure (the skill CI's lower bound, or the value) between the banks.", ""]
    lines += ["| model | kind | accurate | balanced accuracy | " + " | ".join(f"verdict {c}" for c in CONDITIONS) + " |",
              "| --- | --- | --- | --- | " + " | ".join("---" for _ in CONDITIONS) + " |"]
    for m in record["models"]:
        verdicts = [(m["conditions"].get(c) or {}).get("verdict", "not run") for c in CONDITIONS]
        bac = m.get("balanced_accuracy")
        bac_text = "n/a" if bac is None else f"{bac:.3f}"
        lines.append(f"| {m['name']} | {m['kind']} | {'yes' if m['accurate'] else 'no'} | {bac_text} | "
                     + " | ".join(verdicts) + " |")
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


def _ci(ci) -> str:
    return "—" if ci[0] is None else f"{ci[0]:.2f}–{ci[1]:.2f}"


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def load_record(path: Path = RECORD) -> dict | None:
    """The committed record (a source checkout or editable install has it), or None."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def bank_evidence(record: dict | None, check_id: str, condition: str) -> dict | None:
    """What the reference bank says of one check on data like this (with or without masks): how many
    known-bad models it rejected and known-good ones it passed, its AUROC, and whether that AUROC is too low
    for the check to fail a model (only once the bank is big enough to say so)."""
    row = ((record or {}).get("checks") or {}).get(condition, {}).get(check_id)
    if not row:
        return None
    big_enough = record.get("n_good", 0) >= MIN_BANK[0] and record.get("n_bad", 0) >= MIN_BANK[1]
    area = row.get("auroc")
    return {"condition": condition, "bad_rejected": row["bad_rejected"], "bad_n": row["bad_n"],
            "good_passed": row["good_passed"], "good_n": row["good_n"], "auroc": area,
            "demoted": bool(big_enough and area is not None and area < MIN_AUROC)}
