"""The gate's operating characteristic: exact binomial intervals, AUROC, the judged figure, and the shape of
the committed record (``docs/gate_characteristic.json``; its values come from ``benchmarks/gate_bank.py``)."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from suites.characteristic import auroc, characteristic, clopper_pearson, judged_figure, to_markdown

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
