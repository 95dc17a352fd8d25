"""Subprocess side of tests/test_distribute.py: runs in a fresh Python so TensorFlow can be configured
before it starts (two logical CPU devices, or a multi-worker cluster from TF_CONFIG), which the test
session's already-started TensorFlow cannot be. Prints one JSON line, prefixed ``RESULT ``.

    python tests/distribute_helper.py arrays
    python tests/distribute_helper.py train DATA OUT_ONE OUT_MIRRORED
    python tests/distribute_helper.py worker DATA OUT       (TF_CONFIG set by the caller)
    python tests/distribute_helper.py worker-arrays         (TF_CONFIG set by the caller)
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["CUDA_VISIBLE_DEVICES"] = ""
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

# One epoch, small backbone at 32 px, dropout off (Keras 3 draws the same dropout mask on every replica,
# so with dropout the replicas' masks differ from one device's: a real, documented difference).
TRAIN = dict(backbone="small", weights=None, input_size=32, epochs_phase2=1, lr_phase2=1e-3, seed=0,
             dropout=0.0, augment=True, patience=5)


def two_cpu_devices() -> None:
    """Split the one physical CPU into two logical devices: MirroredStrategy then has two replicas."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


def emit(result: dict) -> None:
    print("RESULT " + json.dumps(result), flush=True)


def arrays() -> dict:
    """Predictions, Grad-CAM, Grad-CAM++ and IG (fixed and adaptive) on one device vs two replicas."""
    two_cpu_devices()
    from audit.distribute import (describe, get_strategy, gradcam, gradcam_plus_plus, integrated_gradients,
                                  load_model, predict)
    from audit.explain.layers import predict as predict_float32
    from model.network import build_classifier

    strategy = get_strategy("mirrored")
    rng = np.random.default_rng(0)
    # 11 images: uneven over 2 replicas; varied brightness and a bright square, so that adaptive IG
    # (blur baseline) refines the images to different step counts
    images = (rng.uniform(0, 255, (11, 32, 32, 1)) * rng.uniform(0.1, 1, (11, 1, 1, 1)) ** 3).astype(np.float32)
    images[:, 8:20, 8:20] = 250
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"alzaudit-dist-{os.getpid()}.keras"
    build_classifier("small", None, 32, seed=3).save(path)
    out: dict = {"describe": describe(strategy), "diff": {}}
    try:
        for where, model in (("loaded_in_scope", load_model(path, strategy)), ("plain", load_model(path))):
            diff = out["diff"][where] = {}
            diff["predict"] = float(np.abs(predict(model, images, batch_size=4)
                                           - predict(model, images, batch_size=4, strategy=strategy)).max())
            if where == "plain":
                diff["gradcam"] = float(np.abs(gradcam(model, images, batch_size=4)
                                               - gradcam(model, images, batch_size=4, strategy=strategy)).max())
                continue
            diff["predict_float32"] = float(np.abs(
                predict_float32(model, images, batch_size=4)
                - predict_float32(model, images, batch_size=4, strategy=strategy)).max())
            diff["gradcam"] = float(np.abs(gradcam(model, images, batch_size=4)
                                           - gradcam(model, images, batch_size=4, strategy=strategy)).max())
            diff["gradcam_pp"] = float(np.abs(
                gradcam_plus_plus(model, images, batch_size=4)
                - gradcam_plus_plus(model, images, batch_size=4, strategy=strategy)).max())
            for name, kwargs in (("ig_fixed", {"steps": 16}), ("ig_adaptive", {"tolerance": 0.01, "min_steps": 4,
                                                                      "max_steps": 64, "baseline": "blur"})):
                one = integrated_gradients(model, images[:5], batch_size=16, **kwargs)
                many = integrated_gradients(model, images[:5], batch_size=16, strategy=strategy, **kwargs)
                diff[name] = float(np.abs(one.attributions - many.attributions).max())
                diff[name + "_relative"] = diff[name] / float(np.abs(one.attributions).max())
                diff[name + "_heatmaps"] = float(np.abs(one.heatmaps - many.heatmaps).max())
                diff[name + "_same_steps"] = bool((one.steps_used == many.steps_used).all())
                diff[name + "_same_evaluations"] = one.gradient_evaluations == many.gradient_evaluations
                out.setdefault("ig_steps_used", {})[name] = one.steps_used.tolist()
    finally:
        path.unlink(missing_ok=True)
    return out


def _epoch_logs(run: Path) -> list[dict]:
    import csv

    return [{k: float(v) for k, v in row.items()} for row in csv.DictReader((run / "phase2_log.csv").open())]


