"""Shared pieces of the explanation-quality metrics: the result type, map normalisation and SSIM.

Every metric returns per-sample values plus a summary, declares its direction and cites its paper, so
the gate can compare any of them with a threshold without knowing which metric it is.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
from skimage.metrics import structural_similarity

from model.errors import AlzAuditError

# One place for the citations, so docs/metrics.md, audit.json and the report agree.
CITES: dict[str, str] = {
    "adebayo2018": "Adebayo et al., Sanity Checks for Saliency Maps, NeurIPS 2018 (arXiv:1810.03292)",
    "arun2021": "Arun et al., Assessing the Trustworthiness of Saliency Maps for Localizing Abnormalities "
                "in Medical Imaging, Radiology: AI 2021 (arXiv:2008.02766)",
    "petsiuk2018": "Petsiuk et al., RISE: Randomized Input Sampling for Explanation of Black-box Models, "
                   "BMVC 2018 (arXiv:1806.07421)",
    "wang2020": "Wang et al., Score-CAM, CVPR Workshops 2020 (arXiv:1910.01279): energy-based pointing game",
    "zhang2016": "Zhang et al., Top-down Neural Attention by Excitation Backprop, ECCV 2016: pointing game",
    "sundararajan2017": "Sundararajan et al., Axiomatic Attribution for Deep Networks, ICML 2017 "
                        "(arXiv:1703.01365): completeness",
    "wang2004": "Wang et al., Image Quality Assessment: From Error Visibility to Structural Similarity, "
                "IEEE TIP 2004: SSIM",
    "hedstrom2023": "Hedström et al., Quantus, JMLR 2023 (arXiv:2202.06861)",
}


def summarize(values: np.ndarray) -> dict[str, float | int | None]:
    """Mean, median, 5th/95th percentile and count of the finite values (None where there are none)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": None, "median": None, "p5": None, "p95": None, "n": 0}
    return {
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "p5": float(np.percentile(v, 5)),
        "p95": float(np.percentile(v, 95)),
        "n": int(v.size),
    }


@dataclass
class MetricResult:
    """One metric over a set of images: per-sample values, their summary, direction and source."""

    name: str
    per_sample: np.ndarray
    higher_is_better: bool
    cites: list[str]
    summary: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.per_sample = np.asarray(self.per_sample, dtype=np.float64).ravel()
        if not self.summary:
            self.summary = summarize(self.per_sample)

    @property
    def mean(self) -> float | None:
        return self.summary["mean"]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: plain Python numbers, None wherever a value is undefined (never NaN)."""
        return {
            "name": self.name,
            "per_sample": [_clean_float(x) for x in self.per_sample],
            "summary": {k: _clean_float(v) if isinstance(v, float) else v for k, v in self.summary.items()},
            "higher_is_better": bool(self.higher_is_better),
            "cites": list(self.cites),
        }


def _clean_float(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def to_jsonable(obj: Any) -> Any:
    """Recursively turn metric outputs (MetricResults, arrays, numpy scalars) into JSON-ready values."""
    if isinstance(obj, MetricResult):
        return obj.to_dict()
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _clean_float(obj)
    return obj


def as_maps(maps: Any, what: str = "maps") -> np.ndarray:
    """Validate a heatmap batch as float32 (N, H, W); a trailing channel axis of 1 is dropped.

    An explainer result object carrying ``.heatmaps`` (e.g. an IG result with attributions and
    completeness errors) is accepted as its heatmaps.
    """
    maps = getattr(maps, "heatmaps", maps)
    arr = np.asarray(maps, dtype=np.float32)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise AlzAuditError(f"{what}: expected heatmaps of shape (N, H, W), got {arr.shape}")
    return arr


def normalize_maps(maps: np.ndarray) -> np.ndarray:
    """Min-max scale each map to [0, 1]; NaN/inf become 0 and a constant map becomes all zeros."""
    arr = as_maps(maps)
    finite = np.isfinite(arr)
    if not finite.all():  # rare: one pass to check is far cheaper than nan_to_num's copies on every call
        arr = np.where(finite, arr, np.float32(0.0))
    lo = arr.min(axis=(1, 2), keepdims=True)
    span = arr.max(axis=(1, 2), keepdims=True) - lo
    out = arr - lo  # a new float32 array; a constant map is already all zeros here
    out /= np.where(span > 0, span, np.float32(1.0))
    return out


def _win_size(h: int, w: int) -> int:
    side = min(h, w, 7)
    side = side if side % 2 == 1 else side - 1
    if side < 3:
        raise AlzAuditError(f"SSIM needs maps of at least 3x3 pixels, got {h}x{w}")
    return side


def ssim_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM (Wang et al. 2004) of each pair of [0, 1] maps, shape (N,); two all-zero maps score 1.

    scikit-image with an explicit ``data_range=1``: its stabilising constants keep constant maps finite.
    One call per pair, never per pixel. A pair of identical maps (an input-independent control under noise)
    scores exactly 1 without the call: scikit-image's formula is then 1 at every pixel to the bit.
    """
    a, b = as_maps(a), as_maps(b)
    if a.shape != b.shape:
        raise AlzAuditError(f"SSIM: map shapes differ, {a.shape} vs {b.shape}")
    win = _win_size(a.shape[1], a.shape[2])
    out = np.ones(len(a), dtype=np.float64)
    differ = np.flatnonzero((a != b).reshape(len(a), -1).any(axis=1)) if len(a) else np.zeros(0, np.int64)
    a64, b64 = a[differ].astype(np.float64), b[differ].astype(np.float64)
    out[differ] = map_in_threads(lambda k: structural_similarity(a64[k], b64[k], data_range=1.0, win_size=win),
                                 range(len(differ)))
    return np.nan_to_num(out, nan=0.0)


