"""Training: the phase plan, resumable checkpoints, frozen vs fine-tuned weights, evaluation outputs."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from model.errors import AlzAuditError
from model.train import TrainConfig, set_trainable, train


@pytest.fixture(scope="module")
def trained_run(oasis_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(data=str(oasis_dir), out=str(out), backbone="small", weights=None, input_size=32,
                         batch_size=8, epochs_phase2=2, lr_phase2=1e-3, seed=0)
    return train(config), out


def test_run_folder_has_every_artifact(trained_run):
    model_path, out = trained_run
    for name in ("config.json", "phase2_log.csv", "phase2_model.keras", "model.keras", "split_manifest.csv",
                 "training_curves.png", "checkpoints/phase2_last.keras", "checkpoints/phase2_best.keras"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["plan"] == [2]
    assert "phase 1 skipped" in config["config"]["plan_reason"]
    assert config["environment"]["tensorflow"]
    rows = list(csv.DictReader((out / "phase2_log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert not list(out.glob("**/.*.keras"))  # no temporary files left behind


def test_refuses_to_overwrite_and_resume_needs_a_run(trained_run, oasis_dir, tmp_path):
    _, out = trained_run
    with pytest.raises(AlzAuditError, match="--resume"):
        train(TrainConfig(data=str(oasis_dir), out=str(out), input_size=32))
    with pytest.raises(AlzAuditError, match="nothing to resume"):
        train(TrainConfig(data=str(oasis_dir), out=str(tmp_path / "new"), input_size=32), resume=True)


@pytest.mark.slow
def test_interrupted_run_resumes_without_losing_epochs(oasis_dir, tmp_path, monkeypatch):
    from model import train_callbacks

    original = train_callbacks.PhaseCheckpoint.on_epoch_end

    def crash_after_second_epoch(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_callbacks.PhaseCheckpoint, "on_epoch_end", crash_after_second_epoch)
    config = TrainConfig(data=str(oasis_dir), out=str(tmp_path), input_size=32, batch_size=8,
                         epochs_phase2=4, lr_phase2=1e-3, patience=10)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    assert not (tmp_path / "model.keras").exists()
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["phase_state"]["epoch"] == 1 and state["current"] == 2
    monkeypatch.setattr(train_callbacks.PhaseCheckpoint, "on_epoch_end", original)
    train(TrainConfig(data=str(oasis_dir), out=str(tmp_path)), resume=True)
    epochs = [int(r["epoch"]) for r in csv.DictReader((tmp_path / "phase2_log.csv").open())]
    assert epochs == [0, 1, 2, 3]
    assert (tmp_path / "model.keras").is_file()


def test_resnet50_phase1_freezes_backbone_and_phase2_fine_tunes_with_bn_frozen():
    import keras

    from model.network import backbone_layer, build_classifier

    model = build_classifier("resnet50", weights=None, input_size=32, seed=0)
    backbone = backbone_layer(model)
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 1)).astype("float32")
    y = np.array([0, 1, 2, 3])

    def snapshot():
        conv = backbone.get_layer("conv5_block3_3_conv").kernel.numpy().copy()
        bn = backbone.get_layer("conv5_block3_3_bn").moving_mean.numpy().copy()
        head = model.get_layer("predictions").kernel.numpy().copy()
        return conv, bn, head

    set_trainable(model, 1, pretrained=True)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    before = snapshot()
    model.train_on_batch(x, y)
    after = snapshot()
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    assert not np.array_equal(before[2], after[2])

    set_trainable(model, 2, pretrained=True)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.train_on_batch(x, y)
    final = snapshot()
    assert not np.array_equal(after[0], final[0])      # conv weights fine-tuned
    assert np.array_equal(after[1], final[1])          # BatchNorm statistics kept (inference mode)


def test_small_backbone_contract_and_size():
    from model.network import build_classifier

    model = build_classifier("small", weights=None, input_size=64)
    assert model.count_params() <= 2_000_000
    assert model.input_shape == (None, 64, 64, 1)
    assert model.get_layer("small_resnet").get_layer("block4_out").output.shape[1:3] == (8, 8)


def test_offline_imagenet_download_gives_a_clear_error(monkeypatch):
    import keras

    from model.network import build_classifier

    def no_network(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3]")

    monkeypatch.setattr(keras.applications, "ResNet50", no_network)
    with pytest.raises(AlzAuditError) as err:
        build_classifier("resnet50", weights="imagenet", input_size=32)
    assert "--weights PATH" in str(err.value) and "\n" not in str(err.value)


def test_model_from_another_keras_version_names_both_versions(tmp_path):
    import zipfile

    from model.network import load_model

    path = tmp_path / "future.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", '{"keras_version": "9.9.9", "date_saved": "2031-01-01"}')
        archive.writestr("config.json", '{"class_name": "FutureModel", "config": {}}')
        archive.writestr("model.weights.h5", b"")
    with pytest.raises(AlzAuditError) as err:
        load_model(path)
    message = str(err.value)
    assert "saved with Keras 9.9.9" in message and "keras==9.9.9" in message and "\n" not in message


def test_load_model_refuses_lambda_layers_and_non_models(tmp_path):
    import keras

    from model.network import load_model

    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Dense(4, activation="softmax")(keras.layers.Flatten()(keras.layers.Lambda(lambda t: t * 2)(inputs)))
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(AlzAuditError, match="--unsafe-load"):
        load_model(path)
    assert load_model(path, unsafe=True) is not None
    junk = tmp_path / "junk.keras"
    junk.write_text("not a model")
    with pytest.raises(AlzAuditError, match="not a Keras model"):
        load_model(junk)
    with pytest.raises(AlzAuditError, match="not found"):
        load_model(tmp_path / "missing.keras")


def test_evaluate_writes_predictions_and_metrics(trained_run, tmp_path):
    from model.evaluate_run import evaluate_model

    model_path, out = trained_run
    metrics = evaluate_model(model_path, out / "split_manifest.csv", out_dir=tmp_path, n_resamples=50)
    assert (tmp_path / "predictions.csv").is_file() and (tmp_path / "metrics.json").is_file()
    assert metrics["ci_method"] == "subject bootstrap"
    lo, hi = metrics["ci"]["accuracy"]
    assert 0.0 <= lo <= hi <= 1.0
    assert set(metrics["not_estimable"]) == {"NonDemented", "VeryMildDemented", "MildDemented", "ModerateDemented"}
    assert sum(map(sum, metrics["confusion"])) == metrics["n_images"]
