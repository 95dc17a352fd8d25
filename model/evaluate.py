"""Honest evaluation: per-class figures, calibration, and confidence intervals that resample subjects.

Slices of one subject are not independent, so bootstrapping slices understates the uncertainty; when
subject IDs are known we resample subjects (with all their slices) and say so. A class with fewer than
five test subjects gets no per-class verdict: its figures are flagged as not estimable.

"Not estimable" has one JSON shape everywhere (see docs/audit_json.md): the figure that cannot be
computed is ``None`` (never NaN, never a made-up 0) and the object that holds it carries
``"estimable": False`` and ``"reason": "<one line>"``. Data whose evaluated split lacks a stage (a small
OASIS export whose two ModerateDemented subjects all land in train) is a finding, not a crash.
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


def predict(model, images: np.ndarray, *, batch_size: int = 64, strategy=None) -> np.ndarray:
    """Batched inference through one compiled function (``model.predict`` carries overhead).

    ``strategy`` (a ``tf.distribute.Strategy``, ``model/distribute.py``) splits each batch across its
    replicas, ``batch_size`` images per replica, rows back in order; ``None`` runs on one device as before.
    """
    import tensorflow as tf

    fn = _compiled_forward(model)
    if strategy is not None:
        from model.distribute import distributed, global_batch

        twin = distributed(fn, fn, strategy, 1)
        step = global_batch(batch_size, strategy)
        out = [twin(np.asarray(images[i:i + step], np.float32))[0].numpy() for i in range(0, len(images), step)]
        return np.concatenate(out, axis=0).astype(np.float64) if out else np.zeros((0, model.output_shape[-1]))
    out = [fn(tf.constant(images[i:i + batch_size])).numpy() for i in range(0, len(images), batch_size)]
    return np.concatenate(out, axis=0).astype(np.float64) if out else np.zeros((0, model.output_shape[-1]))


_FORWARD_CACHE: dict = {}


class _Forward:
    """``model(x)`` in inference mode as float32. A callable object, not a lambda: TensorFlow counts
    retracing per Python code object, so one lambda shared by every model's ``tf.function`` made several
    models in one process (a notebook, the randomization cascade) look like excessive retracing."""

    def __init__(self, model):
        self.model = model

    def __call__(self, x):
        import tensorflow as tf

        return tf.cast(self.model(x, training=False), tf.float32)


def _compiled_forward(model):
    import tensorflow as tf

    key = id(model)
    if key not in _FORWARD_CACHE or _FORWARD_CACHE[key][0] is not model:
        _FORWARD_CACHE[key] = (model, tf.function(_Forward(model), reduce_retracing=True))
    return _FORWARD_CACHE[key][1]


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray,
                               n_bins: int = ECE_BINS) -> tuple[float | None, dict]:
    """ECE (Guo et al. 2017): |accuracy − confidence| averaged over equal-width confidence bins.

    Empty bins have ``None`` confidence and accuracy (their ``bin_count`` of 0 says why); with no images
    at all the ECE is ``None`` and the diagram is marked not estimable.
    """
    if len(y_true) == 0:
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        return None, {"bin_confidence": [None] * n_bins, "bin_accuracy": [None] * n_bins,
                      "bin_count": [0] * n_bins, "edges": edges.tolist(),
                      **_not_estimable("no images in the evaluated split")}
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
                 "bin_count": count.tolist(), "edges": edges.tolist(), "estimable": True}


def classification_figures(y_true: np.ndarray, probs: np.ndarray) -> dict:
    """Accuracy, macro figures over the classes present, per-class figures and the confusion matrix.

    Counted from the confusion matrix, so an empty split or an absent class cannot raise: an absent
    class's precision, recall and F1 are None with the reason, the macro figures average over the
    classes present. A present class that is never predicted has precision 0 (scikit-learn's
    ``zero_division=0``), so it still counts against the model.
    """
    k = len(CLASSES)
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(probs).argmax(axis=1) if len(y_true) else np.zeros(0, dtype=int)
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (y_true, y_pred), 1)
    tp = np.diag(confusion).astype(float)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    fp, fn = predicted - tp, support - tp
    present = support > 0
    per_class = {}
    for i, c in enumerate(CLASSES):
        if not present[i]:
            per_class[c] = {"precision": None, "recall": None, "f1": None, "support": 0,
                            **_not_estimable(absent_reason(c))}
            continue
        per_class[c] = {"precision": float(tp[i] / predicted[i]) if predicted[i] else 0.0,
                        "recall": float(tp[i] / support[i]),
                        "f1": float(2 * tp[i] / (2 * tp[i] + fp[i] + fn[i])), "support": int(support[i])}
    recalls = [per_class[c]["recall"] for i, c in enumerate(CLASSES) if present[i]]
    f1s = [per_class[c]["f1"] for i, c in enumerate(CLASSES) if present[i]]
    return {
        "accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else None,
        # Balanced accuracy and macro-F1 over the classes present (an absent class would count as 0).
        "balanced_accuracy": float(np.mean(recalls)) if recalls else None,
        "macro_f1": float(np.mean(f1s)) if f1s else None,
        "per_class": per_class,
        # Rows of absent classes are all zeros: a count of 0 is exact, only its row-normalisation is undefined.
        "confusion": confusion.tolist(),
    }


def roc_curves(y_true: np.ndarray, probs: np.ndarray, max_points: int = 200) -> dict:
    """One-vs-rest ROC per class; a class without positives or without negatives is not estimable."""
    from sklearn.metrics import roc_auc_score, roc_curve

    out = {}
    for i, c in enumerate(CLASSES):
        positives = y_true == i
        if positives.all() or not positives.any():
            reason = (absent_reason(c) if not positives.any()
                      else f"every image of the evaluated split is {c}, so there are no negatives")
            out[c] = {"fpr": None, "tpr": None, "auc": None, **_not_estimable(reason)}
            continue
        fpr, tpr, _ = roc_curve(positives, probs[:, i])
        if len(fpr) > max_points:
            keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).astype(int))
            fpr, tpr = fpr[keep], tpr[keep]
        out[c] = {"fpr": fpr.round(4).tolist(), "tpr": tpr.round(4).tolist(),
                  "auc": float(roc_auc_score(positives, probs[:, i])), "estimable": True}
    return out


CI_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


def bootstrap_ci(y_true: np.ndarray, probs: np.ndarray, subjects: list[str | None], *, n_resamples: int = 1000,
                 seed: int = 0, level: float = 0.95) -> tuple[dict, str]:
    """Percentile bootstrap CIs of accuracy, balanced accuracy and macro-F1.

    Resamples subjects (cluster bootstrap) when every sample has a subject ID, else slices. With fewer
    than two subjects (or slices) every resample is the same data: the intervals are None, not [x, x].
    """
    rng = np.random.default_rng(seed)
    y_pred = probs.argmax(axis=1) if len(y_true) else np.zeros(0, dtype=int)
    by_subject = all(subjects)
    if by_subject:
        groups = {}
        for i, s in enumerate(subjects):
            groups.setdefault(s, []).append(i)
        clusters = [np.array(v) for v in groups.values()]
    else:
        clusters = [np.array([i]) for i in range(len(y_true))]
    method = "subject bootstrap" if by_subject else "slice bootstrap"
    if len(clusters) < 2:
        unit = "subject" if by_subject else "image"
        reason = (f"{len(clusters)} {unit}{'' if len(clusters) == 1 else 's'} in the evaluated split; "
                  "a bootstrap interval needs at least 2")
        return {**{k: None for k in CI_METRICS}, **_not_estimable(reason)}, method
    n_classes = int(max(probs.shape[1], y_true.max() + 1, y_pred.max() + 1))
    stats = _resampled_figures(np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64), clusters, n_resamples,
                               rng, n_classes)
    alpha = (1 - level) / 2  # percentile interval
    ci: dict = {k: [float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))] for k, v in stats.items()}
    ci["estimable"] = True
    return ci, method


def _resampled_figures(y_true: np.ndarray, y_pred: np.ndarray, clusters: list[np.ndarray], n_resamples: int,
                       rng: np.random.Generator, n_classes: int) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy and macro-F1 of every cluster resample, from confusion counts.

    Each cluster's confusion matrix is counted once; a resample's matrix is the sum over the clusters it
    drew (a matrix product over all resamples), so 1,000 resamples cost one product instead of 2,000
    scikit-learn calls. Same definitions as scikit-learn (tested against it): balanced accuracy = mean
    recall over the classes present in the resample's truth; macro-F1 = mean 2 TP / (2 TP + FP + FN)
    over those classes (``labels=np.unique(y_true)``, ``zero_division=0``).
    """
    k = n_classes
    per_cluster = np.stack([np.bincount(y_true[c] * k + y_pred[c], minlength=k * k) for c in clusters])
    draws = np.zeros((n_resamples, len(clusters)))
    for r in range(n_resamples):  # one call per resample: the same random stream as the gate always drew
        draws[r] = np.bincount(rng.integers(0, len(clusters), len(clusters)), minlength=len(clusters))
    confusion = (draws @ per_cluster).reshape(n_resamples, k, k)
    tp = np.diagonal(confusion, axis1=1, axis2=2)
    support, predicted = confusion.sum(axis=2), confusion.sum(axis=1)
    present = support > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(present, tp / np.where(present, support, 1), 0.0)
        f1 = np.where(present, 2 * tp / np.where(present, support + predicted, 1), 0.0)
    n_present = present.sum(axis=1)
    return {"accuracy": tp.sum(axis=1) / confusion.sum(axis=(1, 2)),
            "balanced_accuracy": recall.sum(axis=1) / n_present,
            "macro_f1": f1.sum(axis=1) / n_present}


