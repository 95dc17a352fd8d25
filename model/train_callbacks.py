"""Keras callbacks for resumable training and a rich progress display."""
from __future__ import annotations

import math
import time
from pathlib import Path

import keras

from model.fileio import atomic_path, atomic_write_json


class PhaseCheckpoint(keras.callbacks.Callback):
    """Each epoch: save the last model (with optimizer state), the best model by val_loss, and the
    early-stopping state — all atomically — so ``--resume`` continues exactly where training stopped."""

    def __init__(self, run_dir: Path, phase: int, state: dict, patience: int = 5):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.phase = phase
        self.state = state
        self.patience = patience
        self.dir = self.run_dir / "checkpoints"
        self.dir.mkdir(parents=True, exist_ok=True)

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
        with atomic_path(self.dir / f"phase{self.phase}_last.keras", suffix=".keras") as tmp:
            self.model.save(tmp)
        atomic_write_json(self.run_dir / "state.json", self.state)  # written last: it points at saved files
        if self.phase_state["wait"] >= self.patience:
            self.model.stop_training = True

    def restore_best(self, model) -> None:
        best = self.dir / f"phase{self.phase}_best.keras"
        if best.is_file():
            model.set_weights(keras.models.load_model(best, safe_mode=True, compile=False).get_weights())


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
