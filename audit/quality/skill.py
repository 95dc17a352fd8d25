"""Skill: the model's margin over the best control on the same images, with a subject-level bootstrap CI.

skill = value(model) − value(best control) for a higher-is-better figure (control − model when lower
is better), so a positive skill always means "better than every map that knows nothing of the model".
The best control is chosen inside each bootstrap replicate (the maximum of the controls' means), so the
CI already pays for picking the strongest control after seeing the data. Slices of one brain are not
independent: subjects are resampled, never slices (each slice is its own unit when subjects are unknown).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

N_BOOT = 2000
CI_LEVEL = 0.95


def bootstrap_weights(subjects: Sequence | None, n: int, *, n_boot: int = N_BOOT, seed: int = 0,
                      salt: int = 11) -> tuple[np.ndarray, str, int]:
    """``(W (n_boot, n), unit kind, n_units)``: each replicate weights an image by how often its unit was
    drawn, units being subjects (each image is its own unit when any subject ID is unknown).

    One mechanism for every subject bootstrap of the audit: skill over controls here, and the paired
    candidate-vs-baseline deltas of ``audit.compare`` (which weight both models with the same draws).
    """
    if subjects is None or any(s is None or s == "" for s in subjects):
        codes, kind = np.arange(n), "image"
    else:
        _, codes = np.unique(np.asarray([str(s) for s in subjects]), return_inverse=True)
        codes, kind = codes.reshape(n), "subject"
    n_units = int(codes.max()) + 1 if n else 0
    counts = np.zeros((n_boot, max(n_units, 1)))
    if n_units:
        draws = np.random.default_rng([int(seed), salt]).integers(0, n_units, size=(n_boot, n_units))
        np.add.at(counts, (np.repeat(np.arange(n_boot), n_units), draws.ravel()), 1.0)
    return (counts[:, codes] if n else np.zeros((n_boot, 0))), kind, n_units


def compare_to_controls(value: np.ndarray, controls: dict[str, np.ndarray], *, higher_is_better: bool,
                        subjects: Sequence | None = None, seed: int = 0, n_boot: int = N_BOOT) -> dict[str, Any]:
    """The model's per-image figure beside each control's, its skill over the best control and a CI.

    ``value`` and every control are per-image arrays over the same images (NaN = undefined for that
    image: dropped from every array together, so all means cover the same images). Returns
    ``{"value", "controls": {name: mean}, "best_control", "skill", "skill_ci": [lo, hi], "ci_unit":
    "subject"|"image", "n_images", "n_units", "higher_is_better"}``; skill and CI are None when fewer
    than 2 units remain (not estimable), and the CI collapses to the point with a single unit.
    """
    model = np.asarray(value, dtype=np.float64).ravel()
    names = list(controls)
    table = np.stack([model] + [np.asarray(controls[k], dtype=np.float64).ravel() for k in names])
    keep = np.isfinite(table).all(axis=0)
    table = table[:, keep]
    unit_ids = None if subjects is None else [s for s, k in zip(subjects, keep) if k]
    weights, unit_kind, n_units = bootstrap_weights(unit_ids, table.shape[1], n_boot=n_boot, seed=seed)
    sign = 1.0 if higher_is_better else -1.0
    out: dict[str, Any] = {"value": None, "controls": {k: None for k in names}, "best_control": None,
                           "skill": None, "skill_ci": [None, None], "ci_unit": unit_kind,
                           "n_images": int(table.shape[1]), "n_units": n_units,
                           "higher_is_better": bool(higher_is_better)}
    if table.shape[1] == 0:
        return out
    means = table.mean(axis=1)
    out["value"] = float(means[0])
    out["controls"] = {k: float(m) for k, m in zip(names, means[1:])}
    if not names:
        return out
    best = int(np.argmax(sign * means[1:]))
    out["best_control"] = names[best]
    out["skill"] = float(sign * (means[0] - means[1 + best]))
    if n_units < 2:
        return out
    boot_means = weights @ table.T / weights.sum(axis=1, keepdims=True)   # (B, 1 + controls)
    boot_skill = sign * boot_means[:, 0] - np.max(sign * boot_means[:, 1:], axis=1)
    alpha = (1.0 - CI_LEVEL) / 2.0
    lo, hi = np.quantile(boot_skill, [alpha, 1.0 - alpha])
    out["skill_ci"] = [float(lo), float(hi)]
    return out
