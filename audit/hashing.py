"""The numeric core of the leakage audit: foreground pose, canonical thumbnails, exact top-k search,
ECC registration and the tile match score; also perceptual hashes, Hamming search and batched SSIM.

What the audit uses (second half of this module, "pose-normalised search and matching"): every slice is
mapped onto a canonical pose by its brain foreground, so rotations at any angle, shifts and zooms vanish
before anything is compared; a flip-invariant canonical thumbnail is the search key; candidate pairs are
registered with OpenCV's ECC and scored tile by tile on band-passed images.

Perceptual hashes (first half): a 64-bit DCT pHash (the top-left 8x8 DCT coefficients of a 32x32
thumbnail, thresholded at their median) and a 64-bit dHash (signs of horizontal gradients on a 9x8
thumbnail) summarise an image's low-frequency structure. The audit keeps the pHash of the canonical
image as a cheap veto and for the report. The variant hashes (:data:`DEFAULT_VARIANTS`: flips x rotations
every 5°) were the audit's search before it learned poses; a 5° grid misses twins turned in between and
every shift or zoom, so they stay only as a public API (and as the baseline of benchmarks/bench_leakage.py).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, NamedTuple, Sequence

import numpy as np

HASH_BITS = 64
PHASH_SIZE = 32          # pHash thumbnail side; 8x8 lowest DCT frequencies are kept
WORK_SIZE = 64           # transforms are applied at this resolution (cheap, and far above the hash grid)
SSIM_SIZE = 64           # SSIM thumbnails: enough detail to tell two brains apart, cheap to batch
_SSIM_SIGMA = 1.5        # Gaussian window of Wang et al. 2004 (11x11, sigma 1.5), as scikit-image
_SSIM_RADIUS = 5


@dataclass(frozen=True)
class Variant:
    """A transform an augmenter may have applied: flip (``""``, ``"h"``, ``"v"``, ``"hv"``) then rotate."""

    flip: str = ""
    angle: float = 0.0

    @property
    def name(self) -> str:
        parts = {"": [], "h": ["flip"], "v": ["vflip"], "hv": ["flip", "vflip"]}[self.flip]
        if self.angle:
            parts.append(f"rotate{self.angle:+g}")
        return "+".join(parts) or "identity"


def make_variants(flips: Iterable[str] = ("", "h", "v", "hv"),
                  angles: Iterable[float] = (0, -5, 5, -10, 10, -15, 15)) -> tuple[Variant, ...]:
    """Every flip combined with every rotation; identity first. The set is closed under inversion
    (flip then rotate by a is its own inverse), so matching is symmetric."""
    out = [Variant(f, float(a)) for f in flips for a in angles]
    out.sort(key=lambda v: (v.flip != "", v.flip, abs(v.angle), v.angle))
    return tuple(out)


# The pre-pose search hashed every image under flips x rotations every 5° (the reference augmentation's
# ±15°). Kept as public API; benchmarks/bench_leakage.py measures it as the baseline (61% recall on
# augmenters' twins: every shifted one missed).
DEFAULT_VARIANTS = make_variants()


# --------------------------------------------------------------------------------------------- hashes
def apply_variant(image: np.ndarray, variant: Variant) -> np.ndarray:
    """``image`` flipped then rotated about its centre (edge pixels repeated, like Keras' fill "nearest")."""
    import cv2

    out = image
    if variant.flip == "h":
        out = out[:, ::-1]
    elif variant.flip == "v":
        out = out[::-1, :]
    elif variant.flip == "hv":
        out = out[::-1, ::-1]
    out = np.ascontiguousarray(out)
    if variant.angle:
        h, w = out.shape[:2]
        matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), variant.angle, 1.0)
        out = cv2.warpAffine(out, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """``(N, 64)`` booleans -> ``(N,)`` uint64, first bit most significant."""
    packed = np.packbits(np.asarray(bits, dtype=bool).reshape(len(bits), HASH_BITS), axis=1)
    return np.ascontiguousarray(packed).view(">u8").ravel().astype(np.uint64)


def phash(thumbs: np.ndarray) -> np.ndarray:
    """DCT perceptual hash of ``(N, 32, 32)`` thumbnails (as imagehash.phash): bits = 8x8 low DCT > median."""
    from scipy.fft import dctn

    coeffs = dctn(np.asarray(thumbs, dtype=np.float32), type=2, axes=(1, 2), norm="ortho")[:, :8, :8]
    low = coeffs.reshape(len(coeffs), HASH_BITS)
    return pack_bits(low > np.median(low, axis=1, keepdims=True))


def dhash(thumbs: np.ndarray) -> np.ndarray:
    """Difference hash of ``(N, 8, 9)`` thumbnails: is each pixel brighter than its left neighbour."""
    thumbs = np.asarray(thumbs, dtype=np.float32)
    return pack_bits(thumbs[:, :, 1:] > thumbs[:, :, :-1])


def work_image(image: np.ndarray, long_side: int = WORK_SIZE) -> np.ndarray:
    """``image`` shrunk (area averaging) so its long side is ``long_side``, keeping its aspect ratio: a
    rotation must happen in the image's own geometry (a 10° turn of a 176x208 slice is not a 10° turn of
    the square the model squashes it to)."""
    import cv2

    h, w = image.shape[:2]
    scale = long_side / max(h, w)
    size = (max(8, round(w * scale)), max(8, round(h * scale)))
    return cv2.resize(np.asarray(image, np.float32), size, interpolation=cv2.INTER_AREA)


def hash_image(image: np.ndarray, variants: Sequence[Variant] = DEFAULT_VARIANTS) -> tuple[np.ndarray, np.ndarray]:
    """pHash and dHash of one grayscale slice under each variant: two ``(V,)`` uint64 arrays.

    Each variant is applied in the slice's own geometry, then squashed to the square hash grid the way
    the model squashes the slice to its square input (``model/pipeline.py``: full frame, no crop).
    """
    return hash_work(work_image(image), variants)


def hash_work(work: np.ndarray, variants: Sequence[Variant] = DEFAULT_VARIANTS) -> tuple[np.ndarray, np.ndarray]:
    """:func:`hash_image` of an image already shrunk by :func:`work_image`."""
    import cv2

    work = np.asarray(work, np.float32)
    p_thumbs = np.empty((len(variants), PHASH_SIZE, PHASH_SIZE), np.float32)
    d_thumbs = np.empty((len(variants), 8, 9), np.float32)
    for k, variant in enumerate(variants):
        moved = apply_variant(work, variant)
        p_thumbs[k] = cv2.resize(moved, (PHASH_SIZE, PHASH_SIZE), interpolation=cv2.INTER_AREA)
        d_thumbs[k] = cv2.resize(moved, (9, 8), interpolation=cv2.INTER_AREA)
    return phash(p_thumbs), dhash(d_thumbs)


# ------------------------------------------------------------------------------------ Hamming search
_BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _bitwise_count(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``np.bitwise_count`` (numpy >= 2, a hardware popcount), or a byte lookup table on numpy 1.x
    (TensorFlow 2.16/2.17 pin numpy < 2)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x, out=out)
    x = np.ascontiguousarray(x, dtype=np.uint64)
    counts = _BYTE_BITS[x.view(np.uint8).reshape(*x.shape, 8)].sum(axis=-1, dtype=np.uint8)
    if out is None:
        return counts
    out[...] = counts
    return out


def popcount(values: np.ndarray) -> np.ndarray:
    """Set bits per uint64 (hardware popcount through ``np.bitwise_count``), as uint8."""
    return _bitwise_count(np.asarray(values, dtype=np.uint64)).astype(np.uint8, copy=False)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise Hamming distance of two broadcastable uint64 arrays."""
    return popcount(np.bitwise_xor(np.asarray(a, np.uint64), np.asarray(b, np.uint64)))


@dataclass(frozen=True)
class Matches:
    """Pairs found by :func:`hamming_search`: parallel arrays, sorted by query then distance."""

    query: np.ndarray     # int64, index into the query hashes
    ref: np.ndarray       # int64, index of the reference item
    variant: np.ndarray   # int16, which of the reference item's variant hashes matched best
    distance: np.ndarray  # uint8, Hamming distance of that best variant

    def __len__(self) -> int:
        return int(self.query.size)

    def take(self, keep: np.ndarray) -> "Matches":
        return Matches(self.query[keep], self.ref[keep], self.variant[keep], self.distance[keep])


def hamming_search(query: np.ndarray, ref: np.ndarray, max_distance: int, *, top_k: int | None = None,
                   exclude_self: bool = False, block: tuple[int, int] = (64, 4096),
                   workers: int | None = None) -> Matches:
    """Every (query, reference item) pair within ``max_distance`` bits, best variant per pair.

    ``query`` is ``(Q,)`` uint64; ``ref`` is ``(R,)`` or ``(R, V)`` (V variant hashes per item). Why
    blocks: the full distance matrix of 34,000 x 6,400 x 28 variants would be 6 GB; blocks of 64 x 4096
    XORs (2 MB) stay in cache, never materialise it, and run on a thread pool (numpy releases the GIL).
    ``top_k`` keeps each query's k nearest items (bounding the pairs that SSIM must confirm);
    ``exclude_self`` drops item i for query i (an all-against-all search of one set).
    """
    query = np.ascontiguousarray(query, dtype=np.uint64).ravel()
    ref = np.asarray(ref, dtype=np.uint64)
    n_var = 1 if ref.ndim == 1 else int(ref.shape[1])
    flat = np.ascontiguousarray(ref).ravel()
    rows, cols = block
    limit = np.uint8(max(0, min(int(max_distance), HASH_BITS)))
    if query.size == 0 or flat.size == 0 or max_distance < 0:
        return _reduce([], n_var, top_k, exclude_self)

    def run(start: int) -> Matches:
        stop = min(start + rows, query.size)
        q = query[start:stop, None]
        xor = np.empty((stop - start, cols), np.uint64)
        count = np.empty((stop - start, cols), np.uint8)
        hit = np.empty((stop - start, cols), bool)
        found = []
        for c0 in range(0, flat.size, cols):
            r = flat[None, c0:c0 + cols]
            n = r.shape[1]
            x, c, h = xor[:, :n], count[:, :n], hit[:, :n]
            np.bitwise_xor(q, r, out=x)
            _bitwise_count(x, out=c)
            np.less_equal(c, limit, out=h)
            if h.any():
                i, j = np.nonzero(h)
                found.append((i + start, j + c0, c[i, j]))
        # Reduce per row block, so memory stays bounded by the block even when many pairs match.
        return _reduce(found, n_var, top_k, exclude_self)

    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(run, range(0, query.size, rows)))
    return Matches(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("query", "ref", "variant", "distance")))


def _reduce(found: list, n_var: int, top_k: int | None, exclude_self: bool) -> Matches:
    """Raw hits ``(query, flat column, distance)`` -> best variant per pair, optionally top-k per query."""
    if not found:
        return Matches(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int16), np.empty(0, np.uint8))
    qi = np.concatenate([f[0] for f in found]).astype(np.int64)
    col = np.concatenate([f[1] for f in found]).astype(np.int64)
    dist = np.concatenate([f[2] for f in found]).astype(np.uint8)
    item, var = np.divmod(col, n_var)
    if exclude_self:
        keep = item != qi
        qi, item, var, dist = qi[keep], item[keep], var[keep], dist[keep]
    order = np.lexsort((var, dist, item, qi))              # per pair: smallest distance, then first variant
    qi, item, var, dist = qi[order], item[order], var[order], dist[order]
    first = np.ones(qi.size, bool)
    first[1:] = (qi[1:] != qi[:-1]) | (item[1:] != item[:-1])
    qi, item, var, dist = qi[first], item[first], var[first], dist[first]
    order = np.lexsort((item, dist, qi))                    # per query: nearest first
    qi, item, var, dist = qi[order], item[order], var[order], dist[order]
    if top_k is not None and qi.size:
        starts = np.flatnonzero(np.r_[True, qi[1:] != qi[:-1]])
        rank = np.arange(qi.size) - np.repeat(starts, np.diff(np.r_[starts, qi.size]))
        keep = rank < top_k
        qi, item, var, dist = qi[keep], item[keep], var[keep], dist[keep]
    return Matches(qi, item, var.astype(np.int16), dist)


# ------------------------------------------------------------------------------------------------ SSIM
def aligned_thumbnail(work: np.ndarray, variant: Variant = Variant(), size: int = SSIM_SIZE) -> np.ndarray:
    """``work`` after ``variant``, squashed to a ``size`` square (float32): one side of an SSIM pair."""
    import cv2

    moved = apply_variant(np.asarray(work, np.float32), variant)
    return cv2.resize(moved, (size, size), interpolation=cv2.INTER_AREA)


def stretch(thumbs: np.ndarray) -> np.ndarray:
    """Each image of an ``(N, H, W)`` stack mapped from its 1st-99th percentile onto [0, 1], so SSIM
    compares structure, not the brightness or contrast an augmenter may have changed."""
    thumbs = np.asarray(thumbs, np.float32)
    flat = thumbs.reshape(len(thumbs), -1)
    if flat.size == 0:
        return thumbs
    k_lo, k_hi = int(0.01 * (flat.shape[1] - 1)), int(np.ceil(0.99 * (flat.shape[1] - 1)))
    part = np.partition(flat, (k_lo, k_hi), axis=1)
    lo, hi = part[:, k_lo, None, None], part[:, k_hi, None, None]
    return np.clip((thumbs - lo) / np.maximum(hi - lo, 1e-6), 0.0, 1.0)


def ssim_batch(a: np.ndarray, b: np.ndarray, *, data_range: float = 1.0) -> np.ndarray:
    """Mean SSIM of each pair ``(a[k], b[k])`` of ``(N, S, S)`` images.

    Identical to ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)`` (tested), but batched: the N images are stacked into one tall image and
    blurred by OpenCV at once; the 5-pixel border that scikit-image discards is exactly where neighbouring
    tiles bleed into each other, so it is discarded here too.
    """
    import cv2

    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"ssim_batch needs two (N, H, W) stacks of one shape, got {a.shape} and {b.shape}")
    n, h, w = a.shape
    if n == 0:
        return np.empty(0, np.float32)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    tall_a, tall_b = a.reshape(n * h, w), b.reshape(n * h, w)
    ksize = (2 * _SSIM_RADIUS + 1, 2 * _SSIM_RADIUS + 1)
    r = _SSIM_RADIUS
    inner = (slice(None), slice(r, h - r), slice(r, w - r))   # only the pixels scikit-image averages

    def blurred(x):
        return cv2.GaussianBlur(x, ksize, _SSIM_SIGMA, borderType=cv2.BORDER_REFLECT).reshape(n, h, w)[inner]

    mu_a, mu_b = blurred(tall_a), blurred(tall_b)
    aa, bb, ab = blurred(tall_a * tall_a), blurred(tall_b * tall_b), blurred(tall_a * tall_b)
    mu_ab = mu_a * mu_b
    mu_a *= mu_a
    mu_b *= mu_b
    ab -= mu_ab                     # covariance
    aa -= mu_a
    aa += bb
    aa -= mu_b                      # var_a + var_b
    mu_a += mu_b                    # mu_a² + mu_b²
    num = (2 * mu_ab + c1) * (2 * ab + c2)
    den = (mu_a + c1) * (aa + c2)
    return (num / den).mean(axis=(1, 2), dtype=np.float64).astype(np.float32)


# ================================================================== pose-normalised search and matching
# Why: augmenters rotate by any angle in ±15°, shift by up to 10% and zoom by ±10%, and a hash grid of
# variants (0/±5/±10/±15°) misses everything in between and every shift or zoom. A brain slice lies on a
# black background, so its foreground says where it is (centroid), how it is turned (principal axis) and
# how large it is (area): mapping every slice onto that canonical pose makes rotation, shift and zoom
# (nearly) vanish before anything is compared. The canonical thumbnail is blurred and small (24x24): a
# search key that ranks a twin first among thousands of similar brains, not a proof. The proof is a
# registration of the candidate pair (pose estimate refined by OpenCV's ECC) and a band-pass correlation
# at 128 px: after registration a twin differs from its original by interpolation, noise and JPEG only,
# while another brain differs in the fine anatomy that the band keeps.

POSE_SIZE = 64           # long side at which pose, canonical thumbnail and ECC are computed
CONFIRM_SIZE = 128       # long side at which a registered pair is compared
CANON_SIZE = 24          # side of the pose-normalised thumbnail (the search key)
CANON_FILL = 0.55        # sqrt(foreground area) maps to this fraction of the canonical side
CANON_BLUR = 0.5         # Gaussian sigma on the canonical thumbnail (canonical pixels)
FOREGROUND_LEVEL = 0.08  # foreground: blurred intensity above 1st pct + this share of the 1st-99th pct range
MATCH_BAND = (0.7, 2.0)  # difference-of-Gaussians band (sigmas in CONFIRM_SIZE pixels) the match score keeps
MIN_OVERLAP = 0.5        # a pair is only judged where at least this share of both brains overlaps
MATCH_TILE = 16          # side (CONFIRM_SIZE pixels) of the tiles whose correlations the match score ranks
MIN_TILES = 8            # fewer comparable tiles than this: too little brain left to judge
FLIP_NAMES = ("", "h", "v", "hv")
FLIP_TIE = 0.02          # a runner-up flip this close (thumbnail correlation) to the best is tried too
POSE_FIELDS = ("cx", "cy", "angle", "size", "elongation")


def intensity_levels(image: np.ndarray) -> tuple[float, float]:
    """1st and 99th percentiles: the range :func:`stretch` maps onto [0, 1] (robust to brightness/contrast)."""
    flat = np.asarray(image, np.float32).ravel()
    if flat.size == 0:
        return 0.0, 1.0
    k_lo, k_hi = int(0.01 * (flat.size - 1)), int(np.ceil(0.99 * (flat.size - 1)))
    part = np.partition(flat, (k_lo, k_hi))
    return float(part[k_lo]), float(part[k_hi])


def brain_mask(image: np.ndarray, levels: tuple[float, float] | None = None) -> np.ndarray:
    """uint8 mask of the largest bright region, holes filled: the brain on its black background.

    The level sits just above the background (8% of the intensity range), where brightness and contrast
    changes move the boundary least; filling the outer contour makes ventricles and sulci irrelevant.
    """
    import cv2

    image = np.asarray(image, np.float32)
    lo, hi = levels if levels is not None else intensity_levels(image)
    blurred = cv2.GaussianBlur(image, (0, 0), max(1.0, image.shape[1] / POSE_SIZE))
    mask = (blurred > lo + FOREGROUND_LEVEL * max(hi - lo, 1e-6)).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return mask
    out = np.zeros_like(mask)
    cv2.drawContours(out, [max(contours, key=cv2.contourArea)], -1, 1, thickness=cv2.FILLED)
    return out


def foreground_pose(image: np.ndarray, levels: tuple[float, float] | None = None) -> np.ndarray:
    """``[cx, cy, angle, size, elongation]`` of the brain mask, in ``image`` pixels (float32).

    Centroid and second moments of the filled mask (``cv2.moments``): ``angle`` (degrees) turns the major
    axis onto the vertical, ``size`` is sqrt(area), ``elongation`` the axis ratio (near 1: the angle is
    ill-defined, and the registration has to find it). An empty mask gives the frame's centre and size.
    """
    import cv2

    h, w = np.asarray(image).shape[:2]
    moments = cv2.moments(brain_mask(image, levels), binaryImage=True)
    area = moments["m00"]
    if area < 0.01 * h * w:
        return np.array([(w - 1) / 2, (h - 1) / 2, 0.0, float(np.sqrt(h * w)), 1.0], np.float32)
    cx, cy = moments["m10"] / area, moments["m01"] / area
    mu20, mu02, mu11 = moments["mu20"] / area, moments["mu02"] / area, moments["mu11"] / area
    angle = 0.5 * np.degrees(np.arctan2(2 * mu11, mu02 - mu20))          # 0 when the major axis is vertical
    root = np.sqrt(0.25 * (mu20 - mu02) ** 2 + mu11 ** 2)
    major, minor = 0.5 * (mu20 + mu02) + root, 0.5 * (mu20 + mu02) - root
    return np.array([cx, cy, angle, np.sqrt(area), major / max(minor, 1e-9)], np.float32)


def canonical_matrix(pose: np.ndarray, size: int = CANON_SIZE) -> np.ndarray:
    """2x3 affine taking image pixels to the canonical frame: centroid to the centre, major axis vertical,
    sqrt(area) to ``CANON_FILL * size``."""
    import cv2

    cx, cy, angle, extent = (float(v) for v in pose[:4])
    matrix = cv2.getRotationMatrix2D((cx, cy), -angle, CANON_FILL * size / max(extent, 1e-6))
    matrix[:, 2] += ((size - 1) / 2 - cx, (size - 1) / 2 - cy)
    return matrix


def canonical_thumbnail(image: np.ndarray, pose: np.ndarray, size: int = CANON_SIZE,
                        blur: float = CANON_BLUR, background: float = 0.0) -> np.ndarray:
    """``image`` warped into its canonical pose, ``size`` square, float32 (the search key before
    normalisation)."""
    import cv2

    out = cv2.warpAffine(np.asarray(image, np.float32), canonical_matrix(pose, size), (size, size),
                         flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=float(background))
    return cv2.GaussianBlur(out, (0, 0), blur) if blur else out


def flipped(stack: np.ndarray, flip: str) -> np.ndarray:
    """The last two axes of ``stack`` flipped horizontally (``"h"``), vertically (``"v"``) or both."""
    if flip in ("h", "hv"):
        stack = stack[..., ::-1]
    if flip in ("v", "hv"):
        stack = stack[..., ::-1, :]
    return stack


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit length: their dot product is the normalised cross-correlation."""
    x = np.asarray(x, np.float32).reshape(len(x), -1)
    x = x - x.mean(axis=1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


def flip_invariant(thumbs: np.ndarray) -> np.ndarray:
    """Search keys ``(N, D)`` of canonical thumbnails ``(N, S, S)`` that do not change under flips.

    Why: one matrix product then searches all four flips at once (four times less work than a key per
    flip). The thumbnail splits into parts even or odd under the horizontal and the vertical flip; a flip
    only changes the sign of the odd parts, so (even-even, |even-odd|, |odd-even|, |odd-odd|) is invariant.
    Each part is symmetric, so one quadrant of it suffices; the odd parts are weighted 2x because a brain
    is nearly symmetric and its odd parts are small. Rows are unit length: dot product = correlation.
    """
    c = np.asarray(thumbs, np.float32)
    c = c - c.mean(axis=(1, 2), keepdims=True)
    h, v, hv = c[:, :, ::-1], c[:, ::-1, :], c[:, ::-1, ::-1]
    parts = (c + h + v + hv, 2 * np.abs(c + h - v - hv), 2 * np.abs(c - h + v - hv), 2 * np.abs(c - h - v + hv))
    qh, qw = (c.shape[1] + 1) // 2, (c.shape[2] + 1) // 2
    key = np.concatenate([p[:, :qh, :qw].reshape(len(c), -1) for p in parts], axis=1)
    return unit_rows(key)


def best_flip(query_thumbs: np.ndarray, ref_thumbs: np.ndarray, tie: float = FLIP_TIE) -> tuple[np.ndarray, np.ndarray]:
    """For pairs of canonical thumbnails: which flip of the reference correlates best with the query, and
    the runner-up when it comes within ``tie`` of the best (a nearly symmetric brain often ties a flip
    with no flip), else the best again: two ``(P,)`` int arrays (indices into :data:`FLIP_NAMES`).

    Measured on 1,400 flipped twins: the best is right for 99.9%; when it is not, the runner-up is, within
    0.002 of it."""
    q = unit_rows(query_thumbs)
    scores = np.stack([np.einsum("pd,pd->p", q, unit_rows(flipped(np.asarray(ref_thumbs), f))) for f in FLIP_NAMES], 1)
    order = np.argsort(-scores, axis=1, kind="stable")
    rows = np.arange(len(order))
    close = scores[rows, order[:, 0]] - scores[rows, order[:, 1]] <= tie
    return order[:, 0], np.where(close, order[:, 1], order[:, 0])


@dataclass(frozen=True)
class Candidates:
    """Pairs nominated by :func:`similarity_search`: parallel arrays, per query most similar first."""

    query: np.ndarray       # int64 index into the query keys
    ref: np.ndarray         # int64 index into the reference keys
    similarity: np.ndarray  # float32 correlation of the keys

    def __len__(self) -> int:
        return int(self.query.size)


def similarity_search(query: np.ndarray, ref: np.ndarray, top_k: int, *, min_similarity: float = -1.0,
                      exclude_self: bool = False, block: int = 1024, workers: int | None = None) -> Candidates:
    """Each query's ``top_k`` most similar reference keys (dot product of unit rows), exactly.

    Why blocks: 34,000 x 6,400 similarities are 870 MB as float32; blocks of 1,024 queries (26 MB) are
    multiplied (BLAS), reduced to their top k (``np.argpartition``) and dropped, on a thread pool.
    ``exclude_self`` drops reference i for query i (one set searched against itself).
    """
    query = np.ascontiguousarray(query, np.float32)
    ref_t = np.ascontiguousarray(np.asarray(ref, np.float32).T)
    n_ref = ref_t.shape[1]
    k = int(min(max(top_k, 0), n_ref - (1 if exclude_self else 0)))
    empty = Candidates(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))
    if len(query) == 0 or n_ref == 0 or k <= 0:
        return empty

    def run(start: int) -> Candidates:
        sims = query[start:start + block] @ ref_t
        rows = np.arange(sims.shape[0])
        if exclude_self:
            own = start + rows
            inside = own < n_ref
            sims[rows[inside], own[inside]] = -np.inf
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < n_ref else np.tile(np.arange(n_ref), (len(rows), 1))
        values = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-values, axis=1, kind="stable")
        top, values = np.take_along_axis(top, order, axis=1), np.take_along_axis(values, order, axis=1)
        keep = values >= min_similarity
        qi = np.repeat(rows + start, k).reshape(-1, k)
        return Candidates(qi[keep].astype(np.int64), top[keep].astype(np.int64), values[keep].astype(np.float32))

    workers = workers or min(2, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(run, range(0, len(query), block)))
    return Candidates(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("query", "ref", "similarity")))


