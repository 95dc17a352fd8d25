"""Grad-CAM (Selvaraju et al. 2017) and Grad-CAM++ (Chattopadhay et al. 2018), one compiled tape per batch.

Both differentiate the class *logit* (pre-softmax; a saturated softmax has gradients near 1e-10) with
respect to a 4-D feature map, and differ only in how the channel weights are formed from the
gradients. The whole batch goes through one ``tf.function`` (forward, gradient, weighting, ReLU and
bilinear upsampling), which makes Grad-CAM cost about one inference pass instead of one eager tape
per image.
"""
from __future__ import annotations

import numpy as np

from audit.explain.layers import cached, check_images, check_targets, gradient_model, input_shape, n_outputs
from audit.explain.normalise import normalise_maps_tf
from model.errors import ParameterError

METHODS = ("gradcam", "gradcam++")


def gradcam(model, images, targets=None, *, layer: str | None = None, batch_size: int = 32,
            strategy=None) -> np.ndarray:
    """Grad-CAM heatmaps, float32 ``(N, H, W)`` at input resolution, each scaled to [0, 1].

    Weights = spatial mean of d(logit of the target class)/d(activations); map = ReLU(sum_k w_k A^k),
    upsampled bilinearly, then min-max scaled per image (a constant map -> zeros). ``targets=None``
    explains the predicted class; ``layer`` is a path such as ``"resnet50/conv5_block3_out"``
    (default: the last 4-D layer, searched through nested models).

    ``strategy`` (a ``tf.distribute.Strategy``, see ``audit/distribute.py``) splits each batch across its
    replicas, ``batch_size`` images per replica, and returns the same maps in the same order; ``None``
    runs on one device exactly as before.
    """
    return _class_activation_maps(model, images, targets, layer, batch_size, "gradcam", strategy)[0]


def gradcam_plus_plus(model, images, targets=None, *, layer: str | None = None,
                      batch_size: int = 32, strategy=None) -> np.ndarray:
    """Grad-CAM++ heatmaps, float32 ``(N, H, W)`` in [0, 1]; same contract as :func:`gradcam`.

    Channel weights are sum_ij alpha_ij ReLU(g_ij) with alpha = g^2 / (2 g^2 + sum_ab A_ab g^3) (the
    exponential-score closed form of the paper; the common exp(S) factor cancels after scaling).
    """
    return _class_activation_maps(model, images, targets, layer, batch_size, "gradcam++", strategy)[0]


def class_activation_maps(model, images, targets=None, *, method: str = "gradcam", layer: str | None = None,
                          batch_size: int = 32, strategy=None) -> tuple[np.ndarray, np.ndarray]:
    """``(heatmaps (N, H, W) in [0, 1], explained class per image (N,))`` for ``method`` in METHODS.

    The second value says which class each map explains, which matters when ``targets=None``.
    """
    return _class_activation_maps(model, images, targets, layer, batch_size, method, strategy)[:2]


def maps_and_predictions(model, images, targets=None, *, method: str = "gradcam", layer: str | None = None,
                         batch_size: int = 32, strategy=None) -> tuple[np.ndarray, np.ndarray]:
    """``(heatmaps (N, H, W) in [0, 1], predicted class per image (N,))``: the forward pass that explains
    ``targets`` also says what the model predicts, so a stage that needs both (stability: maps and flips
    of noisy copies) pays for one pass, not two."""
    maps, _, scores = _class_activation_maps(model, images, targets, layer, batch_size, method, strategy)
    return maps, scores.argmax(axis=1)


def maps_and_outputs(model, images, targets=None, *, method: str = "gradcam", layer: str | None = None,
                     batch_size: int = 32, strategy=None) -> tuple[np.ndarray, np.ndarray]:
    """``(heatmaps (N, H, W) in [0, 1], the model's outputs (N, C))`` from one pass: the outputs are the
    softmax of the explained logits for a softmax head (what ``model(x)`` returns, to float rounding) and the
    explained scores themselves otherwise (a linear or other head is explained as-is). The audit's
    predictions and its Grad-CAM of the predicted class (``targets=None``) thus cost one pass, not two."""
    from audit.explain.layers import find_head

    maps, _, scores = _class_activation_maps(model, images, targets, layer, batch_size, method, strategy)
    if find_head(model).kind in ("dense_softmax", "softmax_layer"):
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        return maps, shifted / shifted.sum(axis=1, keepdims=True)
    return maps, scores


