"""Localization against ground-truth masks: does the map point at the evidence?

Where the planted (or annotated) abnormality is known, a map that puts its mass there is pointing at
the evidence; mass outside the brain is a shortcut signal (the model reads the frame, not the anatomy).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score

from audit.quality.base import CITES, MetricResult, as_maps, normalize_maps
from model.errors import AlzAuditError


def _as_masks(masks: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    arr = as_maps(masks, what) > 0.5
    if arr.shape != shape:
        raise AlzAuditError(f"localization: {what} have shape {arr.shape}, maps have {shape}")
    return arr


def energy_inside(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Fraction of each map's total mass inside its mask (Wang et al. 2020); an all-zero map scores 0."""
    total = maps.sum(axis=(1, 2), dtype=np.float64)
    inside = (maps * masks).sum(axis=(1, 2), dtype=np.float64)
    return np.where(total > 0, inside / np.where(total > 0, total, 1.0), 0.0)


def pointing_hits(maps: np.ndarray, masks: np.ndarray, tolerance: float) -> np.ndarray:
    """1 where the map's maximum lies within ``tolerance`` pixels of the mask (Zhang et al. 2016), else 0.

    The maximum is the first one in raster order; an all-zero map points nowhere (0).
    """
    n, h, w = maps.shape
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    flat_arg = maps.reshape(n, -1).argmax(axis=1)
    py, px = np.divmod(flat_arg, w)
    hits = np.zeros(n, dtype=np.float64)
    for i in range(n):
        if maps[i].max() <= 0:
            continue
        ys, xs = np.nonzero(masks[i])
        if ys.size:
            hits[i] = float(((ys - py[i]) ** 2 + (xs - px[i]) ** 2).min() <= tolerance ** 2)
    return hits


def auprc(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Average precision of the map's pixel scores against the mask (Arun et al. 2021), per image.

    Chance level is the mask's area fraction; a constant map scores exactly that.
    """
    return np.array([average_precision_score(mk.ravel(), mp.ravel()) for mp, mk in zip(maps, masks)],
                    dtype=np.float64)


def localization(maps: np.ndarray, masks: np.ndarray, *, brain_masks: np.ndarray | None = None,
                 tolerance: float = 15.0) -> dict[str, Any]:
    """Energy pointing game, pointing-game hit rate and AUPRC against ground-truth masks.

    Images whose mask is empty have nothing to localise and are excluded (counted in
    ``n_excluded_empty_mask``). With ``brain_masks``, also the share of map mass outside the brain
    (lower better) over every image with a non-empty brain mask.

    Returns ``{"energy_pointing", "pointing_game", "auprc"}`` MetricResults (higher better, over the
    ``indices`` evaluated), ``auprc_chance`` (mean mask area fraction, the AUPRC of an uninformative map),
    ``n_evaluated``, ``n_excluded_empty_mask``, ``indices``, and, with brain masks, ``outside_brain``
    (MetricResult) and ``n_excluded_empty_brain``.
    """
    m = normalize_maps(maps)
    mk = _as_masks(masks, m.shape, "masks")
    keep = mk.reshape(len(mk), mk.shape[1] * mk.shape[2]).any(axis=1)
    idx = np.flatnonzero(keep)
    mm, kk = m[idx], mk[idx]
    out: dict[str, Any] = {
        "energy_pointing": MetricResult("energy_pointing_game", energy_inside(mm, kk), True, [CITES["wang2020"]]),
        "pointing_game": MetricResult("pointing_game", pointing_hits(mm, kk, tolerance), True,
                                      [CITES["zhang2016"]]),
        "auprc": MetricResult("localization_auprc", auprc(mm, kk), True, [CITES["arun2021"]]),
        "auprc_chance": float(kk.mean()) if len(idx) else None,
        "n_evaluated": int(len(idx)),
        "n_excluded_empty_mask": int((~keep).sum()),
        "indices": idx.tolist(),
        "tolerance": float(tolerance),
    }
    if brain_masks is not None:
        bm = _as_masks(brain_masks, m.shape, "brain_masks")
        has_brain = bm.reshape(len(bm), bm.shape[1] * bm.shape[2]).any(axis=1)
        bi = np.flatnonzero(has_brain)
        out["outside_brain"] = MetricResult("map_mass_outside_brain", energy_inside(m[bi], ~bm[bi]), False,
                                            [CITES["wang2020"], CITES["arun2021"]])
        out["n_excluded_empty_brain"] = int((~has_brain).sum())
    return out
