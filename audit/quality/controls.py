"""Control maps: what an explanation that knows nothing about the model scores on the same images.

A figure means nothing alone: a map uniform over the brain already earns the mask's share of the brain
in the energy pointing game, an edge map already tracks the anatomy, and a centre prior already points
near the ventricles. Every explanation-quality figure is therefore also computed for these controls, and
the gate judges the model's *skill* = its margin over the best control (``audit.quality.skill``).

Controls are built from the images alone (never from the model), deterministically from a seed and each
image's index, so the same image gets the same random control in every figure of a run.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable

import numpy as np
from scipy.ndimage import gaussian_filter, sobel

from audit.quality.base import as_images, map_in_threads, normalize_maps
from audit.schema_io import CONTROL_NAMES as CONTROLS  # noqa: F401 - the names, from their one home

CONTROL_TITLES = {
    "random": "random smooth map",
    "brain_uniform": "uniform over the brain",
    "edge": "edge map (Sobel)",
    "centre": "centre prior",
}


def random_smooth_maps(shape: tuple[int, int, int], seed: int, keys: np.ndarray | None = None) -> np.ndarray:
    """Gaussian-smoothed white noise (σ = max(H, W) / 16), one map per image, seeded by ``(seed, key)``.

    ``keys`` (default ``0..N-1``) identify images, so an image gets the same random map wherever it appears.
    Smooth rather than pixel noise: a blob-shaped map is what a real (but uninformed) explainer produces.
    """
    n, h, w = shape
    keys = np.arange(n) if keys is None else np.asarray(keys).reshape(n)
    if not n:
        return np.zeros((0, h, w), np.float32)
    return np.stack(map_in_threads(lambda k: _random_smooth_map(int(seed), int(k), h, w), keys))


_RANDOM_MAPS: OrderedDict = OrderedDict()  # (seed, key, h, w) -> map, least recently used first
_RANDOM_MAPS_BYTES = 256 * 2**20
_RANDOM_MAPS_LOCK = threading.Lock()
_RANDOM_MAPS_HELD = 0  # bytes


def _random_smooth_map(seed: int, key: int, h: int, w: int) -> np.ndarray:
    """One image's random control, read-only and memoised (up to 256 MiB): a run asks for the same
    images' maps in every figure (localisation, agreement, faithfulness, stability), so each is smoothed
    once."""
    cache_key = (seed, key, h, w)
    with _RANDOM_MAPS_LOCK:
        smooth = _RANDOM_MAPS.get(cache_key)
        if smooth is not None:
            _RANDOM_MAPS.move_to_end(cache_key)
            return smooth
    sigma = max(h, w) / 16.0
    noise = np.random.default_rng([seed, 7, key]).standard_normal((h, w))
    smooth = normalize_maps(gaussian_filter(noise, sigma=sigma, mode="reflect"))[0]
    smooth.flags.writeable = False
    global _RANDOM_MAPS_HELD
    with _RANDOM_MAPS_LOCK:
        if cache_key not in _RANDOM_MAPS:
            _RANDOM_MAPS[cache_key] = smooth
            _RANDOM_MAPS_HELD += smooth.nbytes
        while _RANDOM_MAPS_HELD > _RANDOM_MAPS_BYTES and _RANDOM_MAPS:
            _RANDOM_MAPS_HELD -= _RANDOM_MAPS.popitem(last=False)[1].nbytes
    return smooth


def foreground_masks(images: np.ndarray) -> np.ndarray:
    """Otsu foreground of each image (the brain on a dark background), for data without brain masks."""
    from skimage.filters import threshold_otsu

    x = as_images(images)[..., 0]
    out = np.zeros(x.shape, bool)
    for i, image in enumerate(x):
        if image.max() > image.min():
            out[i] = image > threshold_otsu(image)
    return out


def brain_uniform_maps(images: np.ndarray, brain_masks: np.ndarray | None = None) -> np.ndarray:
    """1 inside the brain, 0 outside: the brain mask when given, else the image's Otsu foreground."""
    masks = foreground_masks(images) if brain_masks is None else np.asarray(brain_masks) > 0.5
    return masks.astype(np.float32)


def edge_maps(images: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude of each image: weight-insensitive, yet it follows the anatomy.

    OpenCV's 3x3 Sobel in float64 with replicated borders, one image at a time (an N-D filter would also
    smooth across neighbouring images of the batch): SciPy's ``sobel(mode="nearest")`` to float rounding
    (``edge_maps_scipy``, the reference the tests hold it to) at a twentieth of the time.
    """
    import cv2

    x = as_images(images)[..., 0].astype(np.float64)

    def magnitude(image: np.ndarray) -> np.ndarray:
        along_rows = cv2.Sobel(image, cv2.CV_64F, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE)
        along_cols = cv2.Sobel(image, cv2.CV_64F, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE)
        return np.hypot(along_rows, along_cols)

    edges = np.stack([magnitude(image) for image in x]) if len(x) else np.zeros(x.shape)
    return normalize_maps(edges)


def edge_maps_scipy(images: np.ndarray) -> np.ndarray:
    """``edge_maps`` with SciPy's Sobel: the reference its OpenCV version is tested against."""
    x = as_images(images)[..., 0].astype(np.float64)
    edges = np.stack([np.hypot(sobel(image, axis=0, mode="nearest"), sobel(image, axis=1, mode="nearest"))
                      for image in x]) if len(x) else np.zeros(x.shape)
    return normalize_maps(edges)


def centre_prior_maps(shape: tuple[int, int, int]) -> np.ndarray:
    """An isotropic Gaussian at the image centre (σ = a quarter of each side), the same for every image."""
    n, h, w = shape
    yy = (np.arange(h) - (h - 1) / 2.0) / (h / 4.0)
    xx = (np.arange(w) - (w - 1) / 2.0) / (w / 4.0)
    prior = np.exp(-0.5 * (yy[:, None] ** 2 + xx[None, :] ** 2)).astype(np.float32)
    return np.broadcast_to(prior, (n, h, w)).copy()


def control_maps(images: np.ndarray, *, brain_masks: np.ndarray | None = None, seed: int = 0,
                 keys: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every control map for a batch of raw images ``(N, H, W, 1)``: ``{name: (N, H, W) float32 in [0, 1]}``."""
    x = as_images(images)
    shape = x.shape[:3]
    return {
        "random": random_smooth_maps(shape, seed, keys),
        "brain_uniform": brain_uniform_maps(x, brain_masks),
        "edge": edge_maps(x),
        "centre": centre_prior_maps(shape),
    }


def image_only_explainers(seed: int = 0) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Controls as functions of the (possibly noisy) input alone, for stability: they see only pixels."""
    return {
        "random": lambda x: random_smooth_maps(as_images(x).shape[:3], seed),
        "brain_uniform": lambda x: brain_uniform_maps(x),
        "edge": edge_maps,
        "centre": lambda x: centre_prior_maps(as_images(x).shape[:3]),
    }