def _class_activation_maps(model, images, targets, layer, batch_size, method, strategy=None):
    if method not in METHODS:
        raise ParameterError("method", f"unknown CAM method '{method}' (choose {', '.join(METHODS)})")
    if batch_size < 1:
        raise ParameterError("batch_size", f"must be at least 1, got {batch_size}")
    images = check_images(model, images)
    wanted = check_targets(targets, len(images), n_outputs(model))
    step = cam_function(model, layer, method)
    if strategy is not None:
        from model.distribute import distributed, global_batch

        step = distributed(step, step.step, strategy, 3)
        batch_size = global_batch(batch_size, strategy)
    maps, used, scores = [], [], []
    for start in range(0, len(images), batch_size):
        cam, explained, logits = step(images[start:start + batch_size], wanted[start:start + batch_size])
        maps.append(cam.numpy())
        used.append(explained.numpy())
        scores.append(logits.numpy())
    if len(maps) == 1:  # the common case: no copy
        return maps[0], used[0].astype(np.int64), scores[0].astype(np.float64)
    return (np.concatenate(maps), np.concatenate(used).astype(np.int64),
            np.concatenate(scores).astype(np.float64))


def cam_function(model, layer: str | None = None, method: str = "gradcam"):
    """The cached compiled step ``(images (B,H,W,C) float32, targets (B,) int32, -1 = predicted)
    -> (heatmaps (B, H, W) in [0, 1], explained classes (B,), explained scores (B, C))``; exposed for
    benchmarks."""
    grads_model, path = gradient_model(model, layer)
    return cached(model, ("cam", path, method), lambda: _compile(grads_model, path, input_shape(model), method))


def _compile(grads_model, path: str, shape: tuple, method: str):
    import tensorflow as tf

    plus_plus = method == "gradcam++"
    image_spec = tf.TensorSpec((None,) + shape, tf.float32)
    target_spec = tf.TensorSpec((None,), tf.int32)

    @tf.function(autograph=False, input_signature=[image_spec, target_spec])
    def step(images, targets):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(images)  # so frozen (non-trainable) backbones are still recorded
            activations, logits = grads_model(images, training=False)
            logits = tf.cast(logits, tf.float32)
            predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
            chosen = tf.where(targets < 0, predicted, targets)
            score = tf.reduce_sum(tf.gather(logits, chosen, axis=1, batch_dims=1))
        grads = tape.gradient(score, activations)
        if grads is None:  # raised while tracing, so once per model/layer
            raise ParameterError("layer", f"the class scores do not depend on layer {path!r}; pick a layer on "
                                "the path to the output")
        grads = tf.cast(grads, tf.float32)
        acts = tf.cast(activations, tf.float32)
        if plus_plus:
            g2 = tf.square(grads)
            denom = 2.0 * g2 + tf.reduce_sum(acts, axis=(1, 2), keepdims=True) * g2 * grads
            alpha = tf.math.divide_no_nan(g2, denom)
            weights = tf.reduce_sum(alpha * tf.nn.relu(grads), axis=(1, 2))
        else:
            weights = tf.reduce_mean(grads, axis=(1, 2))
        cam = tf.nn.relu(tf.einsum("bhwk,bk->bhw", acts, weights))
        cam = tf.image.resize(cam[..., None], tf.shape(images)[1:3], method="bilinear")[..., 0]
        return normalise_maps_tf(cam), chosen, logits

    def run(images, targets):
        return step(tf.constant(images), tf.constant(targets, tf.int32))

    run.step = step  # the per-replica computation, for audit.distribute
    return run
