"""Explanations stage: Grad-CAM over the split, Integrated Gradients on a sample, the gallery's maps.

Every method explains the predicted class at the audited layer; the gallery adds Grad-CAM++ and IG on a
few correct and misclassified slices per class for the reviewer to look at.
"""
from __future__ import annotations

import numpy as np

from audit.sampling import GALLERY_SALT
from model.classes import CLASSES
from model.errors import ParameterError


# The explainer the gate audits. "edge" and "centre" are reference explainers that ignore the model (a
# Sobel edge map, a centre prior): a gate with teeth must FAIL them, which is how its bank calibrates it.
EXPLAINERS = ("gradcam", "gradcam++", "edge", "centre")


def audited_maps(run, model, x: np.ndarray, targets) -> np.ndarray:
    """Maps of the audited explainer (``run.config.explainer``) at the audited layer, for ``model``."""
    from audit.explain import gradcam, gradcam_plus_plus
    from audit.quality.controls import centre_prior_maps, edge_maps

    name = run.config.explainer
    if name == "edge":
        return edge_maps(x)
    if name == "centre":
        return centre_prior_maps(np.asarray(x).shape[:3])
    if name not in ("gradcam", "gradcam++"):
        raise ParameterError("explainer", f"unknown explainer '{name}' (choose {', '.join(EXPLAINERS)})")
    method = gradcam if name == "gradcam" else gradcam_plus_plus
    return method(model, x, targets, layer=run.layer, batch_size=run.config.batch_size,
                  strategy=run.strategy if model is run.model else None)


def gradcam_maps(run) -> np.ndarray:
    """Grad-CAM of the predicted class for ``run.gradcam_indices`` (all images by default)."""
    idx = run.gradcam_indices
    return run.gradcam(run.inputs[idx], run.model_targets[idx])


def ig_settings(run) -> dict:
    """The ``integrated_gradients`` options of every IG the audit computes (the IG stage, the gallery)."""
    config = run.config
    return dict(steps=config.ig_steps, tolerance=config.ig_tolerance or None,
                min_steps=min(config.ig_min_steps, config.ig_steps), max_steps=config.ig_steps,
                scheme=config.ig_scheme, panels=config.ig_panels, batch_size=max(config.batch_size, 64),
                strategy=run.strategy)


def integrated_gradients(run):
    """Adaptive IG of the predicted class's logit on ``run.ig_indices`` (an ``IGResult``)."""
    from audit.explain import integrated_gradients as ig

    idx = run.ig_indices
    return ig(run.model, run.inputs[idx], run.model_targets[idx], **run.ig_settings)


def gallery(run) -> list[dict]:
    """Per class, up to k correct and k misclassified slices with their Grad-CAM, Grad-CAM++ and IG maps.

    Returns plain items with the arrays; ``audit.writer`` turns them into overlay images."""
    from audit.explain import gradcam_plus_plus
    from audit.explain import integrated_gradients as ig

    k = run.config.gallery_per_class
    if k <= 0:
        return []
    rng = np.random.default_rng(run.config.seed + GALLERY_SALT)
    chosen: list[tuple[int, bool]] = []
    for c in range(len(CLASSES)):
        for correct in (True, False):
            pool = np.flatnonzero((run.labels == c) & ((run.predicted == c) == correct))
            chosen += [(int(i), correct) for i in rng.permutation(pool)[:k]]
    if not chosen:
        return []
    idx = np.array([i for i, _ in chosen])
    x, targets = run.inputs[idx], run.model_targets[idx]
    cam = run.gradcam_for(idx)
    campp = gradcam_plus_plus(run.model, x, targets, layer=run.layer, batch_size=run.config.batch_size,
                              strategy=run.strategy)
    ig_maps = ig(run.model, x, targets, **run.ig_settings).heatmaps
    return [{"index": i, "correct": correct, "true": CLASSES[run.labels[i]], "predicted": CLASSES[run.predicted[i]],
             "probability": float(run.probs[i, run.predicted[i]]), "path": str(run.split.samples[i].path),
             "image": run.images[i], "gradcam": cam[row], "gradcam_pp": campp[row], "ig": ig_maps[row]}
            for row, (i, correct) in enumerate(chosen)]


def heatmap_sample(run) -> dict:
    """A compact, fixed sample (first N images by path) of probabilities and Grad-CAM maps at 32x32,
    for comparing audits across TensorFlow versions (``alzaudit drift``)."""
    import cv2

    order = np.argsort([str(s.path) for s in run.split.samples])[: run.config.heatmap_sample]
    maps = run.gradcam_for(order)
    small = np.stack([cv2.resize(m, (32, 32), interpolation=cv2.INTER_AREA) for m in maps]).astype(np.float16)
    from pathlib import Path

    return {"paths": np.array([Path(run.split.samples[i].path).name for i in order]),
            "probs": run.probs[order].astype(np.float32), "maps": small}