# ------------------------------------------------------------------------------ registration and match
def _h(matrix: np.ndarray) -> np.ndarray:
    return np.vstack([np.asarray(matrix, np.float64), [0.0, 0.0, 1.0]])


def _flip_matrix(flip: str, size: int) -> np.ndarray:
    out = np.eye(3)
    if flip in ("h", "hv"):
        out[0] = (-1.0, 0.0, size - 1.0)
    if flip in ("v", "hv"):
        out[1] = (0.0, -1.0, size - 1.0)
    return out


def pair_matrix(query_pose: np.ndarray, ref_pose: np.ndarray, flip: str = "") -> np.ndarray:
    """2x3 affine from reference pixels to query pixels implied by the two poses and a flip: what the
    registration starts from. (``cv2.warpAffine(query, M, ..., WARP_INVERSE_MAP)`` lays the query over the
    reference.)"""
    q, r = _h(canonical_matrix(query_pose, CANON_SIZE)), _h(canonical_matrix(ref_pose, CANON_SIZE))
    return (np.linalg.inv(q) @ _flip_matrix(flip, CANON_SIZE) @ r)[:2]


def rescale_matrix(matrix: np.ndarray, ref_scale: tuple[float, float], query_scale: tuple[float, float]) -> np.ndarray:
    """A reference->query pixel map re-expressed for images resized by (sx, sy) each (pixel centres kept)."""
    def s(scale):
        sx, sy = scale
        return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1.0]])

    return (s(query_scale) @ _h(matrix) @ np.linalg.inv(s(ref_scale)))[:2]


