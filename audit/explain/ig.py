"""Integrated Gradients (Sundararajan et al. 2017), batched, compiled and (optionally) adaptive per image.

F is the target class's pre-softmax logit by default, the score Grad-CAM differentiates too, so the two
maps explain the same quantity (and a saturated softmax cannot flatten the gradients to ~0).

The path integral from a baseline x' to the image x is a quadrature over ``m`` intervals (``m + 1``
gradient evaluations per image) with one of three nested node sets (``scheme``): the trapezoid's equal
intervals; ``graded``, the trapezoid in t after substituting alpha = t^2, whose nodes (j / m)^2 crowd
towards the baseline, where a black-baseline path's integrand changes fastest (units switch on as the
image brightens from black); or Clenshaw–Curtis's Chebyshev extrema, crowded towards both ends and
exact for polynomials of degree <= m. All are nested: the nodes for ``m`` intervals are every other
node for ``2m``, so refining an image from ``m`` to ``2m`` costs only the ``m`` new nodes and every
gradient already computed is reused (Gauss–Legendre nodes share none between counts). With a
``tolerance`` each image starts at ``min_steps`` intervals and doubles until its completeness error
(|Σ attributions − (F(x) − F(x'))| / |F(x) − F(x')|) is at most the tolerance, or ``max_steps`` is
reached: gradients are spent only on the images that need them. With ``panels`` the path is cut into
pieces that double independently, each judged by its own exact error (F is known at every node), so an
image refines only where its integrand is hard. On a trained ReLU network the integrand is kinked, so
no rule converges faster than second order; what the schemes change is where the nodes sit
(docs/metrics.md has the measured costs).

All (image, alpha) rows of a round — from every image still refining — are laid out together and pushed
through one compiled gradient function ``batch_size`` rows at a time, so a batch can span several
images, or part of one.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Callable

import numpy as np

from audit.explain.layers import (cached, check_images, check_targets, input_shape, logit_model, n_outputs,
                                  predict)
from audit.explain.normalise import normalise_maps
from model.errors import AlzAuditError, ParameterError

OUTPUTS = ("logit", "probability")
BASELINES = ("black", "blur")
# A tolerance for callers that want the adaptive scheme without choosing one: 1% relative completeness
# error, a tenth of the gate's default median threshold (docs/measurements.md has the cost it buys).
DEFAULT_TOLERANCE = 0.01
# |F(x) - F(x')| below this times max(1, |F(x)|, |F(x')|) is at the level of float32 rounding of F, so
# the relative completeness error would divide noise by noise: it is reported as not estimable (NaN).
NOT_ESTIMABLE_RTOL = 1e-6


@dataclass(frozen=True)
class IGResult:
    """What :func:`integrated_gradients` returns (all per image, N = number of images).

    attributions: float32 ``(N, H, W, C)``, (x - x') * averaged gradient; they sum to ~``delta``.
    heatmaps: float32 ``(N, H, W)``, |sum over channels of attributions| scaled to [0, 1] for display.
    delta: float64 ``(N,)``, F(x) - F(x') for the explained class.
    completeness_error: float64 ``(N,)``, |sum(attributions) - delta| / |delta|; NaN where ``estimable``
        is False (delta too small to divide by, see ``NOT_ESTIMABLE_RTOL``).
    targets: int64 ``(N,)``, the class each row explains. output: which F ("logit" | "probability").
    steps: the fixed number of intervals, or with a tolerance the most any image was allowed.
    estimable: bool ``(N,)``, |delta| >= NOT_ESTIMABLE_RTOL * max(1, |F(x)|, |F(x')|).
    steps_used: int64 ``(N,)``, intervals each image ended with (= ``steps`` without a tolerance).
    converged: bool ``(N,)``, estimable and (no tolerance, or completeness_error <= tolerance). A
        not-estimable image is never "converged": nothing shows its integral is accurate.
    gradient_evaluations: total (image, alpha) gradient rows computed, over all images.
    tolerance: the tolerance asked for, or None (fixed steps).
    scheme: the quadrature's nodes and weights (a key of ``SCHEMES``).
    panel_steps: int64 ``(N, panels)``, the intervals each panel ended with (they sum to ``steps_used``);
        ``(N, 1)`` with fixed steps.
    """

    attributions: np.ndarray
    heatmaps: np.ndarray
    delta: np.ndarray
    completeness_error: np.ndarray
    targets: np.ndarray
    output: str
    steps: int
    estimable: np.ndarray
    steps_used: np.ndarray
    converged: np.ndarray
    gradient_evaluations: int
    tolerance: float | None = None
    scheme: str = "trapezoid"
    panel_steps: np.ndarray | None = None


def join_results(parts: list[IGResult], order: np.ndarray) -> IGResult:
    """The results of disjoint image sets (same settings) as one: rows concatenated in ``parts`` order, then
    taken in ``order`` (positions into that concatenation); evaluations summed, ``steps`` the largest."""
    def rows(name: str) -> np.ndarray | None:
        arrays = [getattr(p, name) for p in parts]
        return None if any(a is None for a in arrays) else np.concatenate(arrays)[order]

    first = parts[0]
    return IGResult(attributions=rows("attributions"), heatmaps=rows("heatmaps"), delta=rows("delta"),
                    completeness_error=rows("completeness_error"), targets=rows("targets"), output=first.output,
                    steps=max(p.steps for p in parts), estimable=rows("estimable"), steps_used=rows("steps_used"),
                    converged=rows("converged"), gradient_evaluations=sum(p.gradient_evaluations for p in parts),
                    tolerance=first.tolerance, scheme=first.scheme, panel_steps=rows("panel_steps"))


def integrated_gradients(model, images, targets=None, *, baseline="black", steps: int = 64,
                         batch_size: int = 32, output: str = "logit", tolerance: float | None = None,
                         min_steps: int = 16, max_steps: int | None = None, scheme: str = "trapezoid",
                         panels: int = 1, strategy=None) -> IGResult:
    """Integrated Gradients of F = the target class's logit (default) or its softmax probability.

    ``baseline``: ``"black"`` (all-zero intensities), ``"blur"`` (each image Gaussian-blurred with sigma =
    max(H, W) / 16, a baseline that keeps the mean brightness) or an array broadcastable to the images.
    ``steps``: intervals of the quadrature (``steps + 1`` nodes) when ``tolerance`` is None;
    ``batch_size``: rows (image x alpha pairs) per compiled call. ``output="logit"`` differentiates the
    pre-softmax score, as Grad-CAM does; ``"probability"`` the model's own output (the softmax
    probability for a softmax head).

    ``scheme``: the nodes and weights on [0, 1] (see ``SCHEMES``): ``"trapezoid"`` (equal intervals),
    ``"graded"`` (the trapezoid after alpha = t^2: nodes (j / m)^2, denser near the baseline) or
    ``"clenshaw-curtis"`` (Chebyshev extrema, denser at both ends). All are nested under doubling.

    ``tolerance`` (relative completeness error, e.g. ``DEFAULT_TOLERANCE``) makes the step count adaptive
    per image: ``min_steps`` intervals first, then doubling (reusing every gradient) while the image's
    error exceeds the tolerance, up to the largest ``min_steps * 2**k <= max_steps`` (default
    ``max(steps, 128)``). An image whose delta is not estimable stops at ``min_steps``, since more
    steps cannot make it estimable. With one panel the result at ``steps_used[i]`` equals fixed-steps IG
    at that count.

    ``panels`` (adaptive only; trapezoid or graded) splits the path into equal pieces in the rule's own
    variable (t, with alpha = t^2 for graded: two panels meet at alpha = 1/4) that double independently.
    Each panel's own error is exact — its quadrature against F(end) - F(start), F being known at every
    node — so a round refines only the panels whose error exceeds tolerance / panels (or, if none does,
    the worst one), up to ``max_steps / panels`` intervals each. ``panel_steps`` records where an image
    ended; the result equals the composite rule at those nodes (and fixed-steps IG where they are equal).

    ``strategy`` (a ``tf.distribute.Strategy``, see ``audit/distribute.py``) spreads each batch of (image,
    alpha) rows over its replicas, ``batch_size`` rows per replica; the gradients come back in row order
    and are summed on the host as before, so the result is the single-device one. ``None``: one device.
    """
    if output not in OUTPUTS:
        raise ParameterError("output", f"unknown IG output '{output}' (choose {', '.join(OUTPUTS)})")
    if batch_size < 1:
        raise ParameterError("batch_size", f"must be at least 1, got {batch_size}")
    quadrature = quadrature_scheme(scheme)
    levels = step_levels(steps, tolerance, min_steps, max_steps)
    n_panels = check_panels(panels, quadrature, levels) if tolerance is not None else 1
    tolerance = None if tolerance is None else float(tolerance)
    images = check_images(model, images)
    wanted = check_targets(targets, len(images), n_outputs(model))
    if (wanted < 0).any():
        predicted = predict(model, images, batch_size=batch_size, strategy=strategy).argmax(axis=1)
        wanted = np.where(wanted < 0, predicted, wanted).astype(np.int32)
    baselines = make_baselines(images, baseline)
    gradient = ig_function(model, output)
    if strategy is not None:
        from model.distribute import distributed, global_batch

        gradient = distributed(gradient, gradient.step, strategy, 2)
        batch_size = global_batch(batch_size, strategy)
    n = len(images)
    path = images.astype(np.float64) - baselines
    rules = {m: quadrature.rule(m) for m in levels}
    # Weighted sums of gradients per image over the nodes computed so far ("slots"). A node of level m
    # is a node of every later level (index j at m is 2j at 2m), so each gradient is computed once and
    # added to every sum it belongs to. Where doubling only halves the old nodes' weights (trapezoid,
    # graded), one sum of m * weight * gradient per panel serves every level: acc[p] / m_p is panel p's
    # share of the mean gradient at its level m_p. Otherwise (Clenshaw–Curtis: every weight changes, one
    # panel) acc[l] holds level l's own weighted sum.
    acc = np.zeros(((n_panels if quadrature.shared else len(levels)),) + images.shape, np.float64)
    level_index = {m: i for i, m in enumerate(levels)}

    def node_weights(panel: int, m: int, js: np.ndarray) -> np.ndarray:
        """(slots, len(js)): what the gradient at node ``js`` of level ``m`` adds to each sum."""
        weights = np.zeros((len(acc), len(js)))
        if quadrature.shared:
            weights[panel] = rules[m][1][js] * m
        else:
            for level in range(level_index[m], len(levels)):
                weights[level] = rules[levels[level]][1][js * (levels[level] // m)]
        return weights

    def run(image_of: np.ndarray, alpha_of: np.ndarray, weight_of: np.ndarray) -> np.ndarray:
        """Gradients at every (image, alpha) row (rows of one image adjacent), added into the sums with the
        row's weights ``weight_of`` (slots, rows); F per row."""
        values = np.empty(len(image_of), np.float64)
        for rows in _balanced_batches(len(image_of), batch_size):
            ids = image_of[rows]
            grads, scores = gradient(images[ids], baselines[ids], alpha_of[rows].astype(np.float32), wanted[ids])
            grads = grads.numpy().astype(np.float64)
            firsts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
            for slot in np.flatnonzero(weight_of[:, rows].any(axis=1)):
                weighted = grads * weight_of[slot, rows][:, None, None, None]
                acc[slot, ids[firsts]] += np.add.reduceat(weighted, firsts, axis=0)
            values[rows] = scores.numpy()
        return values

    # Round one: every node of the first level for every image. Panel p spans nodes p*k .. (p+1)*k of
    # it (k = m / panels); a node on the border of two panels counts half in each.
    first, everyone = levels[0], np.arange(n)
    k = first // n_panels
    weights = np.zeros((len(acc), first + 1))
    for panel in range(n_panels):
        js = np.arange(panel * k, (panel + 1) * k + 1)
        share = np.where((js % k == 0) & (js > 0) & (js < first), 0.5, 1.0) if n_panels > 1 else 1.0
        weights[:, js] += node_weights(panel, first, js) * share
    scores = run(np.repeat(everyone, first + 1), np.tile(rules[first][0], n), np.tile(weights, (1, n)))
    scores = scores.reshape(n, first + 1)
    evaluations = n * (first + 1)
    f_border = scores[:, ::k]  # F where each panel starts and ends: F(x') ... F(x)
    delta = f_border[:, -1] - f_border[:, 0]
    scale = np.maximum(1.0, np.maximum(np.abs(f_border[:, -1]), np.abs(f_border[:, 0])))
    estimable = np.abs(delta) >= NOT_ESTIMABLE_RTOL * scale
    panel_level = np.full((n, n_panels), first, np.int64)  # the level m_p each panel has reached
    error = np.full(n, np.nan)
    panel_error = np.zeros((n, n_panels))  # each panel's quadrature minus its exact F(end) - F(start)

    def mean_gradient(ids: np.ndarray, panel: int | None = None) -> np.ndarray:
        """The quadrature of the gradient over [0, 1] (or over one panel) at the levels reached."""
        if not quadrature.shared:
            return acc[[level_index[m] for m in panel_level[ids, 0]], ids]
        chosen = range(n_panels) if panel is None else [panel]
        return sum(acc[p, ids] / panel_level[ids, p][:, None, None, None] for p in chosen)

    def measure(ids: np.ndarray) -> None:
        shares = np.stack([(path[ids] * mean_gradient(ids, p if quadrature.shared else None))
                           .reshape(len(ids), -1).sum(axis=1) for p in range(n_panels)], axis=1)
        panel_error[ids] = shares - np.diff(f_border[ids], axis=1)
        error[ids] = np.abs(shares.sum(axis=1) - delta[ids]) / np.where(estimable[ids], np.abs(delta[ids]), 1.0)

    measure(everyone)
    error[~estimable] = np.nan
    active = everyone[estimable] if tolerance is not None else everyone[:0]
    while len(active):
        active = active[error[active] > tolerance]
        # Refine the panels whose own error exceeds tolerance / panels (at least one does while the total
        # is above the tolerance), else the refinable one with the largest; stop at max_steps per panel.
        room = panel_level[active] * 2 <= levels[-1]
        own = np.abs(panel_error[active]) / np.abs(delta[active])[:, None]
        pick = room & (own > tolerance / n_panels)
        fallback = ~pick.any(axis=1) & room.any(axis=1)
        pick[fallback, np.where(room, own, -1.0)[fallback].argmax(axis=1)] = True
        active, pick = active[pick.any(axis=1)], pick[pick.any(axis=1)]
        parts = []
        for i, panels_of_i in zip(active, pick):
            for panel in np.flatnonzero(panels_of_i):
                m = 2 * panel_level[i, panel]
                js = panel * (m // n_panels) + np.arange(1, m // n_panels, 2)  # the midpoints it lacks
                parts.append((np.full(len(js), i), rules[m][0][js], node_weights(panel, m, js)))
                panel_level[i, panel] = m
        if parts:
            run(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                np.concatenate([p[2] for p in parts], axis=1))
            evaluations += sum(len(p[0]) for p in parts)
            measure(active)

    attributions = path * mean_gradient(everyone)
    panel_steps = panel_level // n_panels
    steps_used = panel_steps.sum(axis=1)
    converged = estimable & (error <= tolerance) if tolerance is not None else estimable.copy()
    heatmaps = normalise_maps(np.abs(attributions.sum(axis=-1)))
    return IGResult(attributions.astype(np.float32), heatmaps, delta, error, wanted.astype(np.int64), output,
                    int(levels[-1]), estimable, steps_used, converged, int(evaluations),
                    tolerance, scheme, panel_steps)


def check_panels(panels: int, quadrature: "Scheme", levels: list[int]) -> int:
    """The number of panels, checked: at least 1, dividing ``min_steps``, and more than 1 only for a
    scheme whose weights halve under doubling (one running sum per panel)."""
    if isinstance(panels, bool) or not isinstance(panels, (int, np.integer)) or panels < 1:
        raise AlzAuditError(f"panels: must be a positive integer, got {panels!r}")
    if panels > 1 and not quadrature.shared:
        names = ", ".join(name for name, s in SCHEMES.items() if s.shared)
        raise AlzAuditError(f"panels: more than one panel needs a scheme whose weights halve under doubling ({names})")
    if levels[0] % panels:
        raise AlzAuditError(f"panels: {panels} panels must divide min_steps ({levels[0]})")
    return int(panels)


def trapezoid_rule(m: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes j / m (j = 0..m) and trapezoid weights (1/2, 1, ..., 1, 1/2) / m on [0, 1]."""
    alphas = np.arange(m + 1) / m
    weights = np.full(m + 1, 1.0 / m)
    weights[[0, -1]] = 0.5 / m
    return alphas, weights


def clenshaw_curtis_rule(m: int) -> tuple[np.ndarray, np.ndarray]:
    """Clenshaw–Curtis on [0, 1]: nodes sin^2(pi j / (2m)) = (1 - cos(pi j / m)) / 2, j = 0..m, and the
    weights that integrate every polynomial of degree <= m exactly (Trefethen, Spectral Methods in
    MATLAB, clencurt; Waldvogel 2006), halved for [0, 1]. All weights are positive and sum to 1.

    Node j of m is node 2j of 2m, bit for bit: pi * j / (2m) and pi * 2j / (4m) round alike (scaling by
    two is exact), so refining reuses every gradient.
    """
    j = np.arange(m + 1)
    alphas = np.sin(np.pi * j / (2 * m)) ** 2
    alphas[[0, -1]] = 0.0, 1.0
    theta = np.pi * j[1:-1] / m
    weights = np.empty(m + 1)
    v = np.ones(m - 1)
    if m % 2 == 0:
        weights[[0, -1]] = 1.0 / (m * m - 1)
        for k in range(1, m // 2):
            v -= 2.0 * np.cos(2 * k * theta) / (4 * k * k - 1)
        v -= np.cos(m * theta) / (m * m - 1)
    else:
        weights[[0, -1]] = 1.0 / (m * m)
        for k in range(1, (m - 1) // 2 + 1):
            v -= 2.0 * np.cos(2 * k * theta) / (4 * k * k - 1)
    weights[1:-1] = 2.0 * v / m
    return alphas, weights / 2


def graded_rule(m: int) -> tuple[np.ndarray, np.ndarray]:
    """The trapezoid in t after the substitution alpha = t^2: nodes (j / m)^2, j = 0..m, weights
    2 t_j / m (halved at both ends, so 0 at the baseline). The nodes crowd towards the baseline, where
    the integrand of a black-baseline path changes fastest (units switching on as the image brightens);
    like the trapezoid, doubling m halves the old nodes' weights and adds the midpoints in t."""
    t = np.arange(m + 1) / m
    weights = 2.0 * t / m
    weights[[0, -1]] /= 2
    return t * t, weights


@dataclass(frozen=True)
class Scheme:
    """A nested family of quadrature rules on [0, 1]: ``rule(m)`` gives the m + 1 nodes (node j of m is
    node 2j of 2m, bit for bit) and their weights. ``shared``: the weights for 2m on the old nodes are
    exactly half those for m, so one running sum of gradients serves every level."""

    rule: Callable[[int], tuple[np.ndarray, np.ndarray]]
    shared: bool


SCHEMES = {"trapezoid": Scheme(trapezoid_rule, True), "graded": Scheme(graded_rule, True),
           "clenshaw-curtis": Scheme(clenshaw_curtis_rule, False)}


def quadrature_scheme(scheme: str) -> Scheme:
    """The :class:`Scheme` of a name; one clear error for an unknown name."""
    if not isinstance(scheme, str) or scheme not in SCHEMES:
        raise AlzAuditError(f"scheme: unknown IG quadrature scheme {scheme!r} (choose {', '.join(SCHEMES)})")
    return SCHEMES[scheme]


def step_levels(steps: int, tolerance: float | None, min_steps: int, max_steps: int | None) -> list[int]:
    """The interval counts an image may use: ``[steps]``, or ``min_steps`` doubled up to ``max_steps``."""
    if tolerance is None:
        if int(steps) < 1:
            raise ParameterError("steps", f"must be at least 1, got {steps}")
        return [int(steps)]
    try:
        valid = math.isfinite(float(tolerance)) and float(tolerance) > 0
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise AlzAuditError(f"tolerance: must be a positive number (relative completeness error), got {tolerance!r}")
    top = max(int(steps), 128) if max_steps is None else int(max_steps)
    if int(min_steps) < 1:
        raise AlzAuditError(f"min_steps: must be at least 1, got {min_steps}")
    if top < int(min_steps):
        raise AlzAuditError(f"max_steps: must be at least min_steps ({min_steps}), got {top}")
    levels = [int(min_steps)]
    while levels[-1] * 2 <= top:
        levels.append(levels[-1] * 2)
    return levels


def _balanced_batches(total: int, batch_size: int) -> list[np.ndarray]:
    """Row indices in as few batches as ``batch_size`` allows, of near-equal size.

    65 rows at batch 32 become 22 + 22 + 21, not 32 + 32 + 1: on a CPU a batch of one costs several
    rows' worth of time, which is where per-image toolkits lose time.
    """
    n_batches = -(-total // batch_size)
    return [chunk for chunk in np.array_split(np.arange(total), n_batches) if len(chunk)]


def make_baselines(images: np.ndarray, baseline) -> np.ndarray:
    """The baseline x' per image as float64 ``(N, H, W, C)``."""
    if isinstance(baseline, str):
        if baseline == "black":
            return np.zeros(images.shape, np.float64)
        if baseline == "blur":
            return _blurred(images)
        raise ParameterError("baseline", f"unknown baseline '{baseline}' "
                            f"(choose {', '.join(BASELINES)} or pass an array)")
    array = np.asarray(baseline, dtype=np.float64)
    if array.ndim == images.ndim - 2 and images.shape[-1] == 1:
        array = array[..., None]
    try:
        array = np.broadcast_to(array, images.shape).copy()
    except ValueError:
        raise AlzAuditError(f"baseline: shape {np.asarray(baseline).shape} does not broadcast to the images "
                            f"{images.shape}") from None
    if not np.isfinite(array).all():
        raise AlzAuditError("baseline: contains NaN or infinite values")
    return array


def _blurred(images: np.ndarray) -> np.ndarray:
    import cv2

    sigma = max(images.shape[1:3]) / 16.0
    out = np.empty(images.shape, np.float64)
    for i, image in enumerate(images):
        blurred = cv2.GaussianBlur(image.astype(np.float32), (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)
        out[i] = blurred.reshape(image.shape)
    return out


def ig_function(model, output: str = "logit"):
    """The cached compiled step ``(x, x', alpha (B,), targets (B,)) -> (dF/dx at x' + alpha (x - x'), F)``."""
    scorer = model if output == "probability" else logit_model(model)
    return cached(model, ("ig", output), lambda: _compile(scorer, input_shape(model)))


def _compile(scorer, shape: tuple):
    import tensorflow as tf

    image_spec = tf.TensorSpec((None,) + shape, tf.float32)
    vector = tf.TensorSpec((None,), tf.float32)
    classes = tf.TensorSpec((None,), tf.int32)
    # ``scorer`` may be the cached model itself: the closure must not keep the cache key alive.
    ref = weakref.ref(scorer)

    @tf.function(autograph=False, input_signature=[image_spec, image_spec, vector, classes])
    def step(images, baselines, alphas, targets):
        points = baselines + alphas[:, None, None, None] * (images - baselines)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(points)
            values = tf.cast(ref()(points, training=False), tf.float32)
            chosen = tf.gather(values, targets, axis=1, batch_dims=1)
            total = tf.reduce_sum(chosen)
        return tape.gradient(total, points), chosen

    def run(images, baselines, alphas, targets):
        return step(tf.constant(images, tf.float32), tf.constant(baselines, tf.float32),
                    tf.constant(alphas, tf.float32), tf.constant(targets, tf.int32))

    run.step = step  # the per-replica computation, for audit.distribute
    return run
