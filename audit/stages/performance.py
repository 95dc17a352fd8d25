"""Performance stage: canonical-order probabilities and the classification figures with subject CIs."""
from __future__ import annotations

import numpy as np


def probabilities(run) -> np.ndarray:
    """Canonical-order probabilities ``(N, 4)`` of every evaluated image."""
    from model.evaluate import predict

    return predict(run.model, run.inputs, batch_size=run.config.batch_size,
                   strategy=run.strategy)[:, run.contract.to_canonical]


def performance(run) -> dict:
    """Accuracy, balanced accuracy, macro F1, per-class recall, ECE, confusion, subject-bootstrap CIs."""
    from model.evaluate import Predictions, evaluate_predictions

    pred = Predictions(paths=[str(s.path) for s in run.split.samples],
                       subjects=[s.subject_id for s in run.split.samples], y_true=run.labels, probs=run.probs)
    return evaluate_predictions(pred, seed=run.config.seed)