def subject_accuracy(y_true: np.ndarray, probs: np.ndarray, subjects: list[str | None]) -> float | None:
    """Accuracy after soft-voting (mean probability) the slices of each subject; None without IDs."""
    if not subjects or not all(subjects):
        return None
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(subjects):
        groups.setdefault(s, []).append(i)
    hits = [int(np.argmax(probs[idx].mean(axis=0)) == np.bincount(y_true[idx]).argmax()) for idx in groups.values()]
    return float(np.mean(hits))


def absent_reason(name: str) -> str:
    return f"no {name} images in the evaluated split"


def class_reasons(y_true: np.ndarray, subjects: list[str | None]) -> dict[str, str | None]:
    """Why each class's per-class figures get no verdict (None where they do): the class is absent, or
    it has fewer than MIN_SUBJECTS_PER_CLASS test subjects (slices when IDs are unknown)."""
    by_subject = bool(subjects) and all(subjects)
    out: dict[str, str | None] = {}
    for i, c in enumerate(CLASSES):
        idx = np.flatnonzero(y_true == i)
        units = {subjects[j] for j in idx} if by_subject else set(idx.tolist())
        if not units:
            out[c] = absent_reason(c)
        elif len(units) < MIN_SUBJECTS_PER_CLASS:
            unit = "subject" if by_subject else "image"
            out[c] = (f"only {len(units)} {c} {unit}{'' if len(units) == 1 else 's'} in the evaluated split, "
                      f"fewer than {MIN_SUBJECTS_PER_CLASS}")
        else:
            out[c] = None
    return out


