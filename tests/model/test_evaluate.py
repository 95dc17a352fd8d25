"""Evaluation figures against hand-computed values."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

from audit.schema_io import validate_audit
from fixtures.make_audit_fixture import make_audit
from model.classes import CLASSES
from model.evaluate import (Predictions, bootstrap_ci, classification_figures,
                            evaluate_predictions, expected_calibration_error, not_estimable, subject_accuracy)
from model.manifest import Manifest, Sample
from model.splits import split_manifest

CI_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


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


# ---- absent stages, tiny splits: findings, not crashes ---------------------------------------------------------

def _predictions(labels: list[int], subjects_per_class: int = 6, slices: int = 2, seed: int = 0) -> Predictions:
    """Predictions over the given stages only, ``subjects_per_class`` subjects each, mostly right."""
    rng = np.random.default_rng(seed)
    y, subjects = [], []
    for label in labels:
        for s in range(subjects_per_class):
            y += [label] * slices
            subjects += [f"{CLASSES[label][:3]}{s}"] * slices
    y = np.array(y)
    probs = rng.dirichlet(np.ones(4), len(y))
    probs[np.arange(len(y)), y] += 1.0 * (rng.random(len(y)) < 0.7)
    probs /= probs.sum(axis=1, keepdims=True)
    return Predictions(paths=[f"x{i}.png" for i in range(len(y))], subjects=subjects, y_true=y, probs=probs)


def _assert_schema_valid(performance: dict, folder) -> dict:
    """The block is strict JSON (no NaN) and valid as audit.json's figures.performance."""
    block = json.loads(json.dumps(performance, allow_nan=False))
    audit = make_audit(folder, image_size=(20, 16), per_class=1)
    audit["figures"]["performance"] = block
    validate_audit(audit, source="test audit.json")
    return block


@pytest.mark.parametrize("present", [[0, 1, 2], [0, 1]], ids=["one stage absent", "two stages absent"])
def test_split_without_a_stage_is_schema_valid(tmp_path, present):
    pred = _predictions(present)
    out = evaluate_predictions(pred, n_resamples=50)
    block = _assert_schema_valid(out, tmp_path)
    absent = [c for i, c in enumerate(CLASSES) if i not in present]
    assert out["absent"] == absent
    for c in absent:
        row = block["per_class"][c]
        assert row["precision"] is row["recall"] is row["f1"] is None and row["support"] == 0
        assert row["estimable"] is False and row["reason"] == f"no {c} images in the evaluated split"
        assert block["roc"][c] == {"fpr": None, "tpr": None, "auc": None, "estimable": False,
                                   "reason": f"no {c} images in the evaluated split"}
        assert sum(block["confusion"][CLASSES.index(c)]) == 0
        assert c in block["not_estimable"]
    for i in present:  # the stages present keep every figure
        assert block["roc"][CLASSES[i]]["estimable"] is True and 0 <= block["roc"][CLASSES[i]]["auc"] <= 1
        assert block["per_class"][CLASSES[i]]["estimable"] is True
    # Macro figures average over the stages present, exactly as scikit-learn does with labels=present.
    assert np.isclose(out["macro_f1"], f1_score(pred.y_true, pred.y_pred, labels=present, average="macro"))
    assert np.isclose(out["balanced_accuracy"], np.mean([block["per_class"][CLASSES[i]]["recall"] for i in present]))
    assert block["ci"]["estimable"] is True and all(len(block["ci"][k]) == 2 for k in CI_METRICS)


def test_small_oasis_export_loses_its_moderate_stage_to_train(tmp_path):
    """27 subjects, 2 ModerateDemented: the subject split puts both in train, the test split lacks the stage."""
    per_stage = {"NonDemented": 10, "VeryMildDemented": 9, "MildDemented": 6, "ModerateDemented": 2}
    samples, n = [], 0
    for label, count in per_stage.items():
        for _ in range(count):
            n += 1
            samples += [Sample(path=Path(f"/oasis/{label}/OAS1_{n:04d}_MR1_{k}.jpg"), label=label,
                               subject_id=f"OAS1_{n:04d}") for k in range(3)]
    split, _ = split_manifest(Manifest(root=Path("/oasis"), samples=samples), seed=0)
    test = split.split("test")
    assert "ModerateDemented" not in {s.label for s in test}
    y = np.array(test.label_indices())
    probs = np.random.default_rng(1).dirichlet(np.ones(4), len(y))
    out = evaluate_predictions(Predictions(paths=[str(s.path) for s in test], subjects=[s.subject_id for s in test],
                                           y_true=y, probs=probs), n_resamples=50)
    block = _assert_schema_valid(out, tmp_path)
    assert block["roc"]["ModerateDemented"]["estimable"] is False and block["absent"] == ["ModerateDemented"]


