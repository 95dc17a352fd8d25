"""Models built to be useless: negative controls that a gate with teeth must FAIL.

A check that no bad model fails is not a check. These builders make, from built-in Keras layers only
(so they load under ``safe_mode``), the probes the project's tests and ``benchmarks/negative_controls.py``
run through the gate beside a trained model:

- ``untrained_model``: the demo architecture with random weights. Its maps are noise-driven; it must
  fail localisation and faithfulness.
- ``foreground_model``: a 1×1 convolution that passes the image through, and a head that reads the
  mean brightness. Grad-CAM on it returns the brain's foreground: a map with no localisation at all,
  which a uniform-over-the-brain control matches; it must fail localisation.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from model.classes import CLASSES


def untrained_model(input_size: int = 128, backbone: str = "small", seed: int = 0):
    """The classifier architecture with random weights (no training)."""
    from model.network import build_classifier

    return build_classifier(backbone, None, input_size, seed=seed)


def foreground_model(input_size: int = 128, n_classes: int = len(CLASSES)):
    """Grad-CAM of this model is the image itself: conv passes pixels through, the head reads brightness.

    The Grad-CAM layer ``passthrough`` is ReLU(x / 255); every class logit is a positive multiple of its
    spatial mean, so every channel weight is positive and the map is the (normalised) image.
    """
    import keras
    from keras import layers

    inputs = keras.Input((input_size, input_size, 1), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="scale_01")(inputs)
    x = layers.Conv2D(1, 1, activation="relu", name="passthrough",
                      kernel_initializer="ones", bias_initializer="zeros")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    slopes = np.linspace(4.0, 16.0, n_classes, dtype=np.float32)[None, :]
    # Logits a_k * mean + b_k cross at evenly spaced brightness levels, so predictions vary with it.
    crossings = np.linspace(0.15, 0.45, n_classes, dtype=np.float32)
    biases = -np.cumsum(np.r_[0.0, np.diff(slopes[0]) * crossings[1:]]).astype(np.float32)
    head = layers.Dense(n_classes, activation="softmax", name="predictions")
    outputs = head(x)
    model = keras.Model(inputs, outputs, name="foreground_probe")
    head.set_weights([slopes, biases])
    return model


def save_probe(model, path: str | Path) -> Path:
    """Save a probe as ``.keras`` (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path
