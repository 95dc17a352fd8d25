"""Perceptual hashes, Hamming search and batched SSIM: the numeric core of the leakage audit.

Why perceptual hashes: two files that are the same slice after JPEG re-compression, a flip or a small
rotation differ in every byte but keep their low-frequency structure. A 64-bit DCT pHash (the top-left
8x8 DCT coefficients of a 32x32 thumbnail, thresholded at their median) and a 64-bit dHash (signs of
horizontal gradients on a 9x8 thumbnail) summarise that structure; near-duplicates are within a few bits.
Hashes are not rotation-invariant, so every image is also hashed under the transforms augmentation uses
(flips and rotations, :data:`DEFAULT_VARIANTS`); a twin then matches the variant that undoes its
augmentation. Candidates are confirmed with SSIM (Wang et al. 2004) on the aligned thumbnails.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Sequence

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


# Reference augmentation (model/pipeline.py, and the Kaggle augmented set): rotations up to ±15° and
# horizontal/vertical flips. Rotations are hashed every 5°: a residual of at most 2.5° costs pHash only a
# few bits (see tests/test_leakage.py), far below the candidate threshold.
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
