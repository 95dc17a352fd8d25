"""Paired comparison of two models on the same images: subject bootstrap deltas and McNemar's exact test."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from audit.compare import (compare_runs, ece_weighted, mcnemar_exact, prediction_changes, skill_weighted,
                           subject_weights)


def fake_run(labels, predicted, subjects, confidence=0.9):
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    probs = np.full((len(labels), 4), (1 - confidence) / 3)
    probs[np.arange(len(labels)), predicted] = confidence
    samples = [SimpleNamespace(path=f"/d/{i}.png") for i in range(len(labels))]
    return SimpleNamespace(labels=labels, predicted=predicted, probs=probs, subjects=list(subjects),
                           split=SimpleNamespace(samples=samples))


@pytest.fixture
def cohort():
    rng = np.random.default_rng(0)
    subjects = np.repeat([f"S{i:02d}" for i in range(40)], 4)
    labels = np.repeat(np.arange(40) % 4, 4)
    good = np.where(rng.random(160) < 0.9, labels, (labels + 1) % 4)
    return subjects, labels, good, rng


def test_a_model_against_itself_has_zero_deltas(cohort):
    subjects, labels, good, _ = cohort
    run = fake_run(labels, good, subjects)
    out = compare_runs(run, run, figures=["accuracy", "balanced_accuracy", "per_class_recall", "ece"])
    for name, entry in out.items():
        assert entry["delta"] == 0 and entry["delta_ci"] == [0.0, 0.0], name
        assert entry["ci_unit"] == "subject" and entry["n_units"] == 40
    changes = prediction_changes(run, run)
    assert changes["n_changed_predictions"] == 0 and changes["mcnemar"]["p_value"] == 1.0


def test_a_degraded_model_is_worse_with_a_ci_that_excludes_zero(cohort):
    subjects, labels, good, rng = cohort
    worse = np.where(rng.random(160) < 0.5, good, (labels + 2) % 4)
    out = compare_runs(fake_run(labels, worse, subjects, 0.95), fake_run(labels, good, subjects, 0.9),
                       figures=["accuracy", "balanced_accuracy", "ece"])
    assert out["accuracy"]["delta"] < -0.3 and out["accuracy"]["delta_ci"][1] < 0
    assert out["balanced_accuracy"]["delta_ci"][1] < 0
    assert out["ece"]["delta"] > 0 and out["ece"]["higher_is_better"] is False
    m = prediction_changes(fake_run(labels, worse, subjects), fake_run(labels, good, subjects))["mcnemar"]
    assert m["baseline_only_correct"] > m["candidate_only_correct"] and m["p_value"] < 1e-6


def test_mcnemar_matches_the_binomial_test_of_discordant_pairs():
    from scipy.stats import binomtest

    base = np.array([1, 1, 1, 1, 1, 0, 0, 1, 1, 0], bool)
    cand = np.array([0, 0, 0, 1, 1, 1, 0, 0, 1, 0], bool)
    m = mcnemar_exact(base, cand)
    assert (m["baseline_only_correct"], m["candidate_only_correct"]) == (4, 1)
    assert m["p_value"] == pytest.approx(binomtest(1, 5, 0.5).pvalue)


def test_weighted_figures_match_their_plain_definitions():
    from model.evaluate import expected_calibration_error

    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(4), 50)
    y = rng.integers(0, 4, 50)
    weights, kind, n_units = subject_weights([None] * 50, n_boot=10)
    assert kind == "image" and n_units == 50 and np.all(weights[0] == 1) and weights.shape == (11, 50)
    assert ece_weighted(weights[:1], probs, y)[0] == pytest.approx(expected_calibration_error(probs, y)[0])
    value, control = rng.random(20), rng.random(20)
    skill = skill_weighted(np.ones((1, 50)), np.arange(20), value, {"c": control}, True)
    assert skill[0] == pytest.approx(value.mean() - control.mean())


def test_runs_on_different_images_are_refused(cohort):
    from model.errors import AlzAuditError

    subjects, labels, good, _ = cohort
    a, b = fake_run(labels, good, subjects), fake_run(labels, good, subjects)
    b.split.samples = list(reversed(b.split.samples))
    with pytest.raises(AlzAuditError, match="same images"):
        compare_runs(a, b, figures=["accuracy"])


def test_worst_class_recall_uses_slices_when_subject_ids_are_unknown(cohort):
    """The per-class rule of model.evaluate: without IDs, five slices of a stage make it estimable."""
    _, labels, good, _ = cohort
    run = fake_run(labels, good, [None] * len(labels))
    out = compare_runs(run, run, figures=["per_class_recall"])
    assert out["per_class_recall"]["delta"] == 0 and out["per_class_recall"]["ci_unit"] == "image"
