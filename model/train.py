"""Two-phase training: a frozen pretrained backbone first, then fine-tuning with BatchNorm kept frozen.

Every epoch writes a checkpoint, the best-so-far model and the early-stopping state atomically, so an
interrupted run continues with ``--resume`` from where it stopped without losing epochs or the best
weights. Backbones without pretrained weights have nothing to protect, so phase 1 is skipped and
BatchNormalization trains normally.

Training runs under a ``tf.distribute`` strategy (``TrainConfig.strategy``, see ``model/distribute.py``):
the model, optimizer and checkpoints are made in its scope and ``batch_size`` is per replica, so the
global batch is ``batch_size`` x replicas. On several workers only the chief writes the run folder; the
others write to a temporary folder inside it that is removed when they finish.
"""
from __future__ import annotations

import json
import math
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from model import distribute
from model.classes import CLASSES
from model.errors import AlzAuditError, ParameterError
from model.fileio import atomic_path, atomic_write_json
from model.manifest import Manifest, load_dataset, write_manifest

STATE_FILE = "state.json"


@dataclass
class TrainConfig:
    data: str
    out: str
    backbone: str = "small"
    weights: str | None = None
    input_size: int = 128
    batch_size: int = 32
    epochs_phase1: int = 10
    epochs_phase2: int = 20
    lr_phase1: float = 1e-4
    lr_phase2: float = 1e-5
    patience: int = 5
    class_weight: str | None = None      # None | "balanced"
    phases: str = "auto"                 # "auto" | "1" | "2" | "1,2"
    augment: bool = True
    seed: int = 0
    ratios: str = "0.7,0.15,0.15"
    group: str = "subject"
    augment_noise: float = 0.0           # Gaussian noise augmentation, fraction of the intensity range
    flip: str = "horizontal_and_vertical"  # augmentation flips (the reference method's); "horizontal" | "none"
    augment_intensity: bool = False      # scanner augmentation: gamma, gain, bias field (model/pipeline.augmenter)
    lr_schedule: str = "constant"        # "constant" (the reference method) | "cosine" (decay to 0 over the phase)
    dropout: float = 0.5                 # before the classification head (build_classifier)
    average_last: int = 0                # >0: a phase's model is its last N epochs' weights averaged, not its best epoch
    precise_bn: bool = True              # re-estimate trained BatchNormalization statistics over one pass
                                         # of the training pipeline at the end of each phase (model/precise_bn.py)
    strategy: str = "auto"               # "auto" | "one" | "mirrored" | "multiworker" (model/distribute.py)
    plan: list = field(default_factory=list)
    plan_reason: str = ""

    def resolve_plan(self) -> None:
        pretrained = self.weights not in (None, "none", "")
        if self.phases == "auto":
            self.plan = [1, 2] if pretrained else [2]
            self.plan_reason = ("pretrained backbone: phase 1 trains the head on a frozen backbone, phase 2 "
                                "fine-tunes with BatchNormalization frozen" if pretrained else
                                "no pretrained weights: nothing to freeze for, phase 1 skipped and "
                                "BatchNormalization trains normally")
        else:
            try:
                self.plan = sorted({int(p) for p in self.phases.split(",")})
            except ValueError:
                self.plan = []
            if not self.plan or any(p not in (1, 2) for p in self.plan):
                raise ParameterError("phases", f"'{self.phases}' (use auto, 1, 2 or 1,2)")
            self.plan_reason = f"phases set by --phases {self.phases}"


def environment() -> dict:
    import keras
    import tensorflow as tf

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "device": device_description()}


def device_description() -> dict:
    """Which device TensorFlow will use: CUDA GPU, Apple GPU (tensorflow-metal) or CPU."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        try:
            details = tf.config.experimental.get_device_details(gpus[0])
        except Exception:
            details = {}
        name = details.get("device_name") or gpus[0].name
        kind = "mps" if platform.system() == "Darwin" else "gpu"
        return {"kind": kind, "name": str(name), "count": len(gpus)}
    return {"kind": "cpu", "name": platform.processor() or platform.machine(), "count": 1}


def _deterministic_ops() -> None:
    """Same seed, same model: TensorFlow's deterministic kernels (slightly slower, worth it for an audit)."""
    import tensorflow as tf

    try:
        tf.config.experimental.enable_op_determinism()
    except (AttributeError, RuntimeError):
        pass