def register(query: np.ndarray, ref: np.ndarray, init: np.ndarray, *, iterations: int = 40) -> np.ndarray | None:
    """``init`` (reference->query pixels) refined by ECC (Evangelidis & Psarakis 2008, ``cv2.findTransformECC``,
    affine) on two stretched, blurred images of one size class; ``None`` when ECC fails or wanders.

    Why a bound on the refinement: it only has to remove what the pose estimate got wrong (a few degrees,
    a few per cent, a pixel or two); a refinement that needs more is fitting another brain, not a twin.
    """
    import cv2

    init = np.asarray(init, np.float32)
    try:
        _, warp = cv2.findTransformECC(np.asarray(ref, np.float32), np.asarray(query, np.float32), init.copy(),
                                       cv2.MOTION_AFFINE,
                                       (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iterations, 1e-4), None, 1)
    except cv2.error:
        return None
    if not np.all(np.isfinite(warp)):
        return None
    change = np.linalg.solve(init[:, :2].astype(np.float64), warp[:, :2].astype(np.float64))
    singular = np.linalg.svd(change, compute_uv=False)
    shift = np.hypot(*(warp[:, 2] - init[:, 2]))
    turn = abs(np.degrees(np.arctan2(change[1, 0] - change[0, 1], change[0, 0] + change[1, 1])))
    if (singular[0] / max(singular[1], 1e-9) > 1.12 or not 0.88 < np.sqrt(np.prod(singular)) < 1.14
            or turn > 8.0 or shift > 0.08 * max(ref.shape)):
        return None
    return warp


