"""Faithfulness: deletion and insertion curves (Petsiuk et al. 2018), against a random order.

If a map ranks pixels by how much the model relies on them, removing the top-ranked pixels first should
make the target-class probability fall fast (small deletion AUC) and inserting them first should make it
rise fast (large insertion AUC). The absolute AUCs depend on the model and the baseline, so each image is
also run with a random pixel order in the same pass and the metric is the gain over random.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

from audit.quality.base import CITES, MetricResult, as_images, as_maps, predict_in_batches
from model.errors import AlzAuditError


# numpy 2 renamed trapz to trapezoid; TensorFlow 2.16/2.17 pin numpy < 2.
_trapezoid = getattr(np, "trapezoid", None) or getattr(np, "trapz")

SPREAD_TOLERANCE = 1e-3  # a score spanning less than this (relative) over all curves has not moved


def blurred_baseline(images: np.ndarray, blur_sigma: float | None = None) -> np.ndarray:
    """The 'removed' image: a Gaussian blur over the spatial axes (default σ = max(H, W) / 16 pixels)."""
    sigma = max(images.shape[1:3]) / 16.0 if blur_sigma is None else float(blur_sigma)
    return gaussian_filter(images, sigma=(0, sigma, sigma, 0), mode="nearest").astype(np.float32)


def descending_order(values: np.ndarray, shuffle: np.ndarray) -> np.ndarray:
    """Each row's pixels from the highest value down, ties in ``shuffle``'s order (a permutation per row):
    ``np.lexsort((tie_break, -values))`` with ``shuffle = argsort(tie_break, stable)``, but one stable sort
    per map instead of two, the tie-break's sort being shared by every map of the image."""
    keyed = np.take_along_axis(-values, shuffle, axis=1)
    return np.take_along_axis(shuffle, np.argsort(keyed, axis=1, kind="stable"), axis=1)


def _ranks(order: np.ndarray) -> np.ndarray:
    """rank[i, p] = position of pixel p in row i's order (0 = first removed/inserted)."""
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(order.shape[1]), order.shape), axis=1)
    return ranks


