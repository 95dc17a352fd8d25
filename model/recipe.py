"""The demo recipe: the cohort, split and training `make demo` uses, in one place.

The demo command, the calibration benchmark and the gate's reference bank all train this way, so a
change to the recipe is a change to all of them.
"""
from __future__ import annotations

from pathlib import Path

DEMO_SUBJECTS = 120
DEMO_SLICES = 8
DEMO_INPUT = 128
DEMO_EPOCHS = 30
# The model is the mean of the last third of the epochs' weights with its BatchNormalization statistics
# re-estimated on the clean training images (model/precise_bn.py), not the epoch that scored best on a small
# validation split (whose val_loss jumps between neighbouring epochs): docs/measurements.md, 2026-12-03.
DEMO_AVERAGE_LAST = 10
# Left-right flips only: an axial slice is never shown upside down, and the reference method's vertical
# flips make the model learn every stage twice from the same 72 subjects.
DEMO_FLIP = "horizontal"
# Scanner augmentation (gamma, gain, bias field): the demo model's errors were whole subjects read one stage
# off, i.e. the subject's scanner read along with its anatomy (docs/measurements.md, 2026-12-03).
DEMO_INTENSITY = True
# 72 training subjects, a 12-subject validation split (it selects nothing now: it only shows the curves),
# and a 30% test split (36 subjects, 27 of them demented) so that the explanation checks' subject-bootstrap
# CIs can resolve a margin over the control maps (20 test subjects could not).
DEMO_RATIOS = (0.6, 0.1, 0.3)

def demo_train_config(split_csv: str | Path, out: str | Path, *, seed: int = 0, epochs: int = DEMO_EPOCHS,
                      input_size: int = DEMO_INPUT, average_last: int = DEMO_AVERAGE_LAST, **changes):
    """The demo's training: the small backbone from scratch, one fine-tuning phase, cosine schedule, noise
    augmentation, scanner augmentation and left-right flips, the last third of the epochs averaged, precise BatchNormalization
    statistics; ``changes`` override any ``TrainConfig`` field (the bank's shortcut model turns flips off)."""
    from model.train import TrainConfig

    settings = dict(data=str(split_csv), out=str(out), backbone="small", weights=None, input_size=input_size,
                    epochs_phase2=epochs, lr_phase2=1e-3, patience=epochs, lr_schedule="cosine", augment_noise=0.05,
                    average_last=min(average_last, epochs), flip=DEMO_FLIP, augment_intensity=DEMO_INTENSITY, seed=seed)
    return TrainConfig(**{**settings, **changes})
