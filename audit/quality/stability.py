"""Stability of explanations under small input noise (SSIM between clean and noisy maps; flip rate).

A trustworthy map should not change much when the scan gets a little scanner noise that leaves the
prediction alone; a map that does is explaining the noise, not the anatomy (Arun et al. 2021 call the
same-model version of this repeatability). The flip rate says how often the noise changed the
prediction itself, which makes low map stability on those images expected rather than alarming.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from audit.quality.base import (CITES, MetricResult, as_images, model_predict_fn, normalize_maps,
                                predict_in_batches, ssim_pairs)
from model.errors import AlzAuditError

Explainer = Callable[..., np.ndarray]


def sigma_key(sigma: float) -> str:
    """The dict key of one noise level, e.g. ``"0.02"``."""
    return f"{float(sigma):g}"


def stability(model: Any, explainer: Explainer, images: np.ndarray, *, sigmas: Sequence[float] = (0.02, 0.05),
              draws: int = 5, seed: int = 0, targets: np.ndarray | None = None,
              clean_maps: np.ndarray | None = None, predict_fn: Callable[[np.ndarray], np.ndarray] | None = None,
              intensity_range: float = 255.0, batch_size: int = 64,
              control_explainers: dict[str, Callable[[np.ndarray], np.ndarray]] | None = None,
              clean_predictions: np.ndarray | None = None,
              explain_and_predict: Callable[[Any, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None
              = None) -> dict[str, Any]:
    """SSIM between the map of each clean image and of ``draws`` noisy copies, per noise level.

    Gaussian noise with std ``sigma * intensity_range`` is added to the raw input and clipped to
    ``[0, intensity_range]``. Every noisy copy (all σ, all draws) goes through ``explainer`` in one call,
    explained for the clean image's target class (``targets``, else its predicted class) so that like is
    compared with like. Bind explainer options with ``functools.partial``.

    Returns ``{"sigmas": [...], "ssim": {σ: MetricResult}, "flip_rate": {σ: MetricResult},
    "examples": {σ: {...}}}`` keyed by ``sigma_key(σ)``. Per-sample values average over the draws.
    Each example holds ``index, draw, sigma, image, noisy_image, clean_map, noisy_map, ssim, flipped``
    (2-D arrays, for the report) for the image whose SSIM is closest to the median.

    ``control_explainers`` (``{name: f(images) -> maps}``, maps computed from the pixels alone, e.g.
    ``audit.quality.controls.image_only_explainers``) are scored on the same clean/noisy pairs:
    ``"controls": {σ: {name: MetricResult}}``. An edge map shows how much of the noise a purely
    image-derived map picks up; an input-independent map (centre prior) is perfectly stable, which is
    why stability is judged on its value, not on skill over the controls.

    The flip rate needs the predicted class of every clean and noisy image. ``clean_predictions`` (the
    audit already has them) saves the clean pass; ``explain_and_predict(model, x, targets) -> (maps,
    predicted)`` (a CAM whose forward pass also gives the prediction) replaces ``explainer`` on the noisy
    copies and saves their separate prediction pass: half the stage's cost.
    """
    x = as_images(images)
    if len(x) == 0:
        raise AlzAuditError("stability: no images given")
    if draws < 1 or len(sigmas) == 0:
        raise AlzAuditError("stability: need at least one noise level and one draw")
    if any(s < 0 for s in sigmas):
        raise AlzAuditError(f"stability: noise levels must be >= 0, got {list(sigmas)}")
    n, (h, w) = len(x), x.shape[1:3]
    predict = predict_fn or model_predict_fn(model)
    clean_pred = (predict_in_batches(predict, x, batch_size).argmax(axis=1) if clean_predictions is None
                  else np.asarray(clean_predictions, dtype=np.int64).reshape(n))
    tgt = clean_pred if targets is None else np.asarray(targets, dtype=np.int64).reshape(n)
    clean = normalize_maps(explainer(model, x, tgt) if clean_maps is None else clean_maps)
    if clean.shape != (n, h, w):
        raise AlzAuditError(f"stability: clean maps have shape {clean.shape}, expected {(n, h, w)}")

    rng = np.random.default_rng(seed)
    n_s = len(sigmas)
    noise_std = np.asarray(sigmas, dtype=np.float32).reshape(n_s, 1, 1, 1, 1, 1) * np.float32(intensity_range)
    noisy = x[None, None] + rng.standard_normal((n_s, draws) + x.shape, dtype=np.float32) * noise_std
    noisy = np.clip(noisy, 0.0, intensity_range).reshape((-1,) + x.shape[1:])
    tgt_all = np.tile(tgt, n_s * draws)

    if explain_and_predict is not None:
        noisy_maps, noisy_pred = explain_and_predict(model, noisy, tgt_all)
        noisy_pred = np.asarray(noisy_pred, dtype=np.int64)
    else:
        noisy_maps = explainer(model, noisy, tgt_all)
        noisy_pred = predict_in_batches(predict, noisy, batch_size).argmax(axis=1)
    noisy_maps = normalize_maps(noisy_maps).reshape(n_s, draws, n, h, w)
    noisy_pred = noisy_pred.reshape(n_s, draws, n)
    ssim = ssim_pairs(np.broadcast_to(clean, noisy_maps.shape).reshape(-1, h, w),
                      noisy_maps.reshape(-1, h, w)).reshape(n_s, draws, n)
    flips = noisy_pred != clean_pred[None, None]
    noisy = noisy.reshape((n_s, draws) + x.shape)

    cites = [CITES["arun2021"], CITES["wang2004"]]
    control_ssim = {}
    for name, fn in (control_explainers or {}).items():
        c_clean = normalize_maps(fn(x))
        c_noisy = normalize_maps(fn(noisy.reshape((-1,) + x.shape[1:]))).reshape(n_s, draws, n, h, w)
        control_ssim[name] = ssim_pairs(np.broadcast_to(c_clean, c_noisy.shape).reshape(-1, h, w),
                                        c_noisy.reshape(-1, h, w)).reshape(n_s, draws, n)
    out: dict[str, Any] = {"sigmas": [float(s) for s in sigmas], "ssim": {}, "flip_rate": {}, "examples": {},
                           "controls": {}}
    for i, s in enumerate(sigmas):
        key = sigma_key(s)
        per_image = ssim[i].mean(axis=0)
        out["ssim"][key] = MetricResult(f"stability_ssim_sigma{key}", per_image, True, cites)
        out["flip_rate"][key] = MetricResult(f"stability_flip_rate_sigma{key}", flips[i].mean(axis=0), False,
                                             [CITES["arun2021"]])
        out["controls"][key] = {name: MetricResult(f"stability_ssim_sigma{key}_{name}", c[i].mean(axis=0), True, cites)
                                for name, c in control_ssim.items()}
        j = int(np.argmin(np.abs(per_image - np.median(per_image))))
        out["examples"][key] = {
            "index": j, "draw": 0, "sigma": float(s),
            "image": x[j, ..., 0], "noisy_image": noisy[i, 0, j, ..., 0],
            "clean_map": clean[j], "noisy_map": noisy_maps[i, 0, j],
            "ssim": float(ssim[i, 0, j]), "flipped": bool(flips[i, 0, j]),
        }
    return out