def train_both(data: str, out_one: str, out_mirrored: str) -> dict:
    """One epoch on one device (batch 8) and on two replicas (4 per replica: the same global batch)."""
    two_cpu_devices()
    from model.train import TrainConfig, train

    result = {}
    for name, out, batch in (("one", out_one, 8), ("mirrored", out_mirrored, 4)):
        start = time.perf_counter()
        train(TrainConfig(data=data, out=out, batch_size=batch, strategy=name, **TRAIN))
        config = json.loads((Path(out) / "config.json").read_text())
        result[name] = {"logs": _epoch_logs(Path(out)), "distribute": config["distribute"],
                        "seconds": round(time.perf_counter() - start, 1)}
    return result


class Interrupted(Exception):
    """Stands in for a crash or Ctrl-C after a checkpoint was written."""


def worker(data: str, out: str) -> dict:
    """A one-epoch multi-worker run (one replica per worker, 4 per replica: global batch 8) stopped right
    after its epoch's checkpoint (before the phase's model was saved), then finished with ``resume``."""
    from model import distribute, train_callbacks
    from model.train import TrainConfig, train

    original = train_callbacks.PhaseCheckpoint.on_epoch_end

    def stop_after_first_epoch(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 0:
            raise Interrupted

    start = time.perf_counter()
    config = dict(TRAIN)
    train_callbacks.PhaseCheckpoint.on_epoch_end = stop_after_first_epoch
    try:
        train(TrainConfig(data=data, out=out, batch_size=4, strategy="multiworker", **config))
        raise AssertionError("the interruption did not happen")
    except Interrupted:
        pass
    finally:
        train_callbacks.PhaseCheckpoint.on_epoch_end = original
    strategy = distribute.get_strategy("multiworker")
    temp = distribute.write_dir(out, strategy)
    result = {"chief": distribute.is_chief(strategy), "describe": distribute.describe(strategy),
              "write_dir": temp.as_posix(), "write_dir_left_after_interruption": temp.exists()}
    if not result["chief"]:  # a real restart comes after the chief's files are complete; here, wait for them
        _wait_for_chief_checkpoint(Path(out))
    final = train(TrainConfig(data=data, out=out, batch_size=4, strategy="multiworker", **config), resume=True)
    result.update(final=final.as_posix(), write_dir_left=temp.exists(), seconds=round(time.perf_counter() - start, 1))
    if result["chief"]:
        result["logs"] = _epoch_logs(Path(out))
        result["resumed"] = json.loads((Path(out) / "config.json").read_text()).get("resumed")
    return result


def worker_arrays() -> dict:
    """Predictions, Grad-CAM and IG under the multi-worker strategy (TF_CONFIG) vs this worker alone."""
    from audit.distribute import describe, get_strategy, gradcam, integrated_gradients, predict
    from model.network import build_classifier

    strategy = get_strategy("multiworker")
    with strategy.scope():
        model = build_classifier("small", None, 32, seed=3)
    rng = np.random.default_rng(0)
    images = (rng.uniform(0, 255, (7, 32, 32, 1)) * rng.uniform(0.1, 1, (7, 1, 1, 1)) ** 3).astype(np.float32)
    diff = {"predict": float(np.abs(predict(model, images, batch_size=2)
                                    - predict(model, images, batch_size=2, strategy=strategy)).max()),
            "gradcam": float(np.abs(gradcam(model, images, batch_size=2)
                                    - gradcam(model, images, batch_size=2, strategy=strategy)).max())}
    kwargs = {"tolerance": 0.01, "min_steps": 4, "max_steps": 32, "baseline": "blur", "batch_size": 8}
    one = integrated_gradients(model, images[:3], **kwargs)
    many = integrated_gradients(model, images[:3], strategy=strategy, **kwargs)
    diff["ig"] = float(np.abs(one.attributions - many.attributions).max())
    diff["ig_same_steps"] = bool((one.steps_used == many.steps_used).all())
    return {"describe": describe(strategy), "diff": diff, "ig_steps_used": one.steps_used.tolist()}


def _wait_for_chief_checkpoint(out: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads((out / "state.json").read_text())["phase_state"]["epoch"] == 0:
                return
        except (OSError, ValueError, KeyError, TypeError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{out}: the chief wrote no checkpoint of epoch 0 within {timeout:.0f} s")


def main(argv: list[str]) -> int:
    mode, args = argv[0], argv[1:]
    result = {"arrays": arrays, "train": train_both, "worker": worker,
              "worker-arrays": worker_arrays}[mode](*args)
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