def band_pass(image: np.ndarray, band: tuple[float, float] = MATCH_BAND) -> np.ndarray:
    """Difference of Gaussians: the fine anatomy that tells one brain from another, without the coarse
    shape every brain shares or the pixel noise that JPEG and resampling change."""
    import cv2

    return cv2.GaussianBlur(image, (0, 0), band[0]) - cv2.GaussianBlur(image, (0, 0), band[1])


def match_score(query: np.ndarray, ref: np.ndarray, matrix: np.ndarray, *, query_mask: np.ndarray,
                ref_mask: np.ndarray, band: tuple[float, float] = MATCH_BAND, ref_band: np.ndarray | None = None,
                with_ssim: bool = True) -> "MatchScore":
    """:class:`MatchScore` of the query laid over the reference by ``matrix`` (reference->query).

    Both images stretched to [0, 1] already; compared over the two brain masks where the query has
    pixels (a shifted or zoomed twin has lost a margin, and that margin is not held against it).
    ``match``: the band-passed images are correlated tile by tile (:data:`MATCH_TILE` px squares), and
    the 10th percentile of the tiles' correlations is the score. Why tiles: a registered brain of another
    subject can correlate 0.93 overall yet differs somewhere (a sulcus, a ventricle's edge); a twin
    matches everywhere. Measured (benchmarks/bench_leakage.py): twins >= 0.97, distinct subjects of the
    synthetic cohort <= 0.85, where the overall correlation left 0.985 against 0.93.
    ``correlation``: the same correlation over all compared pixels at once (smoother: it tells which of
    two poorly aligned flips is nearer). ``ssim``: mean SSIM over the compared pixels (reported, not
    deciding). ``overlap``: share of the brains' union compared; under :data:`MIN_OVERLAP`, or with fewer
    than :data:`MIN_TILES` tiles, the pair scores 0 (too little left to tell). ``ref_band``:
    ``band_pass(ref)`` when the caller has it already; ``with_ssim=False`` skips the SSIM (NaN).
    """
    import cv2

    h, w = ref.shape
    m = np.asarray(matrix, np.float32)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    moved = cv2.warpAffine(query, m, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    inside = cv2.warpAffine(np.ones(query.shape, np.uint8), m, (w, h), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    moved_mask = cv2.warpAffine(query_mask, m, (w, h), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    r = int(np.ceil(3 * band[1]))
    inside = cv2.erode(inside, np.ones((2 * r + 1, 2 * r + 1), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    union = (ref_mask > 0) | (moved_mask > 0)
    region = union & (inside > 0)
    overlap = float(region.sum()) / max(int(union.sum()), 1)
    if overlap < MIN_OVERLAP:
        return MatchScore(0.0, 0.0, overlap, 0.0)
    match, correlation = tile_correlation(ref_band if ref_band is not None else band_pass(ref, band),
                                          band_pass(moved, band), region)
    ssim = float(_ssim_map(ref, moved)[region].mean()) if with_ssim else float("nan")
    return MatchScore(match, ssim, overlap, correlation)


class MatchScore(NamedTuple):
    """What :func:`match_score` measures of one registered pair."""

    match: float        # 10th percentile of the tiles' band-pass correlations: the deciding score
    ssim: float         # mean SSIM (NaN when not asked for)
    overlap: float      # share of the two brains compared
    correlation: float  # band-pass correlation over all compared pixels


def tile_correlation(a: np.ndarray, b: np.ndarray, region: np.ndarray, tile: int | None = None,
                     quantile: float = 0.10) -> tuple[float, float]:
    """``(quantile of per-tile correlations, overall correlation)`` of ``a`` and ``b`` over ``region``
    (tiles of ``tile`` px, only those at least half inside ``region``; the first is 0 when fewer than
    :data:`MIN_TILES` tiles qualify).

    The per-tile moments are block means, which ``cv2.resize(INTER_AREA)`` computes exactly when the
    image is cropped to whole tiles.
    """
    import cv2

    tile = tile or MATCH_TILE
    h, w = (a.shape[0] // tile) * tile, (a.shape[1] // tile) * tile
    weight = region[:h, :w].astype(np.float32)
    a, b = a[:h, :w] * weight, b[:h, :w] * weight      # zero outside the region: moments over the region only
    stack = np.concatenate([weight, a, b, a * b, a * a, b * b], axis=0)
    means = cv2.resize(stack, (w // tile, 6 * h // tile), interpolation=cv2.INTER_AREA).astype(np.float64)
    n, sa, sb, sab, saa, sbb = means.reshape(6, h // tile, w // tile)

    def corr(n, sa, sb, sab, saa, sbb):
        n = np.maximum(n, 1e-12)
        cov = sab - sa * sb / n
        var = np.maximum(saa - sa * sa / n, 0.0) * np.maximum(sbb - sb * sb / n, 0.0)
        return np.where(var > 1e-24, cov / np.sqrt(np.maximum(var, 1e-48)), 0.0)

    overall = float(corr(*(np.sum(x) for x in (n, sa, sb, sab, saa, sbb))))   # tiles cover all but a margin
    ok = n >= 0.5
    if ok.sum() < MIN_TILES:
        return 0.0, overall
    values = np.sort(corr(n[ok], sa[ok], sb[ok], sab[ok], saa[ok], sbb[ok]))
    position = quantile * (values.size - 1)             # np.quantile's linear interpolation, without its overhead
    low = int(position)
    high = min(low + 1, values.size - 1)
    return float(values[low] + (values[high] - values[low]) * (position - low)), overall


def _ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM map of two [0, 1] images (Gaussian window, sigma 1.5, as :func:`ssim_batch`)."""
    import cv2

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ksize = (2 * _SSIM_RADIUS + 1, 2 * _SSIM_RADIUS + 1)

    def g(x):
        return cv2.GaussianBlur(x, ksize, _SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)

    mu_a, mu_b = g(a), g(b)
    var_a, var_b, cov = g(a * a) - mu_a * mu_a, g(b * b) - mu_b * mu_b, g(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2))
