"""The gate's operating characteristic: exact binomial intervals, AUROC, the judged figure, and the shape of
the committed record (``docs/gate_characteristic.json``; its values come from ``benchmarks/gate_bank.py``)."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from suites.characteristic import (auroc, bank_thresholds, characteristic, clopper_pearson, judged_figure, rejudge,
                                   to_markdown)

ROOT = Path(__file__).resolve().parents[2]


def test_clopper_pearson_matches_scipy_binomtest():
    from scipy.stats import binomtest

    for k, n in ((0, 7), (3, 7), (6, 6), (5, 13)):
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
        assert clopper_pearson(k, n) == pytest.approx([ci.low, ci.high], abs=1e-4)
    assert clopper_pearson(0, 0) == [None, None]


def test_auroc_counts_ties_half_and_ignores_missing():
    assert auroc([0.3, 0.2], [0.1, 0.0]) == 1.0
    assert auroc([0.1], [0.2]) == 0.0
    assert auroc([0.1, 0.3], [0.1, None, float("nan")]) == 0.75
    assert auroc([], [0.1]) is None


def test_the_judged_figure_is_the_skill_bound_or_the_oriented_value():
    skill = {"status": "FAIL", "basis": "skill", "direction": "min", "value": 0.2,
             "comparison": {"skill_ci": [-0.05, 0.4]}}
    assert judged_figure(skill) == -0.05
    assert judged_figure({"status": "PASS", "basis": "value", "direction": "max", "value": 0.1}) == -0.1
    assert judged_figure({"status": "NOT_APPLICABLE", "basis": "value", "direction": "min", "value": None}) is None


def _document(verdict: str, statuses: dict) -> dict:
    return {"verdict": verdict, "checks": [
        {"id": cid, "group": cid.split(".")[0], "severity": "fail", "status": s, "basis": "value",
         "direction": "min", "value": v} for cid, (s, v) in statuses.items()]}


def test_the_record_counts_passes_of_good_models_and_rejections_of_bad_ones():
    bank = [SimpleNamespace(name="good", kind="good", failure=""), SimpleNamespace(name="bad", kind="bad",
                                                                                  failure="a shortcut")]
    good = _document("PASS", {"performance.balanced_accuracy": ("PASS", 0.85), "explanations.x": ("PASS", 0.5)})
    bad = _document("FAIL", {"performance.balanced_accuracy": ("PASS", 0.90), "explanations.x": ("FAIL", 0.1)})
    record = characteristic(bank, {"good": {"with_masks": good}, "bad": {"with_masks": bad, "without_masks": bad}})
    validate_record(record)
    row = record["checks"]["with_masks"]["explanations.x"]
    assert (row["good_passed"], row["good_n"], row["bad_rejected"], row["bad_n"], row["auroc"]) == (1, 1, 1, 1, 1.0)
    assert record["checks"]["with_masks"]["performance.balanced_accuracy"]["auroc"] == 0.0  # the bad one is better
    assert [m["accurate"] for m in record["models"]] == [True, True]
    assert "| explanations.x | 1/1 |" in to_markdown(record)


RECORD_SCHEMA = {
    "type": "object", "required": ["schema_version", "n_good", "n_bad", "models", "checks"],
    "properties": {
        "models": {"type": "array", "items": {
            "type": "object", "required": ["name", "kind", "accurate", "conditions"],
            "properties": {"name": {"type": "string"}, "kind": {"enum": ["good", "bad"]},
                           "accurate": {"type": "boolean"},
                           "conditions": {"type": "object", "additionalProperties": False,
                                          "properties": {c: {"type": "object", "required": ["verdict", "checks"],
                                                             "properties": {
                                                                 "verdict": {"enum": ["PASS", "FAIL", "INCOMPLETE"]},
                                                                 "checks": {"type": "object", "additionalProperties": {
                                                                     "enum": ["PASS", "WARN", "FAIL", "ERROR",
                                                                              "NOT_APPLICABLE", "NOT_RUN"]}}}}
                                                         for c in ("with_masks", "without_masks")}}}}},
        "checks": {"type": "object", "additionalProperties": {"type": "object", "additionalProperties": {
            "type": "object", "required": ["good_passed", "good_n", "bad_rejected", "bad_n"]}}},
    },
}


def validate_record(record: dict) -> None:
    import jsonschema

    jsonschema.validate(record, RECORD_SCHEMA)


def test_the_committed_record_has_the_documented_shape():
    path = ROOT / "docs" / "gate_characteristic.json"
    assert path.is_file(), "docs/gate_characteristic.json is missing: run benchmarks/gate_bank.py"
    validate_record(json.loads(path.read_text()))


def test_the_committed_record_is_a_whole_bank():
    """The record decides which checks gate: a partial one (a bank run interrupted, or committed while it
    ran) would silently re-promote checks that cannot tell good models from bad. Both banks, every model
    judged in both conditions, every explanation check with an AUROC."""
    record = json.loads((ROOT / "docs" / "gate_characteristic.json").read_text())
    kinds = [m["kind"] for m in record["models"]]
    assert kinds.count("good") >= 5 and kinds.count("bad") >= 5, kinds
    assert (record["n_good"], record["n_bad"]) == (kinds.count("good"), kinds.count("bad"))
    for model in record["models"]:
        assert set(model["conditions"]) == {"with_masks", "without_masks"}, model["name"]
    for condition in ("with_masks", "without_masks"):
        checks = record["checks"][condition]
        judged = [c for c in checks if c.startswith(("explanations.", "stability.")) and checks[c]["good_n"]]
        assert judged and all(checks[c]["auroc"] is not None for c in judged), condition


def _thresholds(text: str):
    import tomllib

    from suites.thresholds import Thresholds

    return Thresholds("inline.toml", tomllib.loads(text))


def _check(cid: str, status: str, value: float, *, severity: str = "fail", direction: str = "min",
           basis: str = "value", skill_ci=None) -> dict:
    check = {"id": cid, "group": cid.split(".")[0], "status": status, "value": value, "severity": severity,
             "direction": direction, "basis": basis}
    if skill_ci is not None:
        check["comparison"] = {"skill_ci": skill_ci}
    return check


def test_rejudge_applies_moved_thresholds_and_a_demotion_to_recorded_figures():
    checks = [_check("explanations.prior_localization", "PASS", 0.10, basis="skill", skill_ci=[0.02, 0.2]),
              _check("explanations.outside_brain_mass", "PASS", 0.20, direction="max"),
              _check("performance.balanced_accuracy", "PASS", 0.85),
              _check("data.leakage_rate", "NOT_APPLICABLE", None, direction="max")]
    same = _thresholds("[explanations]\nprior_localization = { skill_min = 0.0 }\noutside_brain_mass = { max = 0.25 }\n"
                       "[performance]\nbalanced_accuracy = { min = 0.80 }\n")
    assert rejudge(checks, same, None, "without_masks")[0] == "PASS"
    moved = _thresholds("[explanations]\nprior_localization = { skill_min = 0.03 }\noutside_brain_mass = { max = 0.15 }\n"
                        "[performance]\nbalanced_accuracy = { min = 0.80 }\n")
    verdict, statuses = rejudge(checks, moved, None, "without_masks")
    assert verdict == "FAIL"
    assert statuses == {"explanations.prior_localization": "FAIL", "explanations.outside_brain_mass": "FAIL",
                        "performance.balanced_accuracy": "PASS", "data.leakage_rate": "NOT_APPLICABLE"}
    # A big enough bank in which outside_brain_mass separates poorly demotes it: it can only warn.
    row = {"good_passed": 6, "good_n": 6, "bad_rejected": 1, "bad_n": 7}
    record = {"n_good": 6, "n_bad": 7, "checks": {"without_masks": {
        "explanations.outside_brain_mass": {**row, "auroc": 0.6},
        "explanations.prior_localization": {**row, "auroc": 1.0}}}}
    verdict, statuses = rejudge(checks, moved, record, "without_masks")
    assert statuses["explanations.outside_brain_mass"] == "WARN"
    assert statuses["explanations.prior_localization"] == "FAIL" and verdict == "FAIL"
    # Recorded warn-only on this data (the gate said so) stays warn-only under a fail rule.
    warned = [_check("explanations.prior_localization", "WARN", 0.1, severity="warn", basis="skill",
                     skill_ci=[0.0, 0.2])]
    assert rejudge(warned, moved, None, "with_masks") == ("PASS", {"explanations.prior_localization": "WARN"})


def test_the_bank_sets_a_threshold_only_in_a_gap_between_the_banks():
    record = {"models": [{"name": "g1", "kind": "good"}, {"name": "g2", "kind": "good"},
                         {"name": "b1", "kind": "bad"}, {"name": "b2", "kind": "bad"}],
              "judged": {"g1": {"with_masks": {"explanations.a": 0.10, "explanations.b": 0.3},
                                "without_masks": {"explanations.a": 0.08}},
                         "g2": {"with_masks": {"explanations.a": 0.12, "explanations.b": 0.1}},
                         "b1": {"with_masks": {"explanations.a": -0.02, "explanations.b": 0.2}},
                         "b2": {"without_masks": {"explanations.a": 0.0, "performance.x": 0.9}}}}
    rows = bank_thresholds(record, {"explanations.a": "fail", "explanations.b": "fail"})
    assert rows["explanations.a"]["separated"] and rows["explanations.a"]["derived"] == 0.04   # (0.08 + 0.0) / 2
    assert not rows["explanations.b"]["separated"] and rows["explanations.b"]["derived"] is None
    assert "performance.x" not in rows   # performance bars are requirements, not set by the bank
    assert bank_thresholds(record, {"explanations.a": "warn"})["explanations.a"]["derived"] is None


def test_the_gate_can_be_told_to_judge_without_a_record(monkeypatch, tmp_path):
    from suites.characteristic import RECORD_ENV, load_record

    monkeypatch.setenv(RECORD_ENV, "none")
    assert load_record() is None
    other = tmp_path / "record.json"
    other.write_text(json.dumps({"n_good": 1}))
    monkeypatch.setenv(RECORD_ENV, str(other))
    assert load_record() == {"n_good": 1}
    monkeypatch.delenv(RECORD_ENV)
    assert load_record() is not None   # the committed one


def test_the_committed_thresholds_are_where_the_committed_bank_puts_them():
    """Every gating explanation/stability threshold the bank derives (a gap between the banks) is the one
    suites/thresholds.toml holds, and the record was judged with the file as committed."""
    from suites.characteristic import load_record
    from suites.thresholds import load_thresholds

    record = load_record(ROOT / "docs" / "gate_characteristic.json")
    thresholds = load_thresholds()
    for cid, row in record["thresholds"].items():
        if row["derived_in_file_terms"] is not None:
            assert thresholds.rule(cid).threshold == pytest.approx(row["derived_in_file_terms"], abs=5e-4), cid


def test_performance_and_data_bars_are_never_demoted_by_the_bank():
    from suites.characteristic import bank_evidence

    row = {"good_passed": 6, "good_n": 6, "bad_rejected": 3, "bad_n": 7, "auroc": 0.6}
    record = {"n_good": 6, "n_bad": 7, "checks": {"without_masks": {
        "performance.balanced_accuracy": row, "data.leakage_rate": row, "explanations.faithfulness_score": row}}}
    assert not bank_evidence(record, "performance.balanced_accuracy", "without_masks")["demoted"]
    assert not bank_evidence(record, "data.leakage_rate", "without_masks")["demoted"]
    assert bank_evidence(record, "explanations.faithfulness_score", "without_masks")["demoted"]