def not_estimable(y_true: np.ndarray, subjects: list[str | None]) -> list[str]:
    """Classes with fewer than MIN_SUBJECTS_PER_CLASS test subjects (slices when IDs are unknown)."""
    return [c for c, reason in class_reasons(y_true, subjects).items() if reason]


def evaluate_predictions(pred: Predictions, *, n_resamples: int = 1000, seed: int = 0) -> dict:
    """Every figure of ``metrics.json`` (and of audit.json's ``figures.performance``).

    Never raises on a split that lacks stages, holds one subject or is empty: what cannot be estimated
    is None beside ``"estimable": False`` and its ``"reason"``.
    """
    figures = classification_figures(pred.y_true, pred.probs)
    ece, reliability = expected_calibration_error(pred.probs, pred.y_true)
    ci, method = bootstrap_ci(pred.y_true, pred.probs, pred.subjects, n_resamples=n_resamples, seed=seed)
    reasons = class_reasons(pred.y_true, pred.subjects)
    for c, reason in reasons.items():
        row = figures["per_class"][c]
        row.pop("reason", None)
        row.update({"estimable": True} if reason is None else _not_estimable(reason))
    figures.update({
        "ece": ece, "reliability": reliability, "roc": roc_curves(pred.y_true, pred.probs),
        "ci": ci, "ci_method": method, "ci_resamples": n_resamples, "n_resamples": n_resamples, "ci_level": 0.95,
        "subject_accuracy": subject_accuracy(pred.y_true, pred.probs, pred.subjects),
        "not_estimable": [c for c, reason in reasons.items() if reason],
        "absent": [c for c in CLASSES if figures["per_class"][c]["support"] == 0],
        "n_images": int(len(pred.y_true)),
        "n_subjects": len({s for s in pred.subjects if s}) or None,
    })
    return figures


def _not_estimable(reason: str) -> dict:
    """The one shape of "not estimable": set beside the None values it explains."""
    return {"estimable": False, "reason": reason}


def _nan_to_none(values: np.ndarray) -> list:
    return [None if not np.isfinite(v) else float(v) for v in values]
