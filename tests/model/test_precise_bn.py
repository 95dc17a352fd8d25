"""Precise BatchNormalization statistics and weight averaging: the two steps that make the demo recipe's
model the same kind of model on every seed (docs/measurements.md)."""
from __future__ import annotations

import numpy as np
import pytest


def _tiny(frozen_bn: bool = False):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(3, 3, name="conv"),
                              keras.layers.BatchNormalization(name="bn"),
                              keras.layers.BatchNormalization(name="frozen"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    model.get_layer("frozen").trainable = not frozen_bn
    return model


def test_recalibration_sets_the_mean_of_the_batch_statistics_and_leaves_frozen_layers_alone():
    import keras

    from model.precise_bn import recalibrate_batchnorm

    model = _tiny(frozen_bn=True)
    images = np.random.default_rng(0).integers(0, 256, (12, 8, 8), dtype=np.uint8)
    frozen_before = [w.copy() for w in model.get_layer("frozen").get_weights()]
    batches = [images[i:i + 4, ..., None].astype("float32") for i in range(0, 12, 4)]
    assert recalibrate_batchnorm(model, batches) == 1
    conv = keras.Model(model.inputs, model.get_layer("conv").output)
    activations = np.asarray(conv(images[..., None].astype("float32")))
    batches = activations.reshape(3, 4, *activations.shape[1:])
    bn = model.get_layer("bn")
    np.testing.assert_allclose(np.asarray(bn.moving_mean), activations.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(bn.moving_variance), batches.var(axis=(1, 2, 3)).mean(axis=0),
                               rtol=1e-3, atol=1e-4)
    assert bn.momentum == 0.99   # the layer's own momentum is back
    for before, after in zip(frozen_before, model.get_layer("frozen").get_weights()):
        np.testing.assert_array_equal(before, after)


def test_a_frozen_model_has_nothing_to_recalibrate():
    from model.precise_bn import recalibrate_batchnorm

    model = _tiny()
    model.trainable = False
    assert recalibrate_batchnorm(model, [np.zeros((4, 8, 8, 1), np.float32)]) == 0


def test_weight_averaging_is_the_mean_of_the_averaged_epochs_and_survives_a_resume(tmp_path):
    from model.train_callbacks import PhaseCheckpoint

    model = _tiny()
    state = {"completed": [], "current": 2, "phase_state": {"epoch": -1, "best": None, "best_epoch": None, "wait": 0}}
    rng = np.random.default_rng(1)
    seen = []

    def epoch(callback, number):
        weights = [rng.normal(size=w.shape).astype("float32") for w in model.get_weights()]
        model.set_weights(weights)
        callback.on_epoch_end(number, {"val_loss": 1.0 + number})
        return weights

    first = PhaseCheckpoint(tmp_path, 2, state, patience=10, average_from=1)
    first.set_model(model)
    epoch(first, 0)                       # before the averaged window: not in the mean
    seen.append(epoch(first, 1))
    resumed = PhaseCheckpoint(tmp_path, 2, state, patience=10, average_from=1)   # a new process, same state
    resumed.set_model(model)
    seen.append(epoch(resumed, 2))
    assert "averaged over epochs 2-3 (2)" in resumed.restore_best(model)
    for got, *epochs in zip(model.get_weights(), *seen):
        np.testing.assert_allclose(got, np.mean(epochs, axis=0), rtol=1e-5, atol=1e-6)


def test_without_averaging_the_best_epoch_by_val_loss_is_restored(tmp_path):
    from model.train_callbacks import PhaseCheckpoint

    model = _tiny()
    state = {"completed": [], "current": 2, "phase_state": {"epoch": -1, "best": None, "best_epoch": None, "wait": 0}}
    callback = PhaseCheckpoint(tmp_path, 2, state, patience=10)
    callback.set_model(model)
    best = [w + 1.0 for w in model.get_weights()]
    model.set_weights(best)
    callback.on_epoch_end(0, {"val_loss": 0.5})
    model.set_weights([w * 0 for w in best])
    callback.on_epoch_end(1, {"val_loss": 0.9})
    assert "best epoch by val_loss (1)" in callback.restore_best(model)
    for got, want in zip(model.get_weights(), best):
        np.testing.assert_allclose(got, want)


def test_a_negative_average_is_refused(oasis_dir, tmp_path):
    from model.errors import ParameterError
    from model.train import TrainConfig, train

    with pytest.raises(ParameterError, match="average_last"):
        train(TrainConfig(data=str(oasis_dir), out=str(tmp_path), input_size=32, epochs_phase2=1, average_last=-1))


def test_the_pass_is_the_training_pipeline_with_its_augmentation():
    """Statistics of clean images alone left the demo model unable to take noise (measured): the pass must
    carry the run's augmentation, noise included."""
    from types import SimpleNamespace

    from model.precise_bn import training_pass

    images = np.full((8, 16, 16), 100, np.uint8)
    config = SimpleNamespace(batch_size=4, augment=True, seed=0, augment_noise=0.05, flip="none",
                             augment_intensity=False)
    batches = [np.asarray(x) for x, _ in training_pass(images, np.zeros(8, np.int64), config)]
    assert [b.shape[0] for b in batches] == [4, 4]
    assert all(b.std() > 5.0 for b in batches)          # the noise is there
    clean = SimpleNamespace(**{**vars(config), "augment": False})
    assert all(np.allclose(np.asarray(x), 100.0) for x, _ in training_pass(images, np.zeros(8, np.int64), clean))
