"""Which images each stage looks at: stratified, seeded samples of the evaluated split.

Each stage draws with its own salt, so stages sample independently yet reproducibly from one seed.
Explanation checks that ask for evidence of disease sample the demented stages only: the reference
stage's evidence is the absence of atrophy, which no map can point at.
"""
from __future__ import annotations

import numpy as np

from model.classes import CLASSES, REFERENCE_CLASS

# Salts of the seeded samples, one per stage (kept from the first layout so figures stay comparable).
IG_SALT, STABILITY_SALT, FAITHFULNESS_SALT, RANDOMIZATION_SALT, GALLERY_SALT = 1, 2, 3, 4, 5


def stratified_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` indices (all when n <= 0 or n >= len), proportional per class with at least one of each."""
    labels = np.asarray(labels)
    if n <= 0 or n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.maximum(1, np.floor(counts / counts.sum() * n)).astype(int)
    while quota.sum() > n:
        quota[np.argmax(quota)] -= 1
    leftover = n - quota.sum()
    for i in np.argsort(-counts)[:leftover]:
        quota[i] = min(quota[i] + 1, counts[i])
    picks = [rng.choice(np.flatnonzero(labels == c), size=min(q, cnt), replace=False)
             for c, q, cnt in zip(classes, quota, counts)]
    return np.sort(np.concatenate(picks))


def disease_mask(labels: np.ndarray) -> np.ndarray:
    """True for images whose stage has visible evidence (every stage but REFERENCE_CLASS)."""
    return np.asarray(labels) != CLASSES.index(REFERENCE_CLASS)


def sample(labels: np.ndarray, n: int, seed: int, salt: int) -> np.ndarray:
    """A stratified sample of ``n`` images for the stage with this ``salt``."""
    return stratified_indices(labels, n, seed + salt)


def sample_disease(labels: np.ndarray, n: int, seed: int, salt: int) -> np.ndarray:
    """Like ``sample``, over the images of the demented stages only (all images if there are none)."""
    labels = np.asarray(labels)
    keep = np.flatnonzero(disease_mask(labels))
    if not len(keep):
        return sample(labels, n, seed, salt)
    return keep[stratified_indices(labels[keep], n, seed + salt)]
