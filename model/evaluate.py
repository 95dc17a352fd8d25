"""Honest evaluation: per-class figures, calibration, and confidence intervals that resample subjects.

Slices of one subject are not independent, so bootstrapping slices understates the uncertainty; when
subject IDs are known we resample subjects (with all their slices) and say so. A class with fewer than
five test subjects gets no per-class verdict: its figures are flagged as not estimable.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.classes import CLASSES

MIN_SUBJECTS_PER_CLASS = 5
ECE_BINS = 15


@dataclass
class Predictions:
    paths: list[str]
    subjects: list[str | None]
    y_true: np.ndarray          # (N,) canonical indices
    probs: np.ndarray           # (N, 4) canonical order

    @property
    def y_pred(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


def predict(model, images: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """Batched inference through one compiled function (``model.predict`` carries overhead)."""
    import tensorflow as tf

    fn = _compiled_forward(model)
    out = [fn(tf.constant(images[i:i + batch_size])).numpy() for i in range(0, len(images), batch_size)]
    return np.concatenate(out, axis=0).astype(np.float64) if out else np.zeros((0, model.output_shape[-1]))


_FORWARD_CACHE: dict = {}


def _compiled_forward(model):
    import tensorflow as tf

    key = id(model)
    if key not in _FORWARD_CACHE or _FORWARD_CACHE[key][0] is not model:
        fn = tf.function(lambda x: tf.cast(model(x, training=False), tf.float32), reduce_retracing=True)
        _FORWARD_CACHE[key] = (model, fn)
    return _FORWARD_CACHE[key][1]


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, n_bins: int = ECE_BINS) -> tuple[float, dict]:
    """ECE (Guo et al. 2017): |accuracy − confidence| averaged over equal-width confidence bins."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    conf_sum = np.bincount(which, weights=confidence, minlength=n_bins)
    acc_sum = np.bincount(which, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        bin_conf = np.where(count > 0, conf_sum / np.maximum(count, 1), np.nan)
        bin_acc = np.where(count > 0, acc_sum / np.maximum(count, 1), np.nan)
    ece = float(np.sum(np.abs(acc_sum - conf_sum)) / max(len(y_true), 1))
    return ece, {"bin_confidence": _nan_to_none(bin_conf), "bin_accuracy": _nan_to_none(bin_acc),
                 "bin_count": count.tolist(), "edges": edges.tolist()}


def classification_figures(y_true: np.ndarray, probs: np.ndarray) -> dict:
    from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score,
                                 precision_recall_fscore_support)

    y_pred = probs.argmax(axis=1)
    labels = list(range(len(CLASSES)))
    present = sorted(set(y_true.tolist()))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)) if present else None,
        # Macro-F1 over the classes present in the test split (absent classes would count as 0).
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "per_class": {c: {"precision": float(precision[i]), "recall": float(recall[i]) if support[i] else None,
                          "f1": float(f1[i]), "support": int(support[i])} for i, c in enumerate(CLASSES)},
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def roc_curves(y_true: np.ndarray, probs: np.ndarray, max_points: int = 200) -> dict:
    """One-vs-rest ROC per class present with both positives and negatives."""
    from sklearn.metrics import roc_auc_score, roc_curve

    out = {}
    for i, c in enumerate(CLASSES):
        positives = y_true == i
        if positives.all() or not positives.any():
            out[c] = None
            continue
        fpr, tpr, _ = roc_curve(positives, probs[:, i])
        if len(fpr) > max_points:
            keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).astype(int))
            fpr, tpr = fpr[keep], tpr[keep]
        out[c] = {"fpr": fpr.round(4).tolist(), "tpr": tpr.round(4).tolist(),
                  "auc": float(roc_auc_score(positives, probs[:, i]))}
    return out


def bootstrap_ci(y_true: np.ndarray, probs: np.ndarray, subjects: list[str | None], *, n_resamples: int = 1000,
                 seed: int = 0, level: float = 0.95) -> tuple[dict, str]:
    """Percentile bootstrap CIs of accuracy, balanced accuracy and macro-F1.

    Resamples subjects (cluster bootstrap) when every sample has a subject ID, else slices.
    """
    from sklearn.metrics import balanced_accuracy_score, f1_score

    rng = np.random.default_rng(seed)
    y_pred = probs.argmax(axis=1)
    by_subject = all(subjects)
    if by_subject:
        groups = {}
        for i, s in enumerate(subjects):
            groups.setdefault(s, []).append(i)
        clusters = [np.array(v) for v in groups.values()]
    else:
        clusters = [np.array([i]) for i in range(len(y_true))]
    stats = {"accuracy": [], "balanced_accuracy": [], "macro_f1": []}
    import warnings

    warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
    warnings.filterwarnings("ignore", message="A single label was found")
    for _ in range(n_resamples):
        picks = rng.integers(0, len(clusters), len(clusters))
        idx = np.concatenate([clusters[p] for p in picks])
        yt, yp = y_true[idx], y_pred[idx]
        stats["accuracy"].append(float(np.mean(yt == yp)))
        stats["balanced_accuracy"].append(float(balanced_accuracy_score(yt, yp)))
        stats["macro_f1"].append(float(f1_score(yt, yp, labels=np.unique(yt), average="macro", zero_division=0)))
    alpha = (1 - level) / 2  # percentile interval
    ci = {k: [float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))] for k, v in stats.items()}
    return ci, ("subject bootstrap" if by_subject else "slice bootstrap")


def subject_accuracy(y_true: np.ndarray, probs: np.ndarray, subjects: list[str | None]) -> float | None:
    """Accuracy after soft-voting (mean probability) the slices of each subject; None without IDs."""
    if not subjects or not all(subjects):
        return None
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(subjects):
        groups.setdefault(s, []).append(i)
    hits = [int(np.argmax(probs[idx].mean(axis=0)) == np.bincount(y_true[idx]).argmax()) for idx in groups.values()]
    return float(np.mean(hits))


def not_estimable(y_true: np.ndarray, subjects: list[str | None]) -> list[str]:
    """Classes with fewer than MIN_SUBJECTS_PER_CLASS test subjects (slices when IDs are unknown)."""
    out = []
    for i, c in enumerate(CLASSES):
        idx = np.flatnonzero(y_true == i)
        units = {subjects[j] for j in idx} if subjects and all(subjects) else set(idx.tolist())
        if len(units) < MIN_SUBJECTS_PER_CLASS:
            out.append(c)
    return out


def evaluate_predictions(pred: Predictions, *, n_resamples: int = 1000, seed: int = 0) -> dict:
    """Every figure of ``metrics.json``."""
    figures = classification_figures(pred.y_true, pred.probs)
    ece, reliability = expected_calibration_error(pred.probs, pred.y_true)
    ci, method = bootstrap_ci(pred.y_true, pred.probs, pred.subjects, n_resamples=n_resamples, seed=seed)
    flagged = not_estimable(pred.y_true, pred.subjects)
    for c in CLASSES:
        figures["per_class"][c]["estimable"] = c not in flagged
    figures.update({
        "ece": ece, "reliability": reliability, "roc": roc_curves(pred.y_true, pred.probs),
        "ci": ci, "ci_method": method, "ci_resamples": n_resamples, "ci_level": 0.95,
        "subject_accuracy": subject_accuracy(pred.y_true, pred.probs, pred.subjects),
        "not_estimable": flagged, "n_images": int(len(pred.y_true)),
        "n_subjects": len({s for s in pred.subjects if s}) or None,
    })
    return figures


def _nan_to_none(values: np.ndarray) -> list:
    return [None if not np.isfinite(v) else float(v) for v in values]
