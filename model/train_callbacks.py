"""Keras callbacks for resumable training and a rich progress display."""
from __future__ import annotations

import math
import time
from pathlib import Path

import keras
import numpy as np

from model.fileio import atomic_path, atomic_write_json


class PhaseCheckpoint(keras.callbacks.Callback):
    """Each epoch: save the last model (with optimizer state), the best model by val_loss, and the
    early-stopping state — all atomically — so ``--resume`` continues exactly where training stopped."""

    def __init__(self, run_dir: Path, phase: int, state: dict, patience: int = 5, average_from: int | None = None):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.phase = phase
        self.state = state
        self.patience = patience
        self.average_from = average_from
        self.dir = self.run_dir / "checkpoints"
        self.dir.mkdir(parents=True, exist_ok=True)

    @property
    def average_path(self) -> Path:
        return self.dir / f"phase{self.phase}_average.npz"

    @property
    def phase_state(self) -> dict:
        return self.state["phase_state"]

    def should_stop_already(self) -> bool:
        return self.phase_state["wait"] >= self.patience

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        val_loss = float(logs.get("val_loss", math.inf))
        best = self.phase_state["best"]
        if best is None or val_loss < best:
            self.phase_state.update(best=val_loss, best_epoch=epoch, wait=0)
            with atomic_path(self.dir / f"phase{self.phase}_best.keras", suffix=".keras") as tmp:
                self.model.save(tmp)
        else:
            self.phase_state["wait"] += 1
        self.phase_state["epoch"] = epoch
        if self.average_from is not None and epoch >= self.average_from:
            self._add_to_average(epoch)
        with atomic_path(self.dir / f"phase{self.phase}_last.keras", suffix=".keras") as tmp:
            self.model.save(tmp)
        atomic_write_json(self.run_dir / "state.json", self.state)  # written last: it points at saved files
        if self.phase_state["wait"] >= self.patience:
            self.model.stop_training = True

    def _add_to_average(self, epoch: int) -> None:
        """Running mean of every weight over the averaged epochs, BatchNormalization statistics included
        (as EMA/SWA implementations keep them): the epochs late in a cosine schedule are close, so their
        statistics average as their weights do. Saved each epoch (before state.json) so a resume continues it."""
        weights = [np.asarray(w) for w in self.model.get_weights()]
        count = int(self.phase_state.get("averaged", 0))
        if not (count and self.average_path.is_file()):
            count = 0
            mean = [w.astype(np.float64) if np.issubdtype(w.dtype, np.floating) else w for w in weights]
        else:
            with np.load(self.average_path) as saved:
                mean = [saved[f"w{i}"] for i in range(len(weights))]
            # Non-float state (a seed generator's counter) is not averaged: the latest value is kept.
            mean = [m + (w - m) / (count + 1) if np.issubdtype(w.dtype, np.floating) else w
                    for m, w in zip(mean, weights)]
        with atomic_path(self.average_path, suffix=".npz") as tmp:
            np.savez(tmp, **{f"w{i}": m for i, m in enumerate(mean)})
        self.phase_state["averaged"] = count + 1
        self.phase_state["averaged_epochs"] = [*self.phase_state.get("averaged_epochs", [])[:count], epoch]

    def restore_best(self, model) -> str:
        """Give ``model`` the phase's result: the average of the last epochs when averaging ran, else the
        epoch with the lowest val_loss. Returns which, for the log."""
        if self.average_from is not None and self.phase_state.get("averaged") and self.average_path.is_file():
            current = model.get_weights()
            with np.load(self.average_path) as saved:
                model.set_weights([saved[f"w{i}"].astype(np.asarray(w).dtype) for i, w in enumerate(current)])
            epochs = self.phase_state["averaged_epochs"]
            return f"weights averaged over epochs {epochs[0] + 1}-{epochs[-1] + 1} ({len(epochs)})"
        best = self.dir / f"phase{self.phase}_best.keras"
        if best.is_file():
            model.set_weights(keras.models.load_model(best, safe_mode=True, compile=False).get_weights())
            return f"best epoch by val_loss ({self.phase_state['best_epoch'] + 1})"
        return "last epoch"


class RichProgress(keras.callbacks.Callback):
    """Phase, epoch, batch progress with ETA, and the last epoch's loss/accuracy."""

    def __init__(self, phase: int, epochs: int, start: int, console=None):
        super().__init__()
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.phase, self.epochs, self.start = phase, epochs, start
        self.progress = Progress(TextColumn("[bold]phase {task.fields[phase]}[/] epoch {task.fields[epoch]}"),
                                 BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[metrics]}"),
                                 TimeRemainingColumn(), console=console, transient=False)
        self.task = None
        self.t0 = time.time()

    def on_train_begin(self, logs=None):
        self.progress.start()
        steps = self.params.get("steps") or 0
        self.task = self.progress.add_task("train", total=steps * (self.epochs - self.start),
                                           phase=self.phase, epoch=f"{self.start + 1}/{self.epochs}", metrics="")

    def on_epoch_begin(self, epoch, logs=None):
        self.progress.update(self.task, epoch=f"{epoch + 1}/{self.epochs}")

    def on_train_batch_end(self, batch, logs=None):
        self.progress.advance(self.task)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        text = " ".join(f"{k}={v:.3f}" for k, v in logs.items() if k in
                        ("loss", "accuracy", "val_loss", "val_accuracy"))
        self.progress.update(self.task, metrics=text)
        self.progress.console.print(f"phase {self.phase} epoch {epoch + 1}/{self.epochs}: {text}")

    def on_train_end(self, logs=None):
        self.progress.stop()