def test_ci_from_one_subject_or_none_is_not_estimable(tmp_path):
    one = _predictions([0, 2], subjects_per_class=1, slices=4)
    one = Predictions(paths=one.paths, subjects=["S1"] * len(one.y_true), y_true=one.y_true, probs=one.probs)
    ci, method = bootstrap_ci(one.y_true, one.probs, one.subjects, n_resamples=20)
    assert method == "subject bootstrap" and ci["estimable"] is False
    assert all(ci[k] is None for k in CI_METRICS) and "1 subject in the evaluated split" in ci["reason"]
    single_image = bootstrap_ci(one.y_true[:1], one.probs[:1], [None], n_resamples=20)[0]
    assert single_image["estimable"] is False and "1 image" in single_image["reason"]
    block = _assert_schema_valid(evaluate_predictions(one, n_resamples=20), tmp_path / "one")
    assert block["accuracy"] is not None and block["ci"]["accuracy"] is None

    empty = Predictions(paths=[], subjects=[], y_true=np.zeros(0, dtype=int), probs=np.zeros((0, 4)))
    block = _assert_schema_valid(evaluate_predictions(empty, n_resamples=20), tmp_path / "empty")
    assert block["accuracy"] is None and block["ece"] is None and block["ci"]["estimable"] is False
    assert block["reliability"]["estimable"] is False and block["absent"] == list(CLASSES)


def test_empty_calibration_bins_are_null_with_a_zero_count(tmp_path):
    y = np.array([0, 1, 0, 1])
    probs = np.array([[0.9, 0.1, 0, 0], [0.2, 0.8, 0, 0], [0.95, 0.05, 0, 0], [0.1, 0.9, 0, 0]])
    _, bins = expected_calibration_error(probs, y)
    empty = [i for i, n in enumerate(bins["bin_count"]) if n == 0]
    assert empty and all(bins["bin_confidence"][i] is None and bins["bin_accuracy"][i] is None for i in empty)
    assert bins["estimable"] is True


def test_terminal_report_prints_absent_stages_plainly():
    from rich.console import Console

    from model.evaluate_run import print_report

    metrics = evaluate_predictions(_predictions([0, 1], subjects_per_class=1), n_resamples=20)
    metrics["ci"] = bootstrap_ci(np.zeros(2, dtype=int), np.eye(4)[[0, 0]], ["a", "a"], n_resamples=5)[0]
    console = Console(file=io.StringIO(), width=200, color_system=None)
    print_report(metrics, console)
    text = console.file.getvalue()
    assert "None" not in text and "nan" not in text
    assert "no MildDemented images in the evaluated split" in text and "CI not estimable" in text


def _bootstrap_with_sklearn(y_true, probs, subjects, n_resamples, seed):
    """The reference: one scikit-learn call per resample and figure (what bootstrap_ci computed before)."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score, f1_score

    rng = np.random.default_rng(seed)
    y_pred = probs.argmax(axis=1)
    groups: dict = {}
    for i, s in enumerate(subjects):
        groups.setdefault(s, []).append(i)
    clusters = [np.array(v) for v in groups.values()]
    stats: dict = {"accuracy": [], "balanced_accuracy": [], "macro_f1": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(n_resamples):
            idx = np.concatenate([clusters[p] for p in rng.integers(0, len(clusters), len(clusters))])
            yt, yp = y_true[idx], y_pred[idx]
            stats["accuracy"].append(float(np.mean(yt == yp)))
            stats["balanced_accuracy"].append(float(balanced_accuracy_score(yt, yp)))
            stats["macro_f1"].append(float(f1_score(yt, yp, labels=np.unique(yt), average="macro", zero_division=0)))
    alpha = (1 - 0.95) / 2  # as bootstrap_ci computes it
    return {k: [float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))] for k, v in stats.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bootstrap_ci_matches_scikit_learn(seed):
    """The confusion-count bootstrap gives scikit-learn's figures on every resample: classes missing from
    some resamples, a class never predicted, a class predicted but never true."""
    rng = np.random.default_rng(seed)
    n = 90
    subjects = [f"s{i // 3}" for i in range(n)]  # 30 subjects of 3 slices
    y = rng.choice([0, 1, 3], size=n, p=[0.5, 0.4, 0.1])  # class 2 never true
    probs = rng.dirichlet(np.ones(4), size=n)
    probs[y == 0, 0] += 0.6 * (rng.random((y == 0).sum()) < 0.7)  # mostly right on class 0
    ci, _ = bootstrap_ci(y, probs, subjects, n_resamples=300, seed=seed)
    reference = _bootstrap_with_sklearn(y, probs, subjects, 300, seed)
    for key, (lo, hi) in reference.items():
        assert ci[key] == [lo, hi], key
