"""Explanations stage: Grad-CAM over the split, Integrated Gradients on a sample, the gallery's maps.

Every method explains the predicted class at the audited layer; the gallery adds Grad-CAM++ and IG on a
few correct and misclassified slices per class for the reviewer to look at.
"""
from __future__ import annotations

import numpy as np

from audit.explain.gradcam import METHODS as CAM_METHODS
from audit.sampling import GALLERY_SALT, IG_SALT, sample
from model.classes import CLASSES
from model.errors import ParameterError


# The explainer the gate audits. "edge" and "centre" are reference explainers that ignore the model (a
# Sobel edge map, a centre prior): a gate with teeth must FAIL them, which is how its bank calibrates it.
EXPLAINERS = (*CAM_METHODS, "edge", "centre")


def audited_maps(run, model, x: np.ndarray, targets) -> np.ndarray:
    """Maps of the audited explainer (``run.config.explainer``) at the audited layer, for ``model``."""
    from audit.explain import gradcam, gradcam_plus_plus
    from audit.quality.controls import centre_prior_maps, edge_maps

    name = run.config.explainer
    if name == "edge":
        return edge_maps(x)
    if name == "centre":
        return centre_prior_maps(np.asarray(x).shape[:3])
    if name not in CAM_METHODS:
        raise ParameterError("explainer", f"unknown explainer '{name}' (choose {', '.join(EXPLAINERS)})")
    method = gradcam if name == "gradcam" else gradcam_plus_plus
    return method(model, x, targets, layer=run.layer, batch_size=run.config.batch_size,
                  strategy=run.strategy if model is run.model else None)


def audited_maps_and_predictions(run, model, x: np.ndarray, targets) -> tuple[np.ndarray, np.ndarray]:
    """``(maps, predicted model-order classes)`` from one pass, for a CAM explainer (``CAM_METHODS``; the
    reference explainers see no model: their predictions need a pass of their own)."""
    from audit.explain.gradcam import maps_and_predictions

    return maps_and_predictions(model, x, targets, method=run.config.explainer, layer=run.layer,
                                batch_size=run.config.batch_size,
                                strategy=run.strategy if model is run.model else None)


def one_pass_predictions(run) -> bool:
    """True when the predictions can come from the Grad-CAM pass: a CAM explainer over every image."""
    return run.config.explainer in CAM_METHODS and len(run.gradcam_indices) == len(run.inputs)


def maps_and_probabilities(run) -> tuple[np.ndarray, np.ndarray]:
    """(maps of the predicted class for every image, canonical-order probabilities) from one pass."""
    from audit.explain.gradcam import maps_and_outputs

    maps, outputs = maps_and_outputs(run.model, run.inputs, None, method=run.config.explainer, layer=run.layer,
                                     batch_size=run.config.batch_size, strategy=run.strategy)
    return maps, outputs[:, run.contract.to_canonical]


def gradcam_maps(run) -> np.ndarray:
    """Grad-CAM of the predicted class for ``run.gradcam_indices`` (all images by default)."""
    idx = run.gradcam_indices
    return run.gradcam(run.inputs[idx], run.model_targets[idx])


def ig_sample(run, config) -> np.ndarray:
    """The images IG explains under ``config``: stratified by stage, spread over subjects."""
    return sample(run.labels, config.ig_images, config.seed, IG_SALT, run.subjects)


def ig_settings(run) -> dict:
    """The ``integrated_gradients`` options of every IG the audit computes (the IG stage, the gallery)."""
    config = run.config
    return dict(steps=config.ig_steps, tolerance=config.ig_tolerance or None,
                min_steps=min(config.ig_min_steps, config.ig_steps), max_steps=config.ig_steps,
                scheme=config.ig_scheme, panels=config.ig_panels, batch_size=max(config.batch_size, 64),
                strategy=run.strategy)


def integrated_gradients(run):
    """Adaptive IG of the predicted class's logit on ``run.ig_indices`` (an ``IGResult``). The images the
    plan already explained to learn IG's cost (``run.ig_probe``) are reused, not computed twice."""
    from audit.explain import integrated_gradients as ig
    from audit.explain.ig import join_results

    idx = np.asarray(run.ig_indices)
    probe = run.ig_probe
    if probe is None or probe[2] != run.ig_settings or not set(probe[0].tolist()) <= set(idx.tolist()):
        return ig(run.model, run.inputs[idx], run.model_targets[idx], **run.ig_settings)
    done, result = probe[0], probe[1]
    rest = idx[~np.isin(idx, done)]
    parts = [result] + ([ig(run.model, run.inputs[rest], run.model_targets[rest], **run.ig_settings)]
                        if len(rest) else [])
    position = {int(j): i for i, j in enumerate(np.concatenate([done, rest]))}
    return join_results(parts, np.array([position[int(j)] for j in idx]))


def gallery_indices(run, config) -> tuple[list[tuple[int, bool]], list[int]]:
    """The gallery's ``(index, correct)`` examples under ``config``, and the indices among them that the IG
    sample does not cover (the gallery computes IG for those only)."""
    k = config.gallery_per_class
    if k <= 0:
        return [], []
    rng = np.random.default_rng(config.seed + GALLERY_SALT)
    explained = {int(j) for j in ig_sample(run, config)}
    chosen: list[tuple[int, bool]] = []
    for c in range(len(CLASSES)):
        for correct in (True, False):
            pool = rng.permutation(np.flatnonzero((run.labels == c) & ((run.predicted == c) == correct)))
            pool = sorted(pool, key=lambda i: int(i) not in explained)  # stable: random within each group
            chosen += [(int(i), correct) for i in pool[:k]]
    return chosen, [i for i, _ in chosen if i not in explained]


def gallery(run) -> list[dict]:
    """Per class, up to k correct and k misclassified slices with their Grad-CAM, Grad-CAM++ and IG maps.

    Examples are drawn first among the images the IG stage already explained (their IG maps are reused;
    IG is the gallery's cost), then from the rest of the split. Returns plain items with the arrays;
    ``audit.writer`` turns them into overlay images."""
    from audit.explain import gradcam_plus_plus
    from audit.explain import integrated_gradients as ig

    chosen, own_ig = gallery_indices(run, run.config)
    if not chosen:
        return []
    idx = np.array([i for i, _ in chosen])
    x, targets = run.inputs[idx], run.model_targets[idx]
    cam = run.gradcam_for(idx)
    campp = gradcam_plus_plus(run.model, x, targets, layer=run.layer, batch_size=run.config.batch_size,
                              strategy=run.strategy)
    ig_maps = np.empty(cam.shape, dtype=np.float32)
    missing = np.isin(idx, own_ig)
    if not missing.all():
        row_of = {int(j): row for row, j in enumerate(run.ig_indices)}
        ig_maps[~missing] = run.ig.heatmaps[[row_of[int(i)] for i in idx[~missing]]]
    if missing.any():
        ig_maps[missing] = ig(run.model, x[missing], targets[missing], **run.ig_settings).heatmaps
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
