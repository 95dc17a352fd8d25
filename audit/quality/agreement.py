"""Agreement between two explainers (e.g. Grad-CAM and Integrated Gradients) on the same images.

Two methods that see the same evidence should point at the same places; low agreement means at least
one of them is not telling the whole story. The maps are first brought to a common coarse grid so that
IG's pixel speckle and Grad-CAM's blobs are compared at the same scale.
"""
from __future__ import annotations

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter

from audit.quality.base import CITES, MetricResult, as_maps, normalize_maps, spearman_rows, ssim_pairs
from model.errors import AlzAuditError

_CV_MAX_CHANNELS = 4  # OpenCV area-resizes at most 4 channels per call (arbitrary scale)


def to_grid(maps: np.ndarray, grid: int = 28, sigma: float = 1.0, *, scale: bool = True) -> np.ndarray:
    """|map| area-averaged (cv2.INTER_AREA) to ``grid``×``grid``, Gaussian-smoothed, scaled to [0, 1].

    ``sigma`` is in grid cells; ``scale=False`` keeps the averaged values (a mask's area share per cell).
    Maps are resized 4 at a time as channels of one image.
    """
    arr = np.abs(np.nan_to_num(as_maps(maps), nan=0.0, posinf=0.0, neginf=0.0))
    stack = np.moveaxis(arr, 0, -1)  # (H, W, N)
    parts = []
    for start in range(0, stack.shape[-1], _CV_MAX_CHANNELS):
        chunk = np.ascontiguousarray(stack[..., start:start + _CV_MAX_CHANNELS])
        out = cv2.resize(chunk, (grid, grid), interpolation=cv2.INTER_AREA)
        parts.append(out.reshape(grid, grid, -1))
    small = np.moveaxis(np.concatenate(parts, axis=-1), -1, 0)
    if sigma > 0:
        small = gaussian_filter(small, sigma=(0, sigma, sigma), mode="nearest")
    return normalize_maps(small) if scale else small.astype(np.float32)


def top_region(maps: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask of each map's top ``fraction`` of pixels, shape like ``maps``.

    Ties at the floor are not taken (a map that is zero over 90% of the image has a smaller top region,
    not an arbitrary one); a constant map has an empty top region.
    """
    flat = maps.reshape(len(maps), -1)
    k = max(1, int(round(fraction * flat.shape[1])))
    kth = -np.partition(-flat, k - 1, axis=1)[:, k - 1:k]  # k-th largest value per row
    floor = flat.min(axis=1, keepdims=True)
    region = np.where(kth > floor, flat >= kth, flat > floor)
    return region.reshape(maps.shape)


def iou_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boolean masks per sample; two empty masks count as identical (1.0)."""
    a = a.reshape(len(a), -1)
    b = b.reshape(len(b), -1)
    inter = (a & b).sum(axis=1)
    union = (a | b).sum(axis=1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0).astype(np.float64)


def region_spearman(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Spearman of each pair of maps over the pixels of its own region only (e.g. the brain), shape (N,)."""
    out = np.empty(len(a), dtype=np.float64)
    for i, keep in enumerate(region.reshape(len(region), -1)):
        if keep.sum() < 3:
            out[i] = np.nan
            continue
        out[i] = spearman_rows(a[i].reshape(1, -1)[:, keep], b[i].reshape(1, -1)[:, keep])[0]
    return out


def agreement(maps_a: np.ndarray, maps_b: np.ndarray, *, grid: int = 28, top_fraction: float = 0.2,
              sigma: float = 1.0, region: np.ndarray | None = None) -> dict[str, MetricResult]:
    """Per-image Spearman, top-region IoU and SSIM between two explainers' maps on a common grid.

    Returns ``{"spearman", "iou_top20", "ssim"}`` (the IoU key carries the percentage, so
    ``top_fraction=0.1`` gives ``"iou_top10"``); all higher-is-better. Chance level for the IoU of two
    unrelated maps is f/(2-f), ≈0.11 for f=0.2.

    ``region`` (``(N, H, W)`` masks, e.g. the brain) restricts the Spearman correlation to the grid cells
    well inside it: over the whole image any two maps that are bright on the brain and dark on the
    background agree (a uniform brain mask scores ≈ 0.95 against IG), which says nothing about evidence.
    """
    a, b = as_maps(maps_a, "maps_a"), as_maps(maps_b, "maps_b")
    if len(a) != len(b):
        raise AlzAuditError(f"agreement: {len(a)} maps against {len(b)}; need one pair per image")
    ga, gb = to_grid(a, grid, sigma), to_grid(b, grid, sigma)
    cites = [CITES["arun2021"], CITES["adebayo2018"]]
    iou_key = f"iou_top{int(round(100 * top_fraction))}"
    if region is not None:
        # Cells whose whole smoothing neighbourhood is inside the region: at its border every smoothed
        # map fades towards the background, which would again reward brain-versus-background.
        inside = to_grid(np.asarray(region, dtype=np.float32), grid, sigma=sigma, scale=False) > 0.99
        rho = region_spearman(ga, gb, inside)
    else:
        rho = spearman_rows(ga, gb)
    return {
        "spearman": MetricResult("agreement_spearman", rho, True, cites),
        iou_key: MetricResult(f"agreement_{iou_key}",
                              iou_rows(top_region(ga, top_fraction), top_region(gb, top_fraction)), True, cites),
        "ssim": MetricResult("agreement_ssim", ssim_pairs(ga, gb), True, cites + [CITES["wang2004"]]),
    }
