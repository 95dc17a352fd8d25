"""The demo recipe: the cohort, split and training `make demo` uses, in one place.

The demo command, the calibration benchmark and the gate's reference bank all train this way, so a
change to the recipe is a change to all of them.
"""
from __future__ import annotations

from pathlib import Path

DEMO_SUBJECTS = 120
DEMO_SLICES = 8
DEMO_INPUT = 128
DEMO_EPOCHS = 20
# 60 training subjects; a 30% test split (36 subjects, 27 of them demented) so that the explanation
# checks' subject-bootstrap CIs can resolve a margin over the control maps (20 test subjects could not).
DEMO_RATIOS = (0.5, 0.2, 0.3)


def demo_train_config(split_csv: str | Path, out: str | Path, *, seed: int = 0, epochs: int = DEMO_EPOCHS,
                      input_size: int = DEMO_INPUT, **changes):
    """The demo's training: the small backbone from scratch, one fine-tuning phase, cosine schedule, noise
    augmentation; ``changes`` override any ``TrainConfig`` field (the bank's shortcut model turns flips off)."""
    from model.train import TrainConfig

    settings = dict(data=str(split_csv), out=str(out), backbone="small", weights=None, input_size=input_size,
                    epochs_phase2=epochs, lr_phase2=1e-3, patience=epochs, lr_schedule="cosine", augment_noise=0.05,
                    seed=seed)
    return TrainConfig(**{**settings, **changes})
