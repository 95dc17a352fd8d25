"""Evaluation figures against hand-computed values."""
from __future__ import annotations

import numpy as np

from model.evaluate import (bootstrap_ci, classification_figures, expected_calibration_error, not_estimable,
                            subject_accuracy)


def test_perfect_and_known_predictions():
    y = np.array([0, 0, 1, 1, 2, 3])
    probs = np.eye(4)[[0, 0, 1, 0, 2, 3]] * 0.7 + 0.075
    figs = classification_figures(y, probs)
    assert figs["accuracy"] == 5 / 6
    assert np.isclose(figs["balanced_accuracy"], (1 + 0.5 + 1 + 1) / 4)
    assert figs["per_class"]["VeryMildDemented"]["recall"] == 0.5
    assert figs["confusion"][1] == [1, 1, 0, 0]


def test_ece_of_calibrated_and_overconfident_predictions():
    y = np.array([0] * 10)
    confident_right = np.tile([0.9, 0.1 / 3, 0.1 / 3, 0.1 / 3], (10, 1))
    ece, bins = expected_calibration_error(confident_right, y)
    assert np.isclose(ece, 0.1)             # 100% accurate at 90% confidence
    wrong = np.tile([0.05, 0.95, 0.0, 0.0], (10, 1))
    assert np.isclose(expected_calibration_error(wrong, y)[0], 0.95)
    assert sum(bins["bin_count"]) == 10


def test_subject_bootstrap_and_soft_vote():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1, 0, 0], [0.4, 0.6, 0, 0], [0.2, 0.8, 0, 0], [0.3, 0.7, 0, 0]])
    subjects = ["a", "a", "b", "b"]
    assert subject_accuracy(y, probs, subjects) == 1.0     # subject a: mean p0 = 0.65
    assert subject_accuracy(y, probs, [None] * 4) is None
    ci, method = bootstrap_ci(y, probs, subjects, n_resamples=200)
    assert method == "subject bootstrap"
    assert ci["accuracy"][0] <= 0.75 <= ci["accuracy"][1]
    assert bootstrap_ci(y, probs, [None] * 4, n_resamples=10)[1] == "slice bootstrap"
    assert not_estimable(y, subjects) == ["NonDemented", "VeryMildDemented", "MildDemented", "ModerateDemented"]