def order_curves(predict_fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray, ranks: np.ndarray,
                 targets: np.ndarray, counts: np.ndarray, base: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """The target's score along deletion and insertion in every order: ``(N, orders, 2, len(counts))``.

    ``ranks[i, o, p]`` is pixel p's position in image i's order o; ``counts`` the numbers of pixels moved at
    each point (first 0, last all). Both ends of every curve are the image itself or its baseline, whatever
    the order: they go through the model once per image, and only the points in between are stacked per
    order and curve, in batches of ``batch_size``.
    """
    x = images
    n, h, w, c = x.shape
    n_orders = ranks.shape[1]
    tgt = np.asarray(targets, dtype=np.int64).reshape(n)
    curves = np.empty((n, n_orders, 2, len(counts)), dtype=np.float64)  # (image, order, deletion/insertion, point)
    inner = counts[1:-1]
    per_image = 2 * n_orders * len(inner) + 2
    chunk = max(1, (8 * batch_size) // per_image)
    for s in range(0, n, chunk):
        xi, bi, ri = x[s:s + chunk], base[s:s + chunk], ranks[s:s + chunk]
        k = len(xi)
        moved = (ri[:, :, None, :] < inner[None, None, :, None]).reshape(k, n_orders, 1, len(inner), h, w, 1)
        xi6, bi6 = xi[:, None, None, None], bi[:, None, None, None]
        # deletion: moved pixels come from the baseline; insertion: moved pixels come from the image.
        stack = np.concatenate([np.where(moved, bi6, xi6), np.where(moved, xi6, bi6)], axis=2)
        probs = predict_in_batches(predict_fn, np.concatenate([stack.reshape((-1, h, w, c)), xi, bi]), batch_size)
        wanted = tgt[s:s + k]
        at_image = probs[-2 * k:-k][np.arange(k), wanted][:, None]
        at_base = probs[-k:][np.arange(k), wanted][:, None]
        middle = probs[:-2 * k].reshape(k, n_orders, 2, len(inner), -1)
        curves[s:s + k, :, :, 1:-1] = np.take_along_axis(middle, wanted.reshape(k, 1, 1, 1, 1), axis=-1)[..., 0]
        curves[s:s + k, :, 0, 0], curves[s:s + k, :, 0, -1] = at_image, at_base  # deletion: image -> baseline
        curves[s:s + k, :, 1, 0], curves[s:s + k, :, 1, -1] = at_base, at_image  # insertion: baseline -> image
    return curves


def faithfulness(predict_fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray, maps: np.ndarray,
                 targets: np.ndarray, *, steps: int = 20, blur_sigma: float | None = None, seed: int = 0,
                 batch_size: int = 64, control_maps: dict[str, np.ndarray] | None = None,
                 scale_by_spread: bool = False, fractions: Sequence[float] | None = None) -> dict[str, Any]:
    """Deletion/insertion AUC of the target-class probability in heatmap order and in random order.

    ``predict_fn(images) -> (N, C)`` probabilities. Pixels are moved ``1/steps`` of the image at a time;
    every step of every image goes through ``predict_fn`` in stacked batches of ``batch_size``. Ties in a
    map are broken at random (seeded), so a constant map behaves like the random order (gain ≈ 0).

    Returns MetricResults ``deletion_auc`` (lower better), ``insertion_auc``, ``deletion_auc_random``,
    ``insertion_auc_random``, ``deletion_gain`` (random − heatmap deletion AUC, higher better),
    ``insertion_gain`` (heatmap − random insertion AUC, higher better), ``score`` (insertion AUC − deletion
    AUC per image, higher better: both ends of the ranking in one figure), and ``curves``: the mean curves
    ``{"fraction", "deletion", "insertion", "deletion_random", "insertion_random"}`` as lists.

    ``control_maps`` (``{name: (N, H, W)}``, e.g. from ``audit.quality.controls.control_maps``) are run
    through the same curves in the same batches; they are returned under ``"controls"`` as ``{name:
    {"deletion_auc", "insertion_auc": MetricResult}}`` with their mean curves in ``curves["controls"]``.
    When they include ``"random"``, that smooth random map is the random reference of the gains instead
    of a random pixel order.

    ``scale_by_spread`` (for unbounded scores such as logits) rescales each image's curves to [0, 1] by
    the range its score spans over all orders and steps; an image whose score does not move is flat (0).

    ``fractions`` (increasing, from 0 to 1) replaces the ``steps`` equal steps by these points: the AUC is
    the trapezoid over them. The curves' ends are shared by every order, so each inner point costs one
    pass per order and curve.
    """
    curves, fraction, names = faithfulness_curves(predict_fn, images, maps, targets, steps=steps,
                                                  blur_sigma=blur_sigma, seed=seed, batch_size=batch_size,
                                                  control_maps=control_maps, fractions=fractions)
    return summarize_curves(curves, fraction, names, set(control_maps or {}), scale_by_spread=scale_by_spread)


def faithfulness_curves(predict_fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray, maps: np.ndarray,
                        targets: np.ndarray, *, steps: int = 20, blur_sigma: float | None = None, seed: int = 0,
                        batch_size: int = 64, control_maps: dict[str, np.ndarray] | None = None,
                        fractions: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The raw curves behind ``faithfulness``: ``(curves (N, 1 + orders, 2, points), fraction, names)``, order
    0 the map's, then ``names`` (the controls, or "random_pixels" when no "random" control is given)."""
    x = as_images(images)
    m = np.nan_to_num(as_maps(maps), nan=0.0, posinf=0.0, neginf=0.0)
    n, h, w, c = x.shape
    if m.shape != (n, h, w):
        raise AlzAuditError(f"faithfulness: maps have shape {m.shape}, expected {(n, h, w)}")
    tgt = np.asarray(targets, dtype=np.int64).reshape(n)
    if n == 0:
        raise AlzAuditError("faithfulness: no images given")
    if fractions is None:
        if steps < 1:
            raise AlzAuditError(f"faithfulness: steps must be >= 1, got {steps}")
        fractions = np.linspace(0.0, 1.0, steps + 1)
    fractions = np.asarray(fractions, dtype=np.float64)
    if len(fractions) < 2 or fractions[0] != 0.0 or fractions[-1] != 1.0 or np.any(np.diff(fractions) <= 0):
        raise AlzAuditError(f"faithfulness: fractions must rise from 0 to 1, got {fractions.tolist()}")
    controls = {name: np.nan_to_num(as_maps(cm, f"control map {name}"), nan=0.0, posinf=0.0, neginf=0.0)
                for name, cm in (control_maps or {}).items()}
    for name, cm in controls.items():
        if cm.shape != (n, h, w):
            raise AlzAuditError(f"faithfulness: control map {name} has shape {cm.shape}, expected {(n, h, w)}")
    n_px = h * w
    rng = np.random.default_rng(seed)
    tie_break = rng.random((n, n_px))
    shuffle = np.argsort(tie_break, axis=1, kind="stable")  # shared by every map's order
    orders = [descending_order(m.reshape(n, n_px), shuffle)]
    names = list(controls)
    if "random" not in controls:  # the classic reference: a random pixel order
        names.append("random_pixels")
        orders.append(np.argsort(rng.random((n, n_px)), axis=1))
    for name in controls:
        orders.insert(1 + names.index(name), descending_order(controls[name].reshape(n, n_px), shuffle))
    ranks = np.stack([_ranks(o) for o in orders], axis=1)  # (n, orders, P)
    counts = np.round(fractions * n_px).astype(np.int64)
    fraction = counts / n_px
    base = blurred_baseline(x, blur_sigma)
    return order_curves(predict_fn, x, ranks, tgt, counts, base, batch_size=batch_size), fraction, names


def summarize_curves(curves: np.ndarray, fraction: np.ndarray, names: list[str], controls: set[str], *,
                     scale_by_spread: bool = False) -> dict[str, Any]:
    """``faithfulness``'s figures from its raw curves (``faithfulness_curves``)."""
    curves = np.asarray(curves, dtype=np.float64)
    if scale_by_spread:
        # Scores (e.g. logits) have no common unit across images: express each image's curves as a share
        # of the range its score spans over every order and step. A score that does not move (an
        # insensitive model) cannot show faithfulness: every curve is flat and the gains are exactly 0.
        lo = curves.min(axis=(1, 2, 3), keepdims=True)
        spread = curves.max(axis=(1, 2, 3), keepdims=True) - lo
        moving = spread > SPREAD_TOLERANCE * np.maximum(1.0, np.abs(curves[:, :1, :1, :1]))
        curves = np.where(moving, (curves - lo) / np.where(moving, spread, 1.0), 0.0)
    auc = _trapezoid(curves, fraction, axis=-1)  # (n, orders, 2)
    ref = 1 + names.index("random") if "random" in names else 1 + names.index("random_pixels")
    cites = [CITES["petsiuk2018"]]
    return {
        "deletion_auc": MetricResult("deletion_auc", auc[:, 0, 0], False, cites),
        "insertion_auc": MetricResult("insertion_auc", auc[:, 0, 1], True, cites),
        "deletion_auc_random": MetricResult("deletion_auc_random", auc[:, ref, 0], False, cites),
        "insertion_auc_random": MetricResult("insertion_auc_random", auc[:, ref, 1], True, cites),
        "deletion_gain": MetricResult("deletion_gain", auc[:, ref, 0] - auc[:, 0, 0], True, cites),
        "insertion_gain": MetricResult("insertion_gain", auc[:, 0, 1] - auc[:, ref, 1], True, cites),
        "score": MetricResult("faithfulness_score", auc[:, 0, 1] - auc[:, 0, 0], True, cites),
        "controls": {name: {"deletion_auc": MetricResult(f"deletion_auc_{name}", auc[:, 1 + i, 0], False, cites),
                            "insertion_auc": MetricResult(f"insertion_auc_{name}", auc[:, 1 + i, 1], True, cites),
                            "score": MetricResult(f"faithfulness_score_{name}", auc[:, 1 + i, 1] - auc[:, 1 + i, 0],
                                                  True, cites)}
                     for i, name in enumerate(names) if name in controls},
        "curves": {
            "fraction": fraction.tolist(),
            "deletion": curves[:, 0, 0].mean(axis=0).tolist(),
            "insertion": curves[:, 0, 1].mean(axis=0).tolist(),
            "deletion_random": curves[:, ref, 0].mean(axis=0).tolist(),
            "insertion_random": curves[:, ref, 1].mean(axis=0).tolist(),
            "controls": {name: {"deletion": curves[:, 1 + i, 0].mean(axis=0).tolist(),
                                "insertion": curves[:, 1 + i, 1].mean(axis=0).tolist()}
                         for i, name in enumerate(names) if name in controls},
        },
    }
