"""Cross-version drift: identical audits agree, a changed model behaviour is caught."""
from __future__ import annotations

import json

import numpy as np
import pytest

from audit.drift import compare_audits, judge
from model.errors import AlzAuditError
from suites.thresholds import load_thresholds


def fake_audit(folder, probs, maps, statuses, sha="a" * 64, tf="2.20.0"):
    folder.mkdir(parents=True)
    np.savez_compressed(folder / "heatmap_sample.npz", paths=np.array([f"img{i}.png" for i in range(len(probs))]),
                        probs=probs.astype(np.float32), maps=maps.astype(np.float16))
    document = {"model": {"sha256": sha}, "run": {"versions": {"tensorflow": tf}},
                "checks": [{"id": k, "status": v} for k, v in statuses.items()],
                "heatmap_sample": "heatmap_sample.npz"}
    (folder / "audit.json").write_text(json.dumps(document))
    return folder / "audit.json"


@pytest.fixture
def baseline():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=12)
    maps = rng.random((12, 32, 32))
    return probs, maps


def test_identical_audits_show_no_drift(tmp_path, baseline):
    probs, maps = baseline
    statuses = {"performance.accuracy": "PASS", "throughput.inference.cpu": "PASS"}
    a = fake_audit(tmp_path / "a", probs, maps, statuses)
    b = fake_audit(tmp_path / "b", probs, maps, statuses, tf="2.21.0")
    figures = compare_audits(a, b)
    assert figures["prediction_agreement"] == 1.0 and figures["max_probability_difference"] == 0.0
    assert figures["heatmap_ssim"] == pytest.approx(1.0)
    assert all(v["status"] == "PASS" for v in judge(figures, load_thresholds()))


def test_changed_predictions_maps_and_verdicts_are_caught(tmp_path, baseline):
    probs, maps = baseline
    a = fake_audit(tmp_path / "a", probs, maps, {"performance.accuracy": "PASS", "throughput.gradcam.cpu": "PASS"})
    flipped = probs[:, ::-1].copy()
    b = fake_audit(tmp_path / "b", flipped, np.random.default_rng(1).random((12, 32, 32)),
                   {"performance.accuracy": "FAIL", "throughput.gradcam.cpu": "FAIL"})
    figures = compare_audits(a, b)
    assert figures["changed"] == [{"id": "performance.accuracy", "a": "PASS", "b": "FAIL"}]
    assert figures["heatmap_ssim"] < 0.5
    statuses = {v["id"]: v["status"] for v in judge(figures, load_thresholds())}
    assert statuses["drift.heatmap_ssim"] == "FAIL" and statuses["drift.changed_verdicts"] == "FAIL"


def test_different_models_or_missing_sample_are_clear_errors(tmp_path, baseline):
    probs, maps = baseline
    a = fake_audit(tmp_path / "a", probs, maps, {})
    b = fake_audit(tmp_path / "b", probs, maps, {}, sha="b" * 64)
    with pytest.raises(AlzAuditError, match="different model files"):
        compare_audits(a, b)
    with pytest.raises(AlzAuditError, match="not found"):
        compare_audits(a, tmp_path / "nope.json")
