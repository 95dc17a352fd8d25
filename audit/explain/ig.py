"""Integrated Gradients (Sundararajan et al. 2017) with every interpolation step batched and compiled.

The path integral from a baseline x' to the image x is a trapezoidal Riemann sum over ``steps``
intervals (``steps + 1`` gradient evaluations per image). All (image, step) pairs are laid out as rows
and pushed through one compiled gradient function ``batch_size`` rows at a time, so a batch can span
the steps of several images, or part of one. Completeness (sum of attributions = F(x) - F(x')) is
reported per image, so callers can see whether ``steps`` was enough.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

from audit.explain.layers import (cached, check_images, check_targets, input_shape, logit_model, n_outputs,
                                  predict)
from audit.explain.normalise import normalise_maps
from model.errors import AlzAuditError

OUTPUTS = ("probability", "logit")
BASELINES = ("black", "blur")


@dataclass(frozen=True)
class IGResult:
    """What :func:`integrated_gradients` returns (all per image, N = number of images).

    attributions: float32 ``(N, H, W, C)``, (x - x') * averaged gradient; they sum to ``delta``.
    heatmaps: float32 ``(N, H, W)``, |sum over channels of attributions| scaled to [0, 1] for display.
    delta: float64 ``(N,)``, F(x) - F(x') for the explained class.
    completeness_error: float64 ``(N,)``, |sum(attributions) - delta| / |delta| (relative; when
        |delta| < 1e-9 the denominator is 1e-9, so look at ``delta`` too).
    targets: int64 ``(N,)``, the class each row explains. output: which F ("probability" | "logit").
    """

    attributions: np.ndarray
    heatmaps: np.ndarray
    delta: np.ndarray
    completeness_error: np.ndarray
    targets: np.ndarray
    output: str
    steps: int


def integrated_gradients(model, images, targets=None, *, baseline="black", steps: int = 64,
                         batch_size: int = 32, output: str = "probability") -> IGResult:
    """Integrated Gradients of F = the target class's softmax probability (default) or its logit.

    ``baseline``: ``"black"`` (all-zero intensities), ``"blur"`` (each image Gaussian-blurred with sigma =
    max(H, W) / 16, a baseline that keeps the mean brightness) or an array broadcastable to the images.
    ``steps``: trapezoidal intervals; ``batch_size``: rows (image x step pairs) per compiled call.
    ``output="probability"`` differentiates the model's own output (the softmax probability for a
    softmax head: the F of the completeness figures in REFERENCES.md); ``"logit"`` the pre-softmax score.
    """
    if output not in OUTPUTS:
        raise AlzAuditError(f"--output: unknown IG output '{output}' (choose {', '.join(OUTPUTS)})")
    if int(steps) < 1:
        raise AlzAuditError(f"--steps: must be at least 1, got {steps}")
    if batch_size < 1:
        raise AlzAuditError(f"--batch-size: must be at least 1, got {batch_size}")
    steps = int(steps)
    images = check_images(model, images)
    wanted = check_targets(targets, len(images), n_outputs(model))
    if (wanted < 0).any():
        predicted = predict(model, images, batch_size=batch_size).argmax(axis=1)
        wanted = np.where(wanted < 0, predicted, wanted).astype(np.int32)
    baselines = make_baselines(images, baseline)
    step = ig_function(model, output)

    n, per_image = len(images), steps + 1
    weights = np.full(per_image, 1.0 / steps)
    weights[[0, -1]] *= 0.5
    alphas = np.linspace(0.0, 1.0, per_image)
    summed = np.zeros(images.shape, np.float64)
    scores = np.zeros((n, per_image), np.float64)
    for rows in _balanced_batches(n * per_image, batch_size):
        image_of, step_of = rows // per_image, rows % per_image
        grads, values = step(images[image_of], baselines[image_of], alphas[step_of].astype(np.float32),
                             wanted[image_of])
        weighted = grads.numpy().astype(np.float64) * weights[step_of][:, None, None, None]
        firsts = np.flatnonzero(np.r_[True, image_of[1:] != image_of[:-1]])
        summed[image_of[firsts]] += np.add.reduceat(weighted, firsts, axis=0)
        scores[image_of, step_of] = values.numpy()

    attributions = (images.astype(np.float64) - baselines) * summed
    delta = scores[:, -1] - scores[:, 0]
    gap = np.abs(attributions.reshape(n, -1).sum(axis=1) - delta)
    error = gap / np.maximum(np.abs(delta), 1e-9)
    heatmaps = normalise_maps(np.abs(attributions.sum(axis=-1)))
    return IGResult(attributions.astype(np.float32), heatmaps, delta, error, wanted.astype(np.int64), output, steps)


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
        raise AlzAuditError(f"--baseline: unknown baseline '{baseline}' "
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


def ig_function(model, output: str = "probability"):
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

    return run
