"""tf.distribute: strategies by name, and training and the audit's arrays equal to one device's.

Two replicas need TensorFlow configured before it starts (two logical CPU devices, or a multi-worker
cluster from TF_CONFIG), which this session's TensorFlow already did; those checks run in subprocesses
(``tests/distribute_helper.py``) with a timeout, so nothing can hang the suite.

Tolerances. Arrays (predictions, Grad-CAM, IG): every row is computed by the same kernels on a slice of
the batch, so they agree to float32 rounding; 1e-5 absolute is the bar (measured: 0 to 1.1e-6). Training
loss after one epoch: the replicas' gradients are summed in another order and synchronized
BatchNormalization computes the variance in one pass (E[x^2] - E[x]^2) instead of two, so gradients
differ at float32 rounding (~1e-7); Adam's first steps are about lr x sign(gradient), so a gradient
component at rounding level can step either way and the loss moves by up to ~1e-4 of itself (measured:
at most 3e-4 relative, mostly below 1e-6). 1e-3 relative is the bar: the faults this guards against
moved the loss by 1e-2 to 4e-2 (per-replica BatchNorm statistics; a shuffle that skipped a permutation).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from model.errors import AlzAuditError

HELPER = Path(__file__).resolve().parents[1] / "distribute_helper.py"
ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 240          # seconds; a subprocess is killed after this (typical: 30-60 s on 2 busy cores)
ARRAY_TOL = 1e-5
LOSS_RTOL = 1e-3


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONHASHSEED="0", **extra)
    return env


def _result(output: str, returncode: int) -> dict:
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert returncode == 0 and lines, f"helper failed (exit {returncode}):\n{output[-4000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def run_helper(*args: str) -> dict:
    done = subprocess.run([sys.executable, str(HELPER), *args], capture_output=True, text=True, env=_env(),
                          timeout=TIMEOUT, cwd=ROOT)
    return _result(done.stdout + done.stderr, done.returncode)


def _free_ports(n: int) -> list[int]:
    sockets = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("localhost", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _close(a: float, b: float, rtol: float = LOSS_RTOL) -> bool:
    return abs(a - b) <= rtol * max(abs(a), abs(b))


# ---------------------------------------------------------------------------------------------- in-process
def test_strategy_names_and_user_errors(monkeypatch):
    import tensorflow as tf

    from audit.distribute import describe, get_strategy

    with pytest.raises(AlzAuditError, match="unknown strategy 'horovod'") as err:
        get_strategy("horovod")
    assert "\n" not in str(err.value)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(AlzAuditError, match="TF_CONFIG is not set"):
        get_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(AlzAuditError, match="not valid JSON"):
        get_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker",
                                                                                                "index": 3}}))
    with pytest.raises(AlzAuditError, match="does not name one of the cluster's tasks"):
        get_strategy("multiworker")
    one = get_strategy("one")
    assert one is tf.distribute.get_strategy() and describe(one)["strategy"] == "one"
    assert describe(get_strategy("auto"))["strategy"] == "one"          # no GPU in the tests
    mirrored = get_strategy("mirrored")                                 # one CPU device: fine, one replica
    assert describe(mirrored) == {**describe(mirrored), "strategy": "mirrored", "replicas": 1, "chief": True}
    assert get_strategy("MIRRORED") is mirrored                         # one object per kind and process


def test_one_replica_mirrored_arrays_equal_the_default_path():
    """The distributed code path itself (padding, gather, re-ordering) on the one replica this session has."""
    from audit.distribute import get_strategy, gradcam, integrated_gradients, predict
    from model.network import build_classifier

    strategy = get_strategy("mirrored")
    model = build_classifier("small", None, 32, seed=2)
    images = np.random.default_rng(2).uniform(0, 255, (5, 32, 32, 1)).astype(np.float32)
    assert np.abs(predict(model, images, batch_size=2) - predict(model, images, batch_size=2,
                                                                 strategy=strategy)).max() <= ARRAY_TOL
    assert np.abs(gradcam(model, images, batch_size=2) - gradcam(model, images, batch_size=2,
                                                                 strategy=strategy)).max() <= ARRAY_TOL
    one = integrated_gradients(model, images[:2], steps=8, batch_size=4)
    many = integrated_gradients(model, images[:2], steps=8, batch_size=4, strategy=strategy)
    assert np.abs(one.attributions - many.attributions).max() <= ARRAY_TOL


def test_rows_per_epoch_never_leaves_a_replica_empty():
    from model.distribute import rows_per_epoch

    assert rows_per_epoch(25, 8, 1) == 25          # one replica: every row
    assert rows_per_epoch(24, 8, 2) == 24          # no last partial batch
    assert rows_per_epoch(31, 8, 2) == 31          # last batch of 7: 4 + 3 rows
    assert rows_per_epoch(25, 8, 2) == 24          # last batch of 1 would leave one replica empty
    assert rows_per_epoch(67, 16, 4) == 64 and rows_per_epoch(68, 16, 4) == 68


def test_train_cli_multiworker_without_tf_config_is_one_line_error(monkeypatch, tmp_path, capsys):
    from alzaudit.cli import main

    monkeypatch.delenv("TF_CONFIG", raising=False)
    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--strategy", "multiworker"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "TF_CONFIG is not set" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "config.json").exists()


# ---------------------------------------------------------------------------------------------- two replicas
def test_mirrored_arrays_match_one_device():
    """Two logical CPU devices: predictions, Grad-CAM(++), IG fixed and adaptive within 1e-5 of one device."""
    result = run_helper("arrays")
    assert result["describe"]["replicas"] == 2 and result["describe"]["strategy"] == "mirrored"
    assert len(set(result["ig_steps_used"]["ig_adaptive"])) > 1      # the adaptive rounds really differed
    for where, diff in result["diff"].items():
        for name, value in diff.items():
            if name.endswith(("_same_steps", "_same_evaluations")):
                assert value is True, (where, name)
            elif not name.endswith("_relative"):
                assert value <= ARRAY_TOL, (where, name, value)


@pytest.mark.slow
def test_mirrored_training_matches_one_device(oasis_dir, tmp_path):
    """One epoch on two replicas (4 per replica) vs one device (batch 8): same loss within 1e-3 relative."""
    result = run_helper("train", str(oasis_dir), str(tmp_path / "one"), str(tmp_path / "mirrored"))
    one, mirrored = result["one"], result["mirrored"]
    assert one["distribute"]["replicas"] == 1 and one["distribute"]["global_batch"] == 8
    assert mirrored["distribute"] == {**mirrored["distribute"], "strategy": "mirrored", "replicas": 2,
                                      "per_replica_batch": 4, "global_batch": 8, "sync_batchnorm": True}
    for key in ("loss", "val_loss"):
        assert _close(one["logs"][0][key], mirrored["logs"][0][key]), (key, one["logs"], mirrored["logs"])
    config = json.loads((tmp_path / "mirrored" / "config.json").read_text())
    assert config["config"]["strategy"] == "mirrored"
    from model.network import load_model

    saved = load_model(tmp_path / "mirrored" / "model.keras")   # saved for single-device use
    assert not any(getattr(layer, "synchronized", False) for layer in saved.get_layer("small_resnet").layers)


def run_two_workers(*args: str, meanwhile=None) -> tuple[dict, dict]:
    """``distribute_helper.py *args`` as two workers of one cluster on free localhost ports (TF_CONFIG per
    process); ``meanwhile()`` runs here while they work. Both are killed after ``TIMEOUT`` seconds."""
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    workers = [subprocess.Popen([sys.executable, str(HELPER), *args], cwd=ROOT, text=True,
                                env=_env(TF_CONFIG=json.dumps({"cluster": cluster,
                                                               "task": {"type": "worker", "index": i}})),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
               for i in range(2)]
    deadline = time.monotonic() + TIMEOUT
    try:
        if meanwhile is not None:
            meanwhile()
        outputs = [worker.communicate(timeout=max(1.0, deadline - time.monotonic()))[0] for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
    first, second = (_result(text, worker.returncode) for text, worker in zip(outputs, workers))
    return first, second


@pytest.mark.slow
def test_multiworker_arrays_match_one_device():
    """Two worker processes, one replica each: predictions, Grad-CAM and adaptive IG within 1e-5 of one device."""
    for result in run_two_workers("worker-arrays"):
        assert result["describe"]["replicas"] == 2 and result["describe"]["workers"] == 2
        assert result["diff"].pop("ig_same_steps") is True
        assert len(set(result["ig_steps_used"])) > 1
        assert max(result["diff"].values()) <= ARRAY_TOL, result["diff"]


@pytest.mark.slow
def test_multiworker_training_on_two_local_workers(oasis_dir, tmp_path):
    """Two worker processes on localhost ports (TF_CONFIG each): one epoch, interrupted after its checkpoint
    and resumed; the chief writes the run folder, the worker's temporary folder is removed, and the
    loss equals a one-device run's (computed here meanwhile) within 1e-3 relative."""
    import csv

    from model.train import TrainConfig, train

    from distribute_helper import TRAIN  # tests/ is on sys.path (pytest's rootdir conftest)

    out = tmp_path / "multi"
    reference_run = tmp_path / "one"
    chief, other = run_two_workers("worker", str(oasis_dir), str(out), meanwhile=lambda: train(TrainConfig(
        data=str(oasis_dir), out=str(reference_run), batch_size=8, strategy="one", **TRAIN)))
    assert chief["chief"] and not other["chief"]
    assert chief["describe"]["replicas"] == 2 and chief["describe"]["workers"] == 2
    assert chief["write_dir"] == out.as_posix() and other["write_dir"].startswith(out.as_posix() + "/workertemp_")
    assert not other["write_dir_left"] and not Path(other["write_dir"]).exists()
    assert chief["final"] == other["final"] == (out / "model.keras").as_posix()
    for name in ("model.keras", "phase2_model.keras", "checkpoints/phase2_last.keras", "config.json", "state.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob("workertemp_*"))
    assert chief["resumed"] and chief["resumed"][-1]["distribute"]["global_batch"] == 8
    reference = [{k: float(v) for k, v in row.items()}
                 for row in csv.DictReader((reference_run / "phase2_log.csv").open())]
    for key in ("loss", "val_loss"):
        assert _close(reference[0][key], chief["logs"][0][key]), (key, reference, chief["logs"])