def map_in_threads(fn: Callable[[Any], Any], items: Iterable[Any], *, min_items: int = 16) -> list:
    """``[fn(item) for item in items]``, on up to four threads when there are at least ``min_items``: the
    per-map work here (SciPy filters, scikit-image) releases the GIL, so the cores TensorFlow leaves idle
    between passes share it. Results are in order and identical to the serial loop."""
    items = list(items)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = min(4, cores)
    if workers < 2 or len(items) < min_items:
        return [fn(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each pair of maps (rows flattened), shape (N,).

    Vectorised over rows with ``scipy.stats.rankdata``. Undefined correlations get a value instead of
    NaN: two constant maps are identical (1.0); a constant map against a varying one shares no ordering (0.0).
    """
    return spearman_from_ranks(centred_ranks(a), centred_ranks(b))


def centred_ranks(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(each row's average ranks minus their mean, each row's norm): one side of ``spearman_rows``, kept by
    a caller that compares the same maps with many others (the randomisation cascade)."""
    from scipy.stats import rankdata

    ranks = rankdata(np.asarray(maps, dtype=np.float64).reshape(len(maps), -1), axis=1)
    ranks -= ranks.mean(axis=1, keepdims=True)
    return ranks, np.sqrt((ranks ** 2).sum(axis=1))


def spearman_from_ranks(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """``spearman_rows`` from both sides' ``centred_ranks``."""
    (ra, na), (rb, nb) = a, b
    const_a, const_b = na == 0, nb == 0
    denom = np.where(const_a | const_b, 1.0, na * nb)
    rho = np.clip((ra * rb).sum(axis=1) / denom, -1.0, 1.0)
    return np.where(const_a & const_b, 1.0, np.where(const_a | const_b, 0.0, rho))


def as_images(images: Any, what: str = "images") -> np.ndarray:
    """Validate a model-input batch as float32 (N, H, W, C) raw intensities."""
    arr = np.asarray(images, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4:
        raise AlzAuditError(f"{what}: expected images of shape (N, H, W, 1), got {arr.shape}")
    return arr


def predict_in_batches(predict_fn: Any, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Run ``predict_fn`` over ``images`` in slices of ``batch_size`` and stack the (N, C) outputs."""
    outs = [np.asarray(predict_fn(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    out = np.concatenate(outs, axis=0) if outs else np.zeros((0, 0), np.float32)
    return out.reshape(len(images), -1)


def model_predict_fn(model: Any) -> Any:
    """A ``predict_fn`` for a Keras model: a direct inference call, cheaper than ``model.predict``."""
    def predict(batch: np.ndarray) -> np.ndarray:
        return np.asarray(model(batch, training=False))
    return predict
