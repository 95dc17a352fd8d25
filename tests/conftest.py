"""Shared fixtures: tiny datasets made on the fly (no downloads), and quiet TensorFlow."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# The per-machine cache (audit.cache.user_cache_dir) of a test session lives and dies with it.
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

if "ALZAUDIT_CACHE_DIR" not in os.environ:
    os.environ["ALZAUDIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="alzaudit-test-cache-")
    atexit.register(shutil.rmtree, os.environ["ALZAUDIT_CACHE_DIR"], ignore_errors=True)

from pathlib import Path

import numpy as np
import pytest

from model.classes import CLASSES

OASIS_FOLDERS = {"NonDemented": "Non Demented", "VeryMildDemented": "Very mild Dementia",
                 "MildDemented": "Mild Dementia", "ModerateDemented": "Moderate Dementia"}


def write_png(path: Path, image: np.ndarray) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


def toy_slice(label_index: int, rng: np.random.Generator, size=(52, 44)) -> np.ndarray:
    """A blob whose radius encodes the class: learnable, cheap, not a real brain."""
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    radius = 6 + 4 * label_index + rng.normal(0, 0.5)
    cy, cx = h / 2 + rng.normal(0, 1.5), w / 2 + rng.normal(0, 1.5)
    blob = ((yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2) * 160.0
    return np.clip(blob + 40 + rng.normal(0, 8, size), 0, 255).astype(np.uint8)


def make_oasis_like(root: Path, subjects_per_class: int = 4, slices: int = 3, seed: int = 0) -> Path:
    """OASIS-style export: class folders with spaces, file names carrying subject IDs."""
    rng = np.random.default_rng(seed)
    n = 0
    for label_index, label in enumerate(CLASSES):
        for _ in range(subjects_per_class):
            n += 1
            for k in range(slices):
                name = f"OAS1_{n:04d}_MR1_mpr-1_{100 + k}.jpg"
                write_png(root / OASIS_FOLDERS[label] / name, toy_slice(label_index, rng))
    return root


@pytest.fixture(scope="session")
def oasis_dir(tmp_path_factory) -> Path:
    return make_oasis_like(tmp_path_factory.mktemp("oasis"))


@pytest.fixture(scope="module")
def tanh_model():
    """logit_0 = tanh(mean(x)) = -logit_1: along the black-baseline path to a constant image of value U
    every pixel's gradient is sech^2(U alpha) / 16, sharper (harder to integrate) near alpha = 0 as U grows.
    Shared by the IG tests of test_explainers and test_ig_schemes."""
    import keras
    import numpy as np

    hidden = keras.layers.Dense(1, activation="tanh", name="hidden")
    head = keras.layers.Dense(2, activation="softmax", name="predictions")
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), hidden, head], name="tanh")
    hidden.set_weights([np.full((16, 1), 1 / 16, np.float32), np.zeros(1, np.float32)])
    head.set_weights([np.array([[1.0, -1.0]], np.float32), np.zeros(2, np.float32)])
    return model
