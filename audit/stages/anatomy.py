"""Anatomy stage: each evaluated slice registered to the MNI152 template, and what that places on it.

Users' slices (Kaggle, OASIS) come without lesion masks and often without brain masks. Registration
(``audit.anatomy``) gives each slice a template brain and the AD evidence prior (periventricular band,
cortical ribbon, medial temporal lobe); a slice that does not register is refused, never guessed.
"""
from __future__ import annotations

import numpy as np

MIN_REGISTERED = 10  # fewer registered slices than this: the prior-based figures are not applicable


def registrations(run) -> list:
    """One ``SliceRegistration`` per evaluated image (at the model's input size).

    The manifest's brain masks are not passed in: on the demo split at 128 px they made 11 of 288 slices
    land more than 10 mm off their level (worst 45 mm), the image alone 1 (worst 13 mm;
    docs/measurements.md), and users' data has none."""
    from audit.anatomy import SliceRegistration, register_slices
    from model.errors import ParameterError

    try:
        return register_slices(run.images)
    except ParameterError as exc:  # e.g. a 28-px model input: nothing can be placed, so nothing is judged
        refused = SliceRegistration(z_mm=None, matrix=None, quality=0.0, ok=False, reason=exc.problem)
        return [refused] * len(run.images)


def registration_summary(run) -> dict:
    """How many slices registered, their quality, and why the others were refused (for audit.json)."""
    regs = run.registrations
    ok = [r for r in regs if r.ok]
    reasons: dict[str, int] = {}
    for r in regs:
        if not r.ok:
            reasons[r.reason] = reasons.get(r.reason, 0) + 1
    quality = np.array([r.quality for r in ok]) if ok else np.zeros(0)
    return {"n_images": len(regs), "n_registered": len(ok), "refused": reasons,
            "quality_median": float(np.median(quality)) if len(ok) else None,
            "quality_min": float(quality.min()) if len(ok) else None,
            "levels_mm": [float(min(r.z_mm for r in ok)), float(max(r.z_mm for r in ok))] if ok else None,
            "n_skull": int(sum(r.skull for r in ok))}


def prior_maps(run) -> np.ndarray:
    """(N, H, W) AD evidence prior on every evaluated image; zeros where registration refused."""
    from audit.anatomy import ad_prior

    return ad_prior(run.registrations, run.images.shape[1:3])


def template_brain(run) -> np.ndarray:
    """(N, H, W) bool template brain on every evaluated image; empty where registration refused."""
    from audit.anatomy import template_brain as warp

    return warp(run.registrations, run.images.shape[1:3])


def control_brain(run) -> np.ndarray:
    """The brain the brain-uniform control fills: the manifest's brain masks, else the registered
    template brain, else (refused slices) the image's Otsu foreground."""
    if run.brain_masks is not None:
        return run.brain_masks > 0.5
    from audit.quality.controls import foreground_masks

    brain = run.template_brain.copy()
    empty = ~brain.reshape(len(brain), -1).any(axis=1)
    if empty.any():
        brain[empty] = foreground_masks(run.inputs[empty])
    return brain
