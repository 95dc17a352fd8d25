"""SmoothGrad (Smilkov et al. 2017): average an explanation over noisy copies of each image.

Works around the visual noise of raw gradients by averaging ``n_samples`` explanations of
x + N(0, sigma^2), sigma = ``noise_level`` x (max(x) - min(x)). Any explainer with the common signature
can be wrapped; the default is the plain input gradient of the logit (the paper's setting). Noisy
copies of several images are stacked so each compiled call still sees full batches.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from audit.explain.layers import (cached, check_images, check_targets, input_shape, logit_model, n_outputs,
                                  predict)
from audit.explain.normalise import normalise_maps
from model.errors import ParameterError


def saliency(model, images, targets=None, *, batch_size: int = 32) -> np.ndarray:
    """Gradient magnitude |d logit / d x|, max over channels, float32 ``(N, H, W)`` scaled to [0, 1]."""
    return normalise_maps(_raw_saliency(model, images, targets, batch_size=batch_size))


def _raw_saliency(model, images, targets=None, *, batch_size: int = 32) -> np.ndarray:
    import tensorflow as tf

    images = check_images(model, images)
    wanted = check_targets(targets, len(images), n_outputs(model))
    scorer = logit_model(model)

    def factory():
        spec = tf.TensorSpec((None,) + input_shape(model), tf.float32)

        @tf.function(autograph=False, input_signature=[spec, tf.TensorSpec((None,), tf.int32)])
        def step(x, t):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(x)
                logits = tf.cast(scorer(x, training=False), tf.float32)
                chosen = tf.where(t < 0, tf.argmax(logits, axis=-1, output_type=tf.int32), t)
                score = tf.reduce_sum(tf.gather(logits, chosen, axis=1, batch_dims=1))
            return tf.reduce_max(tf.abs(tape.gradient(score, x)), axis=-1)

        return step

    step = cached(model, ("saliency",), factory)
    out = [step(tf.constant(images[i:i + batch_size]), tf.constant(wanted[i:i + batch_size])).numpy()
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out)


def smoothgrad(model, images, targets=None, *, explainer: Callable | None = None, n_samples: int = 16,
               noise_level: float = 0.15, seed: int | None = 0, batch_size: int = 32, **explainer_kwargs) -> np.ndarray:
    """SmoothGrad heatmaps, float32 ``(N, H, W)`` in [0, 1].

    ``explainer(model, images, targets, batch_size=..., **explainer_kwargs)`` returns ``(N, H, W)`` maps
    (or an object with ``.heatmaps``, e.g. an IG result); default: raw input-gradient magnitude. The
    explained class is fixed on the clean image (``targets=None`` -> its predicted class) so noise cannot
    switch it. Blank images get sigma = ``noise_level`` x 255 (the input range) instead of 0.
    """
    if n_samples < 1:
        raise ParameterError("n_samples", f"must be at least 1, got {n_samples}")
    if noise_level < 0:
        raise ParameterError("noise_level", f"must be >= 0, got {noise_level}")
    images = check_images(model, images)
    wanted = check_targets(targets, len(images), n_outputs(model))
    if (wanted < 0).any():
        predicted = predict(model, images, batch_size=batch_size).argmax(axis=1)
        wanted = np.where(wanted < 0, predicted, wanted).astype(np.int32)
    explain = explainer or _raw_saliency
    rng = np.random.default_rng(seed)
    span = np.ptp(images.reshape(len(images), -1), axis=1)
    span = np.where(span > 0, span, 255.0)
    sigma = (noise_level * span)[:, None, None, None]

    per_group = max(1, batch_size // n_samples)
    out = np.empty(images.shape[:3], np.float32)
    for start in range(0, len(images), per_group):
        group = slice(start, start + per_group)
        clean = np.repeat(images[group], n_samples, axis=0)
        noisy = clean + rng.normal(size=clean.shape).astype(np.float32) * np.repeat(sigma[group], n_samples, axis=0)
        maps = explain(model, noisy.astype(np.float32), np.repeat(wanted[group], n_samples),
                       batch_size=batch_size, **explainer_kwargs)
        maps = np.asarray(getattr(maps, "heatmaps", maps), dtype=np.float64)
        out[group] = maps.reshape(-1, n_samples, *maps.shape[1:]).mean(axis=1)
    return normalise_maps(out)
