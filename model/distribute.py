"""tf.distribute for training and for the audit's heavy arrays: pick a strategy, split rows across replicas.

Why a module of its own: the strategy must be chosen before TensorFlow starts its runtime (a
MultiWorkerMirroredStrategy configures collective ops at start-up), training must build the model,
optimizer and checkpoints inside ``strategy.scope()``, and the explainers need one way to push a batch of
rows through every replica and get the rows back in their original order. No scheduler lives here:
TensorFlow's strategies do the work, on one host (``MirroredStrategy``, one replica per GPU) or on
several (``MultiWorkerMirroredStrategy``, hosts named in ``TF_CONFIG``).

``audit/distribute.py`` is the public face for the audit; this module stays in ``model/`` because
training and ``model.evaluate.predict`` use it and ``model/`` does not import ``audit/``.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from model.errors import ParameterError

STRATEGIES = ("auto", "one", "mirrored", "multiworker")
STRATEGY_HELP = ("auto (mirrored when more than one GPU is visible, else one device), one (the default "
                 "strategy: today's single-device path), mirrored (every local GPU, or every logical CPU "
                 "device), multiworker (hosts named in TF_CONFIG)")
_CREATED: dict[str, Any] = {}   # one strategy object per kind and process (a second MWMS cannot be made)


# ---------------------------------------------------------------------------------------------- choosing
def get_strategy(name: str | None = "auto"):
    """The ``tf.distribute.Strategy`` for ``name`` in :data:`STRATEGIES`; one object per kind and process.

    ``one`` is TensorFlow's default strategy, so code run under it is exactly the single-device code.
    ``mirrored`` uses every local GPU, or, without GPUs, every logical CPU device (one unless the CPU was
    split with ``tf.config.set_logical_device_configuration``); one device is fine (one replica).
    ``multiworker`` needs ``TF_CONFIG`` and must be chosen before TensorFlow runs any operation.
    """
    name = "auto" if name in (None, "") else str(name).strip().lower()
    if name not in STRATEGIES:
        raise ParameterError("strategy", f"unknown strategy '{name}' (choose {', '.join(STRATEGIES)})")
    import tensorflow as tf

    if name == "auto":
        name = "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "one"
    if name == "one":
        return tf.distribute.get_strategy()
    if name not in _CREATED:
        _CREATED[name] = _mirrored() if name == "mirrored" else _multiworker()
    return _CREATED[name]


def _mirrored():
    import tensorflow as tf

    devices = [d.name for d in tf.config.list_logical_devices("GPU")] or \
              [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices=devices)


def tf_config() -> dict:
    """``TF_CONFIG`` parsed and checked; a one-line error says what is missing."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    example = ('e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
               '"task": {"type": "worker", "index": 0}}\' (index 1 on the second host)')
    if not raw:
        raise ParameterError("strategy", f"multiworker: TF_CONFIG is not set; set it on every host, {example}")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ParameterError("strategy", f"multiworker: TF_CONFIG is not valid JSON ({exc.msg} at character "
                            f"{exc.pos}); {example}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not any(cluster.get(job) for job in ("worker", "chief")):
        raise ParameterError("strategy", f"multiworker: TF_CONFIG has no 'cluster' with 'worker' (or 'chief') "
                            f"addresses; {example}")
    if not isinstance(task, dict) or task.get("type") not in cluster or not isinstance(task.get("index"), int) \
            or not 0 <= task["index"] < len(cluster[task["type"]]):
        raise ParameterError("strategy", f"multiworker: TF_CONFIG's 'task' {task!r} does not name one of the "
                            f"cluster's tasks; {example}")
    return config


def _multiworker():
    import tensorflow as tf

    tf_config()
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except (RuntimeError, ValueError) as exc:
        raise ParameterError("strategy", f"multiworker: TensorFlow refused to start it ({' '.join(str(exc).split())}); "
                            "it must be chosen before TensorFlow runs anything") from None


# ---------------------------------------------------------------------------------------------- facts
def replicas(strategy) -> int:
    return int(strategy.num_replicas_in_sync)


def kind(strategy) -> str:
    """The :data:`STRATEGIES` name of a strategy object (``one`` for TensorFlow's default strategy)."""
    import tensorflow as tf

    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "multiworker"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return "mirrored"
    if strategy is None or type(strategy).__name__ == "_DefaultDistributionStrategy":
        return "one"
    return type(strategy).__name__


def task(strategy) -> tuple[str | None, int]:
    """``(task type, index)`` of this process in a multi-worker cluster, ``(None, 0)`` otherwise."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if kind(strategy) != "multiworker" or resolver is None:
        return None, 0
    return resolver.task_type, int(resolver.task_id or 0)


def is_chief(strategy) -> bool:
    """The process that writes outputs: the ``chief`` task, or worker 0 when the cluster has no chief
    (TensorFlow's multi-worker convention); always true off multi-worker."""
    task_type, task_id = task(strategy)
    if task_type is None:
        return True
    if task_type == "chief":
        return True
    cluster = getattr(strategy.cluster_resolver, "cluster_spec", lambda: None)()
    has_chief = bool(cluster and "chief" in cluster.as_dict())
    return task_type == "worker" and task_id == 0 and not has_chief


def describe(strategy) -> dict:
    """What config.json and audit.json record: the strategy's name, replicas, workers, devices, this task."""
    task_type, task_id = task(strategy)
    devices = list(strategy.extended.worker_devices) if kind(strategy) in ("mirrored", "multiworker") else []
    workers = 1
    if task_type is not None:
        cluster = strategy.cluster_resolver.cluster_spec().as_dict()
        workers = sum(len(cluster.get(job, [])) for job in ("chief", "worker"))
    return {"strategy": kind(strategy), "replicas": replicas(strategy), "workers": workers,
            "local_devices": devices or None, "task": None if task_type is None else {"type": task_type,
                                                                                     "index": task_id},
            "chief": is_chief(strategy)}


def write_dir(run_dir: str | os.PathLike, strategy) -> Path:
    """Where this process writes: ``run_dir`` on the chief, ``run_dir/workertemp_<type>_<index>`` on the other
    workers (TensorFlow's multi-worker guide: every worker saves, because saving may need collective
    ops, but only the chief's files are kept; :func:`remove_write_dir` deletes the others)."""
    run_dir = Path(run_dir)
    if is_chief(strategy):
        return run_dir
    task_type, task_id = task(strategy)
    return run_dir / f"workertemp_{task_type}_{task_id}"


def remove_write_dir(path: str | os.PathLike, strategy) -> None:
    """Delete a non-chief worker's temporary folder (never the chief's run folder)."""
    if not is_chief(strategy):
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- rows
def rows_per_replica(n_rows: int, n_replicas: int) -> int:
    """Rows per replica for one call: ``ceil(n / replicas)``; every replica gets the same count (the last
    ones padded by repeating a row), so shapes match across replicas and one trace serves them all."""
    return max(1, math.ceil(n_rows / max(n_replicas, 1)))


def distribute_step(strategy, step: Callable, n_outputs: int) -> Callable[..., tuple]:
    """Wrap a per-replica ``step(*tensors) -> tuple of n_outputs tensors (rows on axis 0)`` so that
    ``call(*arrays)`` splits the rows of ``arrays`` across the strategy's replicas, runs ``step`` on each
    replica in one compiled call, and returns the outputs as tensors with the rows in their original order.

    Each replica gets a contiguous block of rows. Rows carry their index through the step and are put back
    in order by it after the gather, so the result does not depend on how the strategy orders replicas
    (``MultiWorkerMirroredStrategy`` gathers across hosts). Padding rows repeat the last row and are
    dropped. Every worker of a multi-worker strategy must make the same calls with the same arrays.
    """
    import tensorflow as tf

    count = replicas(strategy)

    def with_index(index, *tensors):
        out = step(*tensors)
        out = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        return (index, *out)

    @tf.function(autograph=False, reduce_retracing=True)
    def run(values):
        out = strategy.run(lambda pack: with_index(*pack), args=(values,))
        return tuple(strategy.gather(v, axis=0) for v in out)

    specs = getattr(step, "input_signature", None)

    def call(*arrays):
        arrays = [np.asarray(a) if specs is None else np.asarray(a, specs[i].dtype.as_numpy_dtype)
                  for i, a in enumerate(arrays)]
        n = len(arrays[0])
        if n == 0:
            raise ValueError("distribute_step: no rows to split across replicas")
        size = rows_per_replica(n, count)
        total = size * count
        index = np.arange(total, dtype=np.int64)
        take = np.minimum(index, n - 1)
        padded = [a[take] for a in arrays]

        def value_fn(context):
            at = context.replica_id_in_sync_group * size
            rows = slice(at, at + size)
            return (tf.constant(index[rows]), *(tf.constant(p[rows]) for p in padded))

        values = strategy.experimental_distribute_values_from_function(value_fn)
        gathered = run(values)
        order = tf.argsort(gathered[0])[:n]
        return tuple(tf.gather(g, order) for g in gathered[1:1 + n_outputs])

    return call


def rows_per_epoch(n_rows: int, global_batch_size: int, n_replicas: int) -> int:
    """How many of ``n_rows`` examples an epoch can use under ``n_replicas`` replicas.

    A last batch with fewer rows than replicas leaves a replica with none, and TensorFlow cannot run an
    empty batch through BatchNormalization on a replica (measured with TF 2.21: a shape error, or a
    collective shape mismatch with synchronized statistics). Those few rows (fewer than the replica
    count) are left out of the epoch; with shuffling a different few each epoch. One replica keeps all.
    """
    leftover = n_rows % global_batch_size
    return n_rows - leftover if 0 < leftover < n_replicas else n_rows


def distributed(holder, step: Callable, strategy, n_outputs: int) -> Callable[..., tuple]:
    """The :func:`distribute_step` twin of ``step``, made once per (``holder``, strategy) and kept on
    ``holder`` (the cached single-device function), so it lives exactly as long as the model's cache."""
    twins = holder.__dict__.setdefault("_distributed_twins", {})
    entry = twins.get(id(strategy))
    if entry is None or entry[0] is not strategy:
        entry = twins[id(strategy)] = (strategy, distribute_step(strategy, step, n_outputs))
    return entry[1]


def global_batch(batch_size: int, strategy) -> int:
    """Rows per compiled call: ``batch_size`` per replica, so each device sees the batch it would see alone."""
    return int(batch_size) * (replicas(strategy) if strategy is not None else 1)


# ---------------------------------------------------------------------------------------------- Keras fit
@contextmanager
def keras_fit_fixes(model, strategy, element_spec) -> Iterator[None]:
    """Keep Keras 3's ``fit`` under a strategy equal to the one-device run, and working on several workers
    (keras-team/keras#20585, tensorflow/tensorflow#72388); only while ``fit`` runs, only under a strategy.

    (1) Before the first step Keras reads one batch from a fresh iterator just to learn the batch's shapes.
    That advances a reshuffling dataset, so epoch 1 would see the second permutation, not the one a
    one-device run sees; and under ``MultiWorkerMirroredStrategy`` it then averages the ``(x, y)`` tuple
    across replicas, which that strategy cannot reduce. The shapes are taken from the dataset's
    ``element_spec`` instead. (2) Under ``MultiWorkerMirroredStrategy`` each step's logs (scalars: loss,
    accuracy) are averaged with ``axis=0``, which a scalar lacks: they are averaged across replicas with
    ``axis=None`` (the same mean on every worker, so early stopping decides alike everywhere).
    The default strategy runs Keras untouched.
    """
    name = kind(strategy)
    if name == "one":
        yield
        return
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    if not hasattr(model, "_symbolic_build") or not hasattr(tf_trainer, "reduce_per_replica"):
        import keras

        raise ParameterError("strategy", f"{name}: this Keras ({keras.__version__}) lacks the internals alzaudit "
                            "adjusts for distributed fit() (measured with Keras 3.15); use strategy 'one'")
    original = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy_, reduction="auto"):
        if reduction not in ("auto", "mean") or kind(strategy_) != "multiworker":
            return original(values, strategy_, reduction=reduction)

        def one(value):
            if value.shape.rank == 0:
                return strategy_.reduce("MEAN", value, axis=None)
            return original(value, strategy_, reduction=reduction)

        return tree.map_structure(one, values)

    def maybe_symbolic_build(iterator=None, data_batch=None):
        with strategy.scope():
            model._symbolic_build(data_batch=element_spec if data_batch is None else data_batch)

    model._maybe_symbolic_build = maybe_symbolic_build
    if name == "multiworker":
        tf_trainer.reduce_per_replica = reduce_per_replica
    try:
        yield
    finally:
        tf_trainer.reduce_per_replica = original
        del model._maybe_symbolic_build
