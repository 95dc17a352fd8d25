"""Precise BatchNormalization statistics: re-estimated over the training distribution after training.

A BatchNormalization layer keeps an exponential moving average of the batch statistics it saw while
training. The average lags the weights (the early batches of the window were seen by other weights), and
after averaging weights (SWA, Izmailov et al. 2018) there are no statistics that belong to the averaged
weights at all. Re-estimating them as the plain mean over one pass of the training pipeline, with the
weights fixed, is the population statistic of Ioffe & Szegedy (2015) ("precise BN", Wu & Johnson 2021).
The pass uses the training augmentation: statistics of clean images alone (measured) raised the demo
model's balanced accuracy as much but left it unable to take the stability check's noise (59% of
predictions flipped at sigma 0.05, against 4% with the augmented pass); docs/measurements.md, 2026-12-03.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np


def training_batchnorms(model) -> list:
    """The BatchNormalization layers that update their statistics in training mode (trainable ones: Keras
    runs a frozen BatchNormalization in inference mode, and those keep the statistics they were given)."""
    import keras

    found = []

    def walk(layer, trainable: bool):
        trainable = trainable and layer.trainable
        if isinstance(layer, keras.layers.BatchNormalization):
            if trainable:
                found.append(layer)
            return
        for child in getattr(layer, "layers", []):
            walk(child, trainable)

    walk(model, True)
    return found


def recalibrate_batchnorm(model, batches: Iterable) -> int:
    """Replace the moving statistics of every training BatchNormalization layer by their mean over
    ``batches`` (model inputs, or ``(inputs, labels)`` tuples: one pass of the training pipeline). Returns
    the number of layers re-estimated.

    Each batch's statistics enter a running mean (momentum k/(k+1) at batch k), so the result is the
    average over all batches; a seeded pipeline makes it the same on every replica and on a resumed run.
    """
    layers = training_batchnorms(model)
    if not layers:
        return 0
    saved = [layer.momentum for layer in layers]
    try:
        for layer in layers:
            layer.moving_mean.assign(np.zeros(layer.moving_mean.shape, dtype="float32"))
            layer.moving_variance.assign(np.ones(layer.moving_variance.shape, dtype="float32"))
        for k, batch in enumerate(batches):
            inputs = batch[0] if isinstance(batch, tuple) else batch
            for layer in layers:
                layer.momentum = k / (k + 1.0)
            model(inputs, training=True)
    finally:
        for layer, momentum in zip(layers, saved):
            layer.momentum = momentum
    return len(layers)


def training_pass(images: np.ndarray, labels: np.ndarray, config) -> Iterable:
    """One pass of the run's training pipeline (its augmentation, seed and batch size) over ``images``."""
    from model.pipeline import make_dataset

    return make_dataset(images, labels, batch_size=config.batch_size, training=True, augment=config.augment,
                        seed=config.seed, noise=config.augment_noise, flip=config.flip,
                        intensity=config.augment_intensity)


def recalibrate_run(run_dir) -> int:
    """Re-estimate the statistics of a finished ``alzaudit train`` run's model in place (``model.keras`` and
    the last phase's model): for a run trained before this step existed, or with ``--no-precise-bn``.
    The same pass training ends with (the run's own configuration, split and seed), so the result is the
    model the run would have written. Returns the number of layers re-estimated."""
    import json
    from pathlib import Path

    import keras

    from model.fileio import atomic_path
    from model.manifest import load_dataset
    from model.pipeline import load_slices
    from model.train import TrainConfig

    run_dir = Path(run_dir)
    saved = json.loads((run_dir / "config.json").read_text())["config"]
    config = TrainConfig(**{k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__})
    train_split = load_dataset(run_dir / "split_manifest.csv").split("train")
    images = load_slices(train_split.samples, (config.input_size, config.input_size))
    labels = np.array(train_split.label_indices())
    keras.utils.set_random_seed(config.seed)
    model = keras.models.load_model(run_dir / "model.keras", safe_mode=True)
    layers = recalibrate_batchnorm(model, training_pass(images, labels, config))
    last_phase = run_dir / f"phase{max(config.plan or [2])}_model.keras"
    for path in (run_dir / "model.keras", last_phase):
        with atomic_path(path, suffix=".keras") as tmp:
            model.save(tmp)
    return layers
