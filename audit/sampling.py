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
    picks = [rng.choice(np.flatnonzero(labels == c), size=q, replace=False) for c, q in _quotas(labels, n).items()]
    return np.sort(np.concatenate(picks))


def _quotas(labels: np.ndarray, n: int) -> dict:
    """Images per stage of an ``n``-image sample: proportional, at least one of each stage present."""
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.maximum(1, np.floor(counts / counts.sum() * n)).astype(int)
    while quota.sum() > n:
        quota[np.argmax(quota)] -= 1
    leftover = n - quota.sum()
    for i in np.argsort(-counts)[:leftover]:
        quota[i] = min(quota[i] + 1, counts[i])
    return {c: int(min(q, cnt)) for c, q, cnt in zip(classes, quota, counts)}


def disease_mask(labels: np.ndarray) -> np.ndarray:
    """True for images whose stage has visible evidence (every stage but REFERENCE_CLASS)."""
    return np.asarray(labels) != CLASSES.index(REFERENCE_CLASS)


def subject_spread_indices(labels: np.ndarray, subjects, n: int, seed: int) -> np.ndarray:
    """Like ``stratified_indices`` (the same per-stage quotas), but within a stage the images are taken
    round-robin over its subjects in a seeded order: as many subjects as the quota allows, each as evenly
    as possible. The skill CIs resample subjects, so a sample spread over more subjects is a tighter CI
    for the same passes (benchmarks/faithfulness_variance.py measures how much)."""
    labels = np.asarray(labels)
    if n <= 0 or n >= len(labels):
        return np.arange(len(labels))
    # An image of unknown subject is its own unit (as in the bootstrap).
    subjects = np.asarray([f"image {i}" if s is None or s == "" else f"subject {s}" for i, s in enumerate(subjects)])
    rng = np.random.default_rng(seed)
    quotas = _quotas(labels, n)
    picks = []
    for c, quota in quotas.items():
        members = np.flatnonzero(labels == c)
        by_subject = {}
        for i in rng.permutation(members):
            by_subject.setdefault(subjects[i], []).append(int(i))
        queues = [by_subject[s] for s in rng.permutation(sorted(by_subject))]
        taken: list[int] = []
        while len(taken) < quota:
            for queue in queues:
                if queue and len(taken) < quota:
                    taken.append(queue.pop())
        picks.append(taken)
    return np.sort(np.concatenate(picks)).astype(int)


def sample(labels: np.ndarray, n: int, seed: int, salt: int, subjects=None) -> np.ndarray:
    """A stratified sample of ``n`` images for the stage with this ``salt``; spread over as many subjects as
    it can when ``subjects`` are given (the CIs resample subjects)."""
    if subjects is not None:
        return subject_spread_indices(labels, subjects, n, seed + salt)
    return stratified_indices(labels, n, seed + salt)


def sample_disease(labels: np.ndarray, n: int, seed: int, salt: int, subjects=None) -> np.ndarray:
    """Like ``sample``, over the images of the demented stages only (all images if there are none)."""
    labels = np.asarray(labels)
    keep = np.flatnonzero(disease_mask(labels))
    if not len(keep):
        return sample(labels, n, seed, salt, subjects)
    kept_subjects = None if subjects is None else [subjects[i] for i in keep]
    return keep[sample(labels[keep], n, seed, salt, kept_subjects)]