def set_trainable(model, phase: int, pretrained: bool) -> None:
    """Phase 1: only the head trains. Phase 2: everything, but BatchNorm stays in inference mode when
    the backbone is pretrained (Keras runs a non-trainable BatchNormalization layer in inference mode,
    which keeps fine-tuning from wrecking the pretrained statistics)."""
    import keras

    from model.network import backbone_layer

    backbone = backbone_layer(model)
    if backbone is None:
        return
    backbone.trainable = phase == 2
    if phase == 2 and pretrained:
        for layer in _walk(backbone):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False


def _walk(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _walk(layer)


def class_weights(labels: np.ndarray, mode: str | None) -> dict | None:
    if mode in (None, "none"):
        return None
    if mode != "balanced":
        raise ParameterError("class_weight", f"'{mode}' (use balanced or none)")
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    return {int(c): float(w) for c, w in zip(present, weights)}


def prepare_split(config: TrainConfig, run_dir: Path, read_dir: Path | None = None, *,
                  group_by: Callable[[Manifest], list] | None = None) -> Manifest:
    """The manifest this run trains on, split subject-aware when needed, saved into the run folder.

    ``read_dir``: where a saved split is looked for first (a worker resuming reads the chief's folder).
    ``group_by``: with ``group="pseudo"``, the function giving each sample its pseudo-subject (the
    application passes ``audit.leakage.pseudo_subjects``: the near-duplicate search lives above ``model/``)."""
    saved = Path(read_dir or run_dir) / "split_manifest.csv"
    if not saved.is_file():
        saved = run_dir / "split_manifest.csv"
    if saved.is_file():
        from model.manifest import read_manifest

        return read_manifest(saved)
    manifest = load_dataset(config.data)
    if not manifest.has_splits:
        from model.splits import split_manifest

        groups = None
        if config.group == "pseudo":
            if group_by is None:
                raise AlzAuditError("group: 'pseudo' needs group_by, a function giving each sample its "
                                    "pseudo-subject (e.g. audit.leakage.pseudo_subjects)")
            groups = group_by(manifest)
        manifest, _ = split_manifest(manifest, config.ratios, seed=config.seed, group=config.group, groups=groups)
    present = {s.label for s in manifest.samples}
    if len(present) < 2:
        raise AlzAuditError(f"{config.data}: only one class present ({', '.join(present)}); cannot train a classifier")
    for split in ("train", "val"):
        if not any(s.split == split for s in manifest.samples):
            raise AlzAuditError(f"{config.data}: the '{split}' split is empty; add data or change --ratios")
    write_manifest(manifest, saved)
    return manifest


def train(config: TrainConfig, *, resume: bool = False, console=None,
          group_by: Callable[[Manifest], list] | None = None) -> Path:
    """Run the plan; returns the path of the final model (``model.keras`` in the run folder).

    ``group_by``: how to group samples into pseudo-subjects for ``group="pseudo"`` (see ``prepare_split``).

    With ``resume`` the saved configuration is used, except ``config.strategy``: the machines a run
    continues on may differ from those it started on (the global batch then changes, and is recorded).
    """
    out_dir = Path(config.out)
    state_path = out_dir / STATE_FILE
    requested_strategy = config.strategy
    if resume:
        if not state_path.is_file():
            raise AlzAuditError(f"{out_dir}: nothing to resume (no {STATE_FILE}); start without --resume")
        saved = json.loads((out_dir / "config.json").read_text())["config"]
        config = TrainConfig(**{k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__})
        config.strategy = requested_strategy
    elif state_path.is_file():
        raise AlzAuditError(f"{out_dir}: a training run is already there; use --resume to continue it or "
                            "choose another --out")
    config.resolve_plan()
    # First TensorFlow work of the run: a multi-worker strategy must exist before the runtime starts.
    strategy = distribute.get_strategy(config.strategy)
    run_dir = distribute.write_dir(out_dir, strategy)   # out_dir on the chief, a temporary folder elsewhere
    try:
        return _train(config, resume, console, strategy, out_dir, run_dir, group_by)
    finally:
        distribute.remove_write_dir(run_dir, strategy)


def _train(config: TrainConfig, resume: bool, console, strategy, out_dir: Path, run_dir: Path,
           group_by=None) -> Path:
    import keras

    from model.pipeline import load_slices

    chief = distribute.is_chief(strategy)
    if not chief:
        # A worker starts from a copy of the chief's folder (for --resume) and writes only to that copy.
        shutil.rmtree(run_dir, ignore_errors=True)
        if resume:  # manifests hold paths relative to their folder: the split is read where it lies
            shutil.copytree(out_dir, run_dir, ignore=shutil.ignore_patterns("workertemp_*", "*.csv", "*.png"))
    run_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    _deterministic_ops()
    env = environment()
    replicas = distribute.replicas(strategy)
    layout = {**distribute.describe(strategy), "per_replica_batch": config.batch_size,
              "global_batch": config.batch_size * replicas, "sync_batchnorm": replicas > 1}
    say = console.print if console is not None else print
    say(f"device: {env['device']['kind']} ({env['device']['name']}); TensorFlow {env['tensorflow']}, Keras {env['keras']}")
    say(f"strategy: {layout['strategy']}, {replicas} replica(s) on {layout['workers']} worker(s)"
        f"{'' if chief else ' (this worker writes to a temporary folder)'}; global batch "
        f"{layout['global_batch']} = {config.batch_size} per replica x {replicas}")
    say(f"plan: phase(s) {', '.join(map(str, config.plan))} — {config.plan_reason}")
    if not resume:
        atomic_write_json(run_dir / "config.json", {"config": asdict(config), "environment": env,
                                                    "distribute": layout, "classes": list(CLASSES),
                                                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    else:
        recorded = json.loads((run_dir / "config.json").read_text())
        recorded.setdefault("resumed", []).append({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                   "distribute": layout, "environment": env})
        atomic_write_json(run_dir / "config.json", recorded)
    manifest = prepare_split(config, run_dir, out_dir, group_by=group_by)
    size = (config.input_size, config.input_size)
    train_m, val_m = manifest.split("train"), manifest.split("val")
    x_train = load_slices(train_m.samples, size, progress=True, description="loading train slices")
    y_train = np.array(train_m.label_indices())
    x_val = load_slices(val_m.samples, size, progress=True, description="loading val slices")
    y_val = np.array(val_m.label_indices())
    train_ds = _dataset(x_train, y_train, config, layout["global_batch"], strategy, say, training=True)
    val_ds = _dataset(x_val, y_val, config, layout["global_batch"], strategy, say, training=False)
    weights = class_weights(y_train, config.class_weight)

    state_path = run_dir / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {"completed": [], "current": None}
    pretrained = config.weights not in (None, "none", "")
    model = None
    for phase in config.plan:
        if phase in state["completed"]:
            with strategy.scope():
                model = keras.models.load_model(run_dir / f"phase{phase}_model.keras", safe_mode=True)
            continue
        model = _run_phase(phase, config, run_dir, state, model, pretrained, train_ds, val_ds, weights,
                           strategy, console, x_train, y_train)
    final = run_dir / "model.keras"
    _save_model(model, final)
    if not chief:
        say(f"worker done; the chief writes the final model to {out_dir / 'model.keras'}")
        return out_dir / "model.keras"
    _plot_curves(run_dir, config.plan)
    say(f"final model: {final}")
    return final


def _dataset(images, labels, config: TrainConfig, global_batch: int, strategy, say, *, training: bool):
    """The tf.data pipeline at the global batch; each worker reads it whole and keeps its share of every
    batch (DATA sharding: in-memory slices have no files to shard by)."""
    import tensorflow as tf

    from model.pipeline import make_dataset

    rows = distribute.rows_per_epoch(len(images), global_batch, distribute.replicas(strategy))
    if rows < len(images):
        say(f"{'train' if training else 'val'}: {len(images) - rows} of {len(images)} examples left out of each "
            f"epoch: a last batch of fewer rows than the {distribute.replicas(strategy)} replicas would leave "
            "a replica empty")
    ds = make_dataset(images, labels, batch_size=global_batch, training=training, rows=rows,
                      augment=config.augment and training, seed=config.seed, noise=config.augment_noise,
                      flip=config.flip, intensity=config.augment_intensity)
    if distribute.kind(strategy) == "multiworker":
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        ds = ds.with_options(options)
    return ds


def sync_batchnorm(model, on: bool) -> None:
    """BatchNormalization statistics over the global batch (``synchronized``) when training on several
    replicas, so a replica's statistics are the single-device run's, not those of its slice of the batch.

    Only the flag changes (no weights); it is read when the training step is traced, and switched off
    again before a model is saved for use, so saved models are the ones single-device training writes.
    """
    import keras

    for layer in _walk(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = bool(on)


def _save_model(model, path: Path) -> None:
    sync_batchnorm(model, False)
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)


def _run_phase(phase, config, run_dir, state, model, pretrained, train_ds, val_ds, weights, strategy, console,
               train_images, train_labels):
    import keras

    from model.network import build_classifier
    from model.train_callbacks import PhaseCheckpoint, RichProgress

    lr = config.lr_phase1 if phase == 1 else config.lr_phase2
    epochs = config.epochs_phase1 if phase == 1 else config.epochs_phase2
    ckpt = run_dir / "checkpoints"
    last = ckpt / f"phase{phase}_last.keras"
    resumed = state.get("current") == phase and last.is_file()
    with strategy.scope():  # variables, optimizer slots and metrics become the strategy's
        if resumed:
            model = keras.models.load_model(last, safe_mode=True)  # weights and optimizer state
            set_trainable(model, phase, pretrained)
            phase_state = state["phase_state"]
        else:
            if model is None:
                model = build_classifier(config.backbone, config.weights, config.input_size, seed=config.seed,
                                         dropout=config.dropout)
            set_trainable(model, phase, pretrained)
            sync_batchnorm(model, distribute.replicas(strategy) > 1)
            model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                          metrics=["accuracy"])
            phase_state = {"epoch": -1, "best": None, "best_epoch": None, "wait": 0}
            state.update(current=phase, phase_state=phase_state)
        if resumed:
            sync_batchnorm(model, distribute.replicas(strategy) > 1)
            # Re-compile only if load_model gave us no optimizer (e.g. a checkpoint saved uncompiled).
            if model.optimizer is None:
                model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                              metrics=["accuracy"])
    start = phase_state["epoch"] + 1
    if config.average_last < 0:
        raise ParameterError("average_last", f"{config.average_last} (use 0 for the best epoch, or a number of epochs)")
    average_from = max(epochs - config.average_last, 0) if config.average_last else None
    checkpoint = PhaseCheckpoint(run_dir, phase, state, patience=config.patience, average_from=average_from)
    progress = RichProgress(phase, epochs, start, console=console)
    callbacks = [keras.callbacks.CSVLogger(str(run_dir / f"phase{phase}_log.csv"), append=start > 0),
                 checkpoint, progress]
    if config.lr_schedule == "cosine":
        # A function of the epoch index alone, so a resumed run continues on the same curve.
        callbacks.append(keras.callbacks.LearningRateScheduler(
            lambda epoch: lr * 0.5 * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))))
    elif config.lr_schedule != "constant":
        raise ParameterError("lr_schedule", f"'{config.lr_schedule}' (use constant or cosine)")
    if start < epochs and not checkpoint.should_stop_already():
        with distribute.keras_fit_fixes(model, strategy, train_ds.element_spec):
            model.fit(train_ds, validation_data=val_ds, epochs=epochs, initial_epoch=start, verbose=0,
                      shuffle=False, class_weight=weights, callbacks=callbacks)
    chosen = checkpoint.restore_best(model)
    if config.precise_bn:
        from model.precise_bn import recalibrate_batchnorm, training_pass

        sync_batchnorm(model, False)   # one device's pass over the same batches: identical on every replica
        with strategy.scope():
            layers = recalibrate_batchnorm(model, training_pass(train_images, train_labels, config))
        if layers:
            chosen += f"; BatchNormalization statistics of {layers} layers re-estimated over one training pass"
    (console.print if console is not None else print)(f"phase {phase} model: {chosen}")
    _save_model(model, run_dir / f"phase{phase}_model.keras")
    state["completed"].append(phase)
    state["current"] = None
    atomic_write_json(run_dir / STATE_FILE, state)
    return model


def _plot_curves(run_dir: Path, plan: list[int]) -> Path | None:
    import csv

    # The object API with an Agg canvas, never pyplot: a library must not switch the caller's backend
    # (a notebook's inline plots would stop showing after training).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    logs = []
    offset = 0
    for phase in plan:
        path = run_dir / f"phase{phase}_log.csv"
        if not path.is_file():
            continue
        rows = list(csv.DictReader(path.open()))
        for row in rows:
            logs.append((offset + int(row["epoch"]) + 1, phase, row))
        offset += len(rows)
    if not logs:
        return None
    fig = Figure(figsize=(9, 3.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    epochs = [e for e, _, _ in logs]
    for ax, key in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, [float(r[key]) for _, _, r in logs], label=f"train {key}")
        ax.plot(epochs, [float(r[f"val_{key}"]) for _, _, r in logs], label=f"val {key}")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if len(plan) == 2:
        boundary = sum(1 for _, p, _ in logs if p == 1) + 0.5
        for ax in axes:
            ax.axvline(boundary, color="grey", ls="--", lw=1)
    fig.tight_layout()
    out = run_dir / "training_curves.png"
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return out
