"""Data-leakage audit: near-duplicate slices across splits, subject overlap, pseudo-subjects, Kaggle twins.

Why: a slice-level split puts neighbouring slices (and augmented copies) of one brain on both sides of
the split and inflates accuracy by ~30 points (Yagis et al. 2021, Sci. Rep. 11:22544); the Kaggle
augmented set was generated from *all* originals, so a random split of it puts augmented twins of every
test image in training. The user must see that before trusting a number.

How (:mod:`audit.hashing` holds the numeric core):

1. Every slice is put into a canonical pose by its brain foreground (centroid, principal axis, sqrt of
   the area), which undoes rotations at any angle, shifts and zooms; a 24x24 canonical thumbnail is its
   search key, made invariant to flips. A 64-bit pHash of the canonical image is kept as well.
2. Each val/test slice is searched against every train slice of its class: its ``top_k`` most similar
   keys (an exact matrix-product search), within ``max_distance`` pHash bits (at the best flip).
3. Each candidate pair is registered (the poses give the start, ``cv2.findTransformECC`` refines it) and
   compared at 128 px: the band-passed images are correlated tile by tile, and the 10th percentile of
   the tiles is the ``match`` score (a twin matches everywhere; another brain differs somewhere). Per
   query the candidates are tried most similar first, and the first confirmed twin ends the search.

Thresholds (measured on synthetic cohorts — deformed copies of one template, far more alike than real
brains; tests/test_leakage.py, benchmarks/bench_leakage.py, docs/measurements.md):

- ``match_min`` 0.92: 1,400 planted twins (any angle in ±15°, shifts up to 10%, zoom ±10%, flips,
  brightness/contrast with clipping, JPEG q50-90, all at once) scored >= 0.977; the 8 most similar
  slices of other subjects, registered, <= 0.86 (6,400 pairs). Slices of one subject 1 mm apart reach
  0.92 (the same brain: reported at times), 2 mm apart <= 0.77.
- ``max_distance`` 16 bits (canonical pHash, best flip): twins stay within 10; a cheap veto.
- ``top_k`` 8 and ``min_similarity`` 0.8: among 6,408 similar slices (24 per subject, 1 mm apart) a
  twin's original ranked first for 99% of planted twins and within the top 8 for 99.7-100%.
- ``ssim_min`` 0.5: a sanity floor on the SSIM of the registered pair (twins >= 0.65, clipped contrast
  included); SSIM no longer decides, since it cannot tell a twin from a registered similar brain.

Known blind spots: a brain cropped by more than half, images without a dark background (the pose is
then the frame's: rotations beyond a few degrees are missed), and slices from one subject that are not
near-duplicates (far-apart slices) are invisible without subject IDs.
"""
from __future__ import annotations

import os
import threading
from collections import Counter, OrderedDict, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from audit.hashing import (CANON_SIZE, CONFIRM_SIZE, FLIP_NAMES, MATCH_BAND, POSE_SIZE, Candidates, Variant,
                           band_pass, best_flip, brain_mask, canonical_thumbnail, dhash, flip_invariant, flipped,
                           foreground_pose, hamming, intensity_levels, match_score, pair_matrix, phash,
                           register, rescale_matrix, similarity_search, work_image)
from model.classes import CLASSES
from model.errors import AlzAuditError, ParameterError
from model.manifest import KAGGLE_SOURCES, SPLIT_NAMES, Manifest, Sample
from model.splits import subjects_by_split

DEFAULT_MAX_DISTANCE = 16
DEFAULT_SSIM_MIN = 0.5
DEFAULT_MATCH_MIN = 0.92
DEFAULT_TOP_K = 8
DEFAULT_MIN_SIMILARITY = 0.8
DEFAULT_DHASH_MAX = 64            # dHash is reported, not filtered on (it is unstable under JPEG: up to 16 bits)
CROSS_LABEL_TOP_K = 1            # a copy filed under another label is that label's nearest image
MAX_PAIRS = 200
MAX_IDS = 50
SPLIT_PAIRS = (("val", "train"), ("test", "train"), ("test", "val"))
CACHE_NAME = ".alzaudit-hashes.npz"
_CACHE_VERSION = "pose+canon24+phash64+digest/v3"
FLIP_VARIANTS = tuple(Variant(f) for f in FLIP_NAMES)
_PREPARED_CACHE = 2048            # prepared images kept per search (~80 KB each)


# ------------------------------------------------------------------------------------ hashes, cached
@dataclass
class ImageData:
    """Per-sample pose, canonical thumbnail and hashes, and the 128-px work images the matching needs.

    ``phash``/``dhash`` are ``(N, 4)``: the canonical image under the four flips (``variants``).
    ``poses`` ``(N, 5)`` are in :data:`POSE_SIZE` pixels; ``levels`` ``(N, 2)`` the 1st/99th percentiles;
    ``digests`` ``(N,)`` a 64-bit digest of the decoded pixels (equal digests: the same image).
    """

    samples: list[Sample]
    phash: np.ndarray
    dhash: np.ndarray
    variants: tuple[Variant, ...]
    works: dict[int, np.ndarray]
    poses: np.ndarray | None = None
    thumbs: np.ndarray | None = None
    levels: np.ndarray | None = None
    digests: np.ndarray | None = None
    scores: dict = field(default_factory=dict)  # (query, ref) -> (match, ssim, flip, matrix, registered)
    _keys: np.ndarray | None = None

    @property
    def keys(self) -> np.ndarray:
        """Flip-invariant search keys ``(N, D)`` (computed once)."""
        if self._keys is None:
            self._keys = flip_invariant(self.thumbs)
        return self._keys

    def load_works(self, indices: Sequence[int]) -> None:
        """Decode the images the matching will compare (once; the hash pass keeps those it decoded)."""
        missing = sorted({int(i) for i in indices} - self.works.keys())
        if missing:
            with ThreadPoolExecutor(max_workers=_workers()) as pool:
                for i, work in zip(missing, pool.map(lambda k: _work(self.samples[k].path), missing)):
                    self.works[i] = work


def describe_work(work: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(pose, levels, thumbnail, phash(4), dhash(4))`` of one :data:`CONFIRM_SIZE` work image.

    The pose is taken at :data:`POSE_SIZE` (what the thresholds were measured at); the hashes are of the
    canonical image (32x32 for pHash, 9x8 for dHash) under the flips ``"", "h", "v", "hv"``.
    """
    import cv2

    levels = intensity_levels(work)
    small = work_image(work, POSE_SIZE)
    pose = foreground_pose(small, levels)
    thumb = canonical_thumbnail(small, pose, CANON_SIZE, background=levels[0])
    big = canonical_thumbnail(small, pose, 32, blur=0.0, background=levels[0])
    flips = np.stack([flipped(big, f) for f in FLIP_NAMES])
    p = phash(flips)
    d = dhash(np.stack([cv2.resize(np.ascontiguousarray(f), (9, 8), interpolation=cv2.INTER_AREA) for f in flips]))
    return pose, np.array(levels, np.float32), thumb.astype(np.float32), p, d


def content_digest(work: np.ndarray) -> np.uint64:
    """64-bit BLAKE2b digest of a work image's shape and pixels: byte-identical copies (in any file format
    that decodes to the same pixels) are found by it even when they carry nothing to match (a blank
    slice) or too little (a thin strip)."""
    import hashlib

    work = np.ascontiguousarray(work)
    digest = hashlib.blake2b(np.array(work.shape, np.int64).tobytes() + work.tobytes(), digest_size=8)
    return np.frombuffer(digest.digest(), np.uint64)[0]


def image_data_from_arrays(images: Sequence[np.ndarray], labels: Sequence[str] | None = None, *,
                           workers: int | None = None) -> ImageData:
    """:class:`ImageData` of images already in memory (grayscale arrays): for benchmarks and tests that
    plant thousands of twins without writing files. Samples get placeholder paths ``memory/<i>``."""
    labels = list(labels) if labels is not None else [CLASSES[0]] * len(images)
    samples = [Sample(path=Path(f"memory/{i}"), label=lab) for i, lab in enumerate(labels)]
    works = {}

    def one(i):
        work = np.rint(work_image(images[i], CONFIRM_SIZE)).astype(np.uint8)
        return i, work, (*describe_work(work), content_digest(work))

    n = len(images)
    fields = _empty_fields(n)
    with ThreadPoolExecutor(max_workers=workers or _workers()) as pool:
        for i, work, described in pool.map(one, range(n)):
            works[i] = work
            for name, value in zip(_CACHE_FIELDS, described):
                fields[name][i] = value
    return _image_data(samples, works, fields)


def _empty_fields(n: int) -> dict:
    return {"pose": np.zeros((n, 5), np.float32), "levels": np.zeros((n, 2), np.float32),
            "thumb": np.zeros((n, CANON_SIZE, CANON_SIZE), np.float32),
            "phash": np.zeros((n, 4), np.uint64), "dhash": np.zeros((n, 4), np.uint64),
            "digest": np.zeros(n, np.uint64)}


def _image_data(samples: list[Sample], works: dict, fields: dict) -> ImageData:
    return ImageData(samples, fields["phash"], fields["dhash"], FLIP_VARIANTS, works, fields["pose"],
                     fields["thumb"], fields["levels"], fields["digest"])


def cache_path_for(manifest: Manifest) -> Path:
    """Where the hash cache lives: beside the manifest (the dataset folder when there is no CSV)."""
    return Path(manifest.root) / CACHE_NAME


def image_hashes(samples: Sequence[Sample], *, cache: str | os.PathLike | None = None, progress: bool = False,
                 warnings: list[str] | None = None) -> ImageData:
    """Pose, canonical thumbnail and hashes of every sample, reusing the cache for unchanged files.

    The cache (npz) is keyed by path, size and modification time, so an edited or replaced file is hashed
    again; it is written atomically, and a read-only dataset folder only costs a warning.
    """
    samples = list(samples)
    key = f"{_CACHE_VERSION}|{CONFIRM_SIZE}|{POSE_SIZE}|{CANON_SIZE}"
    stats = [_stat(s.path) for s in samples]
    cached = _read_cache(Path(cache), key) if cache else {}
    n = len(samples)
    fields = _empty_fields(n)
    todo = []
    for i, (sample, stat) in enumerate(zip(samples, stats)):
        hit = cached.get((str(sample.path), *stat))
        if hit is None:
            todo.append(i)
        else:
            for name, value in zip(_CACHE_FIELDS, hit):
                fields[name][i] = value
    works: dict[int, np.ndarray] = {}

    def one(i: int):
        work = _work(samples[i].path)
        return i, work, (*describe_work(work), content_digest(work))

    if todo:
        with ThreadPoolExecutor(max_workers=_workers()) as pool:
            results = pool.map(one, todo)
            if progress and len(todo) > 200:
                from rich.progress import track

                results = track(results, total=len(todo), description="hashing slices", transient=True)
            for i, work, described in results:
                works[i] = work
                for name, value in zip(_CACHE_FIELDS, described):
                    fields[name][i] = value
        if cache:
            try:
                _write_cache(Path(cache), key, samples, stats, fields, cached)
            except OSError as exc:
                if warnings is not None:
                    warnings.append(f"{cache}: hash cache not written ({exc.strerror or exc})")
    return _image_data(samples, works, fields)


_CACHE_FIELDS = ("pose", "levels", "thumb", "phash", "dhash", "digest")


def _work(path: Path) -> np.ndarray:
    from model.fileio import read_grayscale

    return np.rint(work_image(read_grayscale(path), CONFIRM_SIZE)).astype(np.uint8)


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = Path(path).stat()
    except OSError:
        raise AlzAuditError(f"{path}: image file not found") from None
    return int(st.st_size), int(st.st_mtime_ns)


def _read_cache(path: Path, key: str) -> dict:
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != key:
                return {}
            columns = [data[name] for name in _CACHE_FIELDS]
            return {(p, int(s), int(m)): tuple(c[k] for c in columns) for k, (p, s, m) in
                    enumerate(zip(data["paths"].tolist(), data["sizes"], data["mtimes"]))}
    except Exception:  # a damaged cache is rebuilt, never fatal
        return {}


def _write_cache(path: Path, key: str, samples, stats, fields: dict, previous: dict) -> None:
    from model.fileio import atomic_path

    rows = {(str(s.path), *st): tuple(fields[name][i] for name in _CACHE_FIELDS)
            for i, (s, st) in enumerate(zip(samples, stats))}
    current = {k[0] for k in rows}
    rows.update({k: v for k, v in previous.items() if k[0] not in current})  # other manifests' entries
    keys = list(rows)
    columns = {name: np.array([rows[k][c] for k in keys]) for c, name in enumerate(_CACHE_FIELDS)}
    columns["thumb"] = columns["thumb"].astype(np.float16).reshape(len(keys), CANON_SIZE, CANON_SIZE)
    columns["phash"] = columns["phash"].astype(np.uint64).reshape(len(keys), -1)
    columns["dhash"] = columns["dhash"].astype(np.uint64).reshape(len(keys), -1)
    columns["digest"] = columns["digest"].astype(np.uint64).reshape(len(keys))
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, key=np.array(key), paths=np.array([k[0] for k in keys]),
                 sizes=np.array([k[1] for k in keys], np.int64), mtimes=np.array([k[2] for k in keys], np.int64),
                 **columns)


def _workers() -> int:
    return min(4, os.cpu_count() or 1)


# ---------------------------------------------------------------------------------- twin confirmation
@dataclass(frozen=True)
class Twins:
    """Confirmed near-duplicates: ``query[k]`` looks like ``match[k]`` after ``transform[k]``."""

    query: np.ndarray      # int64 sample indices
    match: np.ndarray      # int64 sample indices
    distance: np.ndarray   # pHash bits between the canonical images, at the aligning flip
    dhash: np.ndarray      # dHash bits at that flip
    ssim: np.ndarray       # float32, SSIM of the registered pair (reported)
    transform: list[str]   # what turns the match into the query: flips, rotation, zoom, shift
    candidates: int        # pairs the search nominated
    score: np.ndarray | None = None   # float32, the deciding match score (band-pass correlation)
    checked: int = 0                  # pairs registered and scored (the rest were never needed)


def find_twins(data: ImageData, query_idx: Sequence[int], ref_idx: Sequence[int], *,
               max_distance: int = DEFAULT_MAX_DISTANCE, ssim_min: float = DEFAULT_SSIM_MIN,
               top_k: int = DEFAULT_TOP_K, dhash_max: int = DEFAULT_DHASH_MAX, same_class: bool = True,
               exclude_self: bool = False, match_min: float = DEFAULT_MATCH_MIN,
               min_similarity: float = DEFAULT_MIN_SIMILARITY, stop: str = "first",
               cross_label: bool = False, keep_rejected: bool = False) -> Twins:
    """Near-duplicates of the query samples among the reference samples.

    ``same_class``: a twin shares its original's label, so searching class by class finds the same
    twins at about a third of the cost. ``cross_label`` instead searches each class against the *other*
    classes (one image filed under two labels). ``exclude_self``: query and reference are the same list.
    Candidates are registered most similar first; ``stop`` says which ones can be spared:
    ``"first"`` — a query's first confirmed twin ends its search (enough for leakage rates);
    ``"connected"`` — a pair already linked through confirmed twins is skipped (the connected components
    come out the same as with every pair scored: pseudo-subjects); ``"never"`` — every candidate is
    scored. ``keep_rejected`` returns every scored pair, twin or not (``score`` below ``match_min``, and
    ``ssim`` NaN where it was not needed): with ``stop="never"``, the margins of a threshold.
    """
    if stop not in ("first", "connected", "never"):
        raise ValueError(f"stop must be 'first', 'connected' or 'never', not {stop!r}")
    query_idx = np.asarray(query_idx, np.int64)
    ref_idx = np.asarray(ref_idx, np.int64)
    labels = np.array([s.label for s in data.samples])
    if cross_label:
        groups = [(query_idx[labels[query_idx] == c], ref_idx[labels[ref_idx] != c]) for c in CLASSES]
    elif same_class:
        groups = [(query_idx[labels[query_idx] == c], ref_idx[labels[ref_idx] == c]) for c in CLASSES]
    else:
        groups = [(query_idx, ref_idx)]
    q_all, r_all, s_all = [], [], []
    for q, r in groups:
        if q.size == 0 or r.size == 0:
            continue
        found: Candidates = similarity_search(data.keys[q], data.keys[r], top_k + (1 if exclude_self else 0),
                                              min_similarity=min_similarity)
        q_all.append(q[found.query])
        r_all.append(r[found.ref])
        s_all.append(found.similarity)
        exact = _same_pixels(data, q, r, top_k + (1 if exclude_self else 0))
        q_all.append(exact[0])
        r_all.append(exact[1])
        s_all.append(np.full(exact[0].size, 2.0, np.float32))   # identical pixels rank first
    q = np.concatenate(q_all) if q_all else np.empty(0, np.int64)
    r = np.concatenate(r_all) if r_all else np.empty(0, np.int64)
    sim = np.concatenate(s_all) if s_all else np.empty(0, np.float32)
    keep = q != r if exclude_self else np.ones(q.size, bool)
    q, r, sim = q[keep], r[keep], sim[keep]
    order = np.lexsort((-sim, r, q))          # one row per pair (the exact one if both), then top_k per query
    q, r, sim = q[order], r[order], sim[order]
    first = np.r_[True, (q[1:] != q[:-1]) | (r[1:] != r[:-1])] if q.size else np.empty(0, bool)
    q, r, sim = q[first], r[first], sim[first]
    order = np.lexsort((-sim, q))
    q, r, sim = q[order], r[order], sim[order]
    keep = _rank_within(q) < top_k
    q, r, sim = q[keep], r[keep], sim[keep]
    # The canonical pHash at the best flip: a cheap veto before the (costlier) registration.
    dp = hamming(data.phash[q, 0][:, None], data.phash[r]).astype(np.int16)
    dd = hamming(data.dhash[q, 0][:, None], data.dhash[r]).astype(np.int16)
    keep = (dp.min(axis=1) <= max_distance) & (dd.min(axis=1) <= dhash_max)
    q, r, sim, dp, dd = q[keep], r[keep], sim[keep], dp[keep], dd[keep]
    nominated = int(q.size)
    flip1, flip2 = best_flip(data.thumbs[q], data.thumbs[r]) if q.size else (np.empty(0, int), np.empty(0, int))
    order = np.lexsort((-sim, q))            # per query, most similar first
    q, r, flip1, flip2, dp, dd = q[order], r[order], flip1[order], flip2[order], dp[order], dd[order]
    results = _confirm_in_rounds(data, q, r, flip1, flip2, match_min, ssim_min, stop)
    ok = np.array([res is not None and (keep_rejected or (res[0] >= match_min and res[1] >= ssim_min))
                   for res in results], bool)
    rows = np.flatnonzero(ok)
    flips = np.array([results[k][2] for k in rows], np.int64)
    names = [_transform_name(results[k][3], FLIP_NAMES[results[k][2]], _pose_shape(data.works[int(r[k])]))
             for k in rows]
    return Twins(q[rows], r[rows], dp[rows, flips].astype(np.uint8) if rows.size else np.empty(0, np.uint8),
                 dd[rows, flips].astype(np.uint8) if rows.size else np.empty(0, np.uint8),
                 np.array([results[k][1] for k in rows], np.float32), names, nominated,
                 np.array([results[k][0] for k in rows], np.float32),
                 sum(1 for res in results if res is not None))


def _same_pixels(data: ImageData, q: np.ndarray, r: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (query, reference) with identical pixels (equal digests), at most ``limit`` per query."""
    if data.digests is None or q.size == 0 or r.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    shared = np.intersect1d(data.digests[q], data.digests[r])
    if shared.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    refs = defaultdict(list)
    for j in r[np.isin(data.digests[r], shared)].tolist():
        refs[data.digests[j]].append(j)
    pairs = [(i, j) for i in q[np.isin(data.digests[q], shared)].tolist() for j in refs[data.digests[i]][:limit]]
    return np.array([p[0] for p in pairs], np.int64), np.array([p[1] for p in pairs], np.int64)


def _pose_shape(work: np.ndarray) -> tuple[int, int]:
    h, w = work.shape[:2]
    scale = POSE_SIZE / max(h, w)
    return max(8, round(h * scale)), max(8, round(w * scale))


def _rank_within(q: np.ndarray) -> np.ndarray:
    """Position of each element within its run of equal ``q`` values (``q`` grouped, order kept)."""
    if q.size == 0:
        return np.empty(0, np.int64)
    starts = np.flatnonzero(np.r_[True, q[1:] != q[:-1]])
    return np.arange(q.size) - np.repeat(starts, np.diff(np.r_[starts, q.size]))


def _confirm_in_rounds(data: ImageData, q: np.ndarray, r: np.ndarray, flip1: np.ndarray, flip2: np.ndarray,
                       match_min: float, ssim_min: float, stop: str) -> list:
    """Score candidate pairs (grouped by query, best first) in rounds: round k scores the k-th candidate
    of every query, less those ``stop`` spares, so a query with a twin usually costs one registration."""
    from scipy.cluster.hierarchy import DisjointSet

    results: list = [None] * q.size
    rank = _rank_within(q)
    data.load_works(np.unique(np.concatenate([q, r])))
    prepared = _PreparedCache(data)
    linked = DisjointSet(np.unique(np.concatenate([q, r])).tolist())
    twin_found: set[int] = set()
    workers = _workers()
    for k in range(int(rank.max()) + 1 if rank.size else 0):
        todo = np.flatnonzero(rank == k)
        if stop == "first":
            todo = todo[[int(q[i]) not in twin_found for i in todo]]
        elif stop == "connected":
            todo = todo[[not linked.connected(int(q[i]), int(r[i])) for i in todo]]
        if todo.size == 0:
            continue
        todo = todo[np.argsort(r[todo], kind="stable")]   # a reference's pairs together: prepared once
        chunks = np.array_split(todo, min(todo.size, max(workers, todo.size // 32)))

        def run(rows):
            return [(i, _score_pair(data, prepared, int(q[i]), int(r[i]), int(flip1[i]), int(flip2[i]), match_min))
                    for i in rows]

        with ThreadPoolExecutor(max_workers=workers) as pool:
            for part in pool.map(run, chunks):
                for i, res in part:
                    results[i] = res
                    if res[0] >= match_min and res[1] >= ssim_min:
                        twin_found.add(int(q[i]))
                        linked.merge(int(q[i]), int(r[i]))
    return results


class _PreparedCache:
    """Per-image arrays the matching needs, built once and kept for the most recent images (thread-safe)."""

    def __init__(self, data: ImageData, size: int = _PREPARED_CACHE):
        self.data, self.size = data, size
        self.items: OrderedDict = OrderedDict()
        self.lock = threading.Lock()

    def __call__(self, i: int):
        with self.lock:
            hit = self.items.get(i)
            if hit is not None:
                self.items.move_to_end(i)
                return hit
        made = _prepare(self.data.works[i], self.data.levels[i])
        with self.lock:
            self.items[i] = made
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return made


def _prepare(work: np.ndarray, levels: np.ndarray):
    """(fine, band, coarse, mask, scale): the 128-px image stretched to [0, 1] and its band-pass, its 64-px
    blurred version for ECC, the dilated brain mask at 128 px, and the 64->128 pixel scale per axis."""
    import cv2

    lo, hi = float(levels[0]), float(levels[1])
    fine = np.clip((work.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    coarse = cv2.GaussianBlur(work_image(fine, POSE_SIZE), (0, 0), 0.8)
    mask = cv2.dilate(brain_mask(work, (lo, hi)), np.ones((5, 5), np.uint8))
    scale = (fine.shape[1] / coarse.shape[1], fine.shape[0] / coarse.shape[0])
    return fine, band_pass(fine), coarse, mask, scale


def _score_pair(data: ImageData, prepared: _PreparedCache, qi: int, ri: int, flip1: int, flip2: int,
                match_min: float):
    """(match, ssim, flip, matrix) of one candidate pair, remembered in ``data.scores``.

    The two best flips are tried with the pose alignment alone; if one already clears ``match_min`` the
    pair is a twin; otherwise ECC refines the flip whose overall correlation is higher (the tile score
    of two poorly aligned flips says little about which is nearer) and the pair is scored again. The
    SSIM (reported, and checked against ``ssim_min``) is only computed for a pair that clears ``match_min``.
    """
    key = (qi, ri, match_min)
    hit = data.scores.get(key)
    if hit is not None:
        return hit
    if data.digests is not None and data.digests[qi] == data.digests[ri]:   # the same pixels
        data.scores[key] = (1.0, 1.0, 0, np.eye(2, 3))
        return data.scores[key]
    fq, _, cq, mq, sq = prepared(qi)
    fr, br, cr, mr, sr = prepared(ri)

    def score(matrix, with_ssim=False):
        return match_score(fq, fr, rescale_matrix(matrix, sr, sq), query_mask=mq, ref_mask=mr, ref_band=br,
                           with_ssim=with_ssim)

    tried = []
    for flip in dict.fromkeys((flip1, flip2)):
        init = pair_matrix(data.poses[qi], data.poses[ri], FLIP_NAMES[flip])
        tried.append((score(init), flip, init))
    best = max(tried, key=lambda t: t[0].match)
    if best[0].match < match_min:
        start = max(tried, key=lambda t: t[0].correlation)
        refined = register(cq, cr, start[2])
        if refined is not None:
            value = score(refined)
            if value.match > best[0].match:
                best = (value, start[1], refined)
    ssim = score(best[2], with_ssim=True).ssim if best[0].match >= match_min else float("nan")
    result = (best[0].match, ssim, best[1], best[2])
    data.scores[key] = result
    return result


def _transform_name(matrix: np.ndarray, flip: str, shape: tuple[int, int] = (POSE_SIZE, POSE_SIZE)) -> str:
    """What turns the match into the query, e.g. ``flip+rotate-8.2+zoom1.06+shift(+4%,-2%)``: the flip,
    then the rotation (degrees, counter-clockwise as OpenCV's), zoom and shift (share of the frame) of the
    registered map from the match's pixels (``shape`` at :data:`POSE_SIZE`) to the query's."""
    m = np.asarray(matrix, np.float64)
    lin = m[:, :2] @ np.diag([-1.0 if flip in ("h", "hv") else 1.0, -1.0 if flip in ("v", "hv") else 1.0])
    angle = float(np.degrees(np.arctan2(lin[0, 1], lin[0, 0])))
    zoom = float(np.sqrt(abs(np.linalg.det(lin))))
    h, w = shape
    centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    shift = (m[:, :2] @ centre + m[:, 2] - centre) / np.array([w, h])
    parts = {"": [], "h": ["flip"], "v": ["vflip"], "hv": ["flip", "vflip"]}[flip]
    if abs(angle) >= 0.5:
        parts.append(f"rotate{angle:+.1f}")
    if abs(zoom - 1) >= 0.02:
        parts.append(f"zoom{zoom:.2f}")
    if np.max(np.abs(shift)) >= 0.02:
        parts.append(f"shift({shift[0]:+.0%},{shift[1]:+.0%})")
    return "+".join(parts) or "identity"


# ---------------------------------------------------------------------------------- pseudo-subjects
def pseudo_subject_labels(data: ImageData, *, max_distance: int = DEFAULT_MAX_DISTANCE,
                          ssim_min: float = DEFAULT_SSIM_MIN, top_k: int = DEFAULT_TOP_K,
                          dhash_max: int = DEFAULT_DHASH_MAX, match_min: float = DEFAULT_MATCH_MIN) -> np.ndarray:
    """Component number per sample: connected components of the confirmed near-duplicate graph.

    Why components and not clusters: duplicates chain (an original, its flipped copy, that copy
    re-compressed), and whatever is linked must stay on one side of a split.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(data.samples)
    everyone = np.arange(n)
    twins = find_twins(data, everyone, everyone, max_distance=max_distance, ssim_min=ssim_min,
                       top_k=top_k, dhash_max=dhash_max, match_min=match_min, exclude_self=True, stop="connected")
    graph = coo_matrix((np.ones(twins.query.size, np.int8), (twins.query, twins.match)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels


def pseudo_subjects(manifest: Manifest, *, max_distance: int = DEFAULT_MAX_DISTANCE,
                    ssim_min: float = DEFAULT_SSIM_MIN, cache: bool | str | os.PathLike = True,
                    progress: bool = False, match_min: float = DEFAULT_MATCH_MIN) -> dict[str, str]:
    """``{str(sample.path): pseudo-subject id}`` for ``split_manifest(group="pseudo")``: near-duplicate
    slices (augmented copies of one original, re-saved files) share an id, so no split separates them."""
    data = image_hashes(manifest.samples, cache=_cache_arg(manifest, cache), progress=progress)
    labels = pseudo_subject_labels(data, max_distance=max_distance, ssim_min=ssim_min, match_min=match_min)
    return {str(s.path): f"pseudo-{int(g):05d}" for s, g in zip(manifest.samples, labels)}


def _cache_arg(manifest: Manifest, cache) -> Path | None:
    if cache is True:
        return cache_path_for(manifest)
    return Path(cache) if cache else None


# ----------------------------------------------------------------------------------------- the report
def leakage_report(manifest: Manifest, *, seed: int = 0, max_distance: int = DEFAULT_MAX_DISTANCE,
                   ssim_min: float = DEFAULT_SSIM_MIN, top_k: int = DEFAULT_TOP_K, dhash_max: int = DEFAULT_DHASH_MAX,
                   cache: bool | str | os.PathLike = True, grid_png: str | os.PathLike | None = None,
                   max_pairs: int = MAX_PAIRS, pseudo: bool | None = None, progress: bool = False,
                   match_min: float = DEFAULT_MATCH_MIN) -> dict:
    """The leakage block of ``audit.json``: rates per split pair and class, subject overlap, pairs, and
    images filed under two labels.

    An unsplit manifest is split here, subject-aware (by slice when IDs are unknown, which is what a
    user would get), with ``seed``; the block says so. ``pseudo`` (default: when subject IDs are unknown)
    also groups near-duplicates into pseudo-subjects and counts those that span splits.
    ``cross_label_pairs`` lists near-duplicates whose labels differ (in any splits): one slice cannot be
    two stages, so the labels, not only the split, are suspect.
    """
    from model.splits import DEFAULT_RATIOS, split_manifest

    if max_distance < 0 or max_distance > 64:
        raise ParameterError("max_distance", f"{max_distance} is outside 0..64 bits")
    if not 0.0 <= ssim_min <= 1.0:
        raise ParameterError("ssim_min", f"{ssim_min} is outside [0, 1]")
    if not 0.0 < match_min <= 1.0:
        raise ParameterError("match_min", f"{match_min} is outside (0, 1]")
    if top_k < 1:
        raise ParameterError("top_k", f"{top_k} must be at least 1")
    if not manifest.samples:
        raise AlzAuditError(f"{manifest.root}: the manifest lists no images")
    warnings: list[str] = []
    split_info: dict = {"source": "manifest"}
    if not manifest.has_splits:
        manifest, split_report = split_manifest(manifest, DEFAULT_RATIOS, seed=seed, group="subject")
        split_info = {"source": "generated", "group": split_report.group_kind, "seed": seed,
                      "ratios": list(DEFAULT_RATIOS)}
        warnings.append(f"the manifest has no splits: split here by {split_report.group_kind} "
                        f"(ratios {DEFAULT_RATIOS}, seed {seed}), as 'alzaudit data split' would")
    samples = manifest.samples
    data = image_hashes(samples, cache=_cache_arg(manifest, cache), progress=progress, warnings=warnings)
    options = dict(max_distance=max_distance, ssim_min=ssim_min, top_k=top_k, dhash_max=dhash_max,
                   match_min=match_min)
    splits = np.array([s.split for s in samples])
    labels = np.array([s.label for s in samples])
    n_images = {name: int((splits == name).sum()) for name in SPLIT_NAMES if (splits == name).any()}

    rate, rate_by_class, n_leaked, pairs, candidates = {}, {}, {}, [], 0
    for q_split, r_split in SPLIT_PAIRS:
        if q_split not in n_images or r_split not in n_images:
            continue
        key = f"{q_split}->{r_split}"
        q_idx = np.flatnonzero(splits == q_split)
        twins = find_twins(data, q_idx, np.flatnonzero(splits == r_split), **options)
        candidates += twins.candidates
        leaked = np.zeros(len(samples), bool)
        leaked[twins.query] = True
        n_leaked[key] = int(leaked[q_idx].sum())
        rate[key] = n_leaked[key] / q_idx.size
        rate_by_class[key] = {c: float(leaked[q_idx][labels[q_idx] == c].mean())
                              for c in CLASSES if (labels[q_idx] == c).any()}
        pairs += _pair_rows(samples, twins, key)

    report: dict = {
        "layout": manifest.layout,
        "split": split_info,
        "n_images": n_images,
        "rate": rate,
        "n_leaked": n_leaked,
        "rate_by_class": rate_by_class,
        "max_rate": max(rate.values(), default=0.0),
        "subjects_known": manifest.subjects_known,
        "subject_overlap": _subject_overlap(samples) if any(s.subject_id for s in samples) else {},
    }
    if pseudo if pseudo is not None else not manifest.subjects_known:
        groups = pseudo_subject_labels(data, **options)
        report["pseudo_subjects"] = int(groups.max() + 1)
        report["pseudo_subject_detail"] = _pseudo_detail(groups, splits)
    if not rate:
        warnings.append(f"only the split(s) {', '.join(n_images)} present: no split pair to compare")
    kaggle = _kaggle_twins(data, options)
    if kaggle is not None:
        report["kaggle_twins"] = kaggle
    cross = _cross_label_rows(data, options)
    report["n_cross_label_pairs"] = len(cross)
    report["cross_label_pairs"] = cross[:max_pairs]
    pairs.sort(key=lambda p: (-p["match_score"], p["distance"], p["query"]))
    report["n_pairs"] = len(pairs)
    report["pairs"] = pairs[:max_pairs]
    report["candidates_checked"] = candidates
    report["thresholds"] = {
        "max_distance": max_distance, "dhash_max": dhash_max, "ssim_min": ssim_min, "top_k": top_k,
        "match_min": match_min, "min_similarity": DEFAULT_MIN_SIMILARITY,
        "hash": "pHash 64-bit (8x8 DCT of 32x32), dHash 64-bit (9x8), of the pose-normalised slice",
        "search": f"pose-normalised {CANON_SIZE}x{CANON_SIZE} thumbnail, flip-invariant, exact top-k correlation",
        "match": f"ECC-registered pair at {CONFIRM_SIZE} px, correlation of the difference of Gaussians "
                 f"(sigma {MATCH_BAND[0]}, {MATCH_BAND[1]}) over both brains",
        "variants": [v.name for v in data.variants], "ssim_size": CONFIRM_SIZE,
        "same_class": True,
    }
    report["grid_png"] = str(write_pairs_grid(report["pairs"], grid_png)) if grid_png and pairs else None
    report["warnings"] = warnings + _loud_warnings(report)
    return report


def _pair_rows(samples: list[Sample], twins: Twins, key: str) -> list[dict]:
    return [{"query": str(samples[q].path), "match": str(samples[m].path), "splits": key, "distance": int(d),
             "transform": t, "ssim": round(float(s), 4), "match_score": round(float(sc), 4), "dhash": int(dd),
             "label": samples[q].label}
            for q, m, d, dd, s, sc, t in zip(twins.query.tolist(), twins.match.tolist(), twins.distance.tolist(),
                                             twins.dhash.tolist(), twins.ssim.tolist(), twins.score.tolist(),
                                             twins.transform)]


def _cross_label_rows(data: ImageData, options: dict) -> list[dict]:
    """Near-duplicates filed under two different labels (any splits), one row per unordered pair."""
    everyone = np.arange(len(data.samples))
    twins = find_twins(data, everyone, everyone, cross_label=True,
                       **{**options, "top_k": min(CROSS_LABEL_TOP_K, options["top_k"])})
    rows, seen = [], set()
    for row, q, m in zip(_pair_rows(data.samples, twins, "cross-label"), twins.query.tolist(), twins.match.tolist()):
        pair = (min(q, m), max(q, m))
        if pair in seen:
            continue
        seen.add(pair)
        row["labels"] = [data.samples[q].label, data.samples[m].label]
        row["splits"] = "->".join(str(data.samples[i].split) for i in (q, m))
        rows.append(row)
    rows.sort(key=lambda p: (-p["match_score"], p["query"]))
    return rows


def _subject_overlap(samples: list[Sample]) -> dict:
    by_split = subjects_by_split(samples)
    out = {}
    for q_split, r_split in SPLIT_PAIRS:
        if q_split in by_split and r_split in by_split:
            shared = sorted(by_split[q_split] & by_split[r_split])
            out[f"{q_split}->{r_split}"] = {"count": len(shared), "ids": shared[:MAX_IDS]}
    return out


def _pseudo_detail(groups: np.ndarray, splits: np.ndarray) -> dict:
    sizes = np.bincount(groups)
    spans: dict[int, set] = defaultdict(set)
    for g, s in zip(groups.tolist(), splits.tolist()):
        spans[g].add(s)
    overlap = {f"{a}->{b}": sum(1 for v in spans.values() if a in v and b in v) for a, b in SPLIT_PAIRS}
    return {"count": int(sizes.size), "largest": int(sizes.max()), "multi_slice_groups": int((sizes > 1).sum()),
            "spanning_splits": sum(1 for v in spans.values() if len(v) > 1), "overlap": overlap}


def _kaggle_twins(data: ImageData, options: dict) -> dict | None:
    """Augmented images that are twins of an original, per class (Kaggle augmented layout only)."""
    source = np.array([str(s.extra.get("source", "")) for s in data.samples])
    original, augmented = (np.flatnonzero(source == name) for name in KAGGLE_SOURCES)
    if original.size == 0 or augmented.size == 0:
        return None
    twins = find_twins(data, augmented, original, **{**options, "top_k": min(3, options["top_k"])})
    parent: dict[int, tuple[float, int]] = {}
    for q, m, s in zip(twins.query.tolist(), twins.match.tolist(), twins.ssim.tolist()):
        if q not in parent or s > parent[q][0]:
            parent[q] = (s, m)
    per_original = Counter(m for _, m in parent.values())
    labels = np.array([s.label for s in data.samples])
    out = {}
    for c in [*CLASSES, "all"]:
        o = original if c == "all" else original[labels[original] == c]
        a = augmented if c == "all" else augmented[labels[augmented] == c]
        if o.size == 0 and a.size == 0:
            continue
        counts = np.array([per_original.get(int(i), 0) for i in o])
        out[c] = {"originals": int(o.size), "augmented": int(a.size),
                  "augmented_with_twin": int(sum(1 for i in a.tolist() if i in parent)),
                  "twins_per_original": float(counts.mean()) if counts.size else 0.0,
                  "max_twins": int(counts.max()) if counts.size else 0,
                  "originals_with_twins": float((counts > 0).mean()) if counts.size else 0.0}
    return out


def _loud_warnings(report: dict) -> list[str]:
    out = []
    for key, value in report["rate"].items():
        if value > 0:
            out.append(f"LEAK: {value:.1%} of {key.split('->')[0]} images have a near-duplicate in "
                       f"{key.split('->')[1]} ({report['n_leaked'][key]} images)")
    for key, value in report["subject_overlap"].items():
        if value["count"]:
            out.append(f"LEAK: {value['count']} subject(s) appear in both splits of {key}")
    if not report["subjects_known"]:
        out.append("no subject IDs: slices of one brain that are not near-duplicates cannot be detected")
    if report.get("n_cross_label_pairs"):
        first = report["cross_label_pairs"][0]
        out.append(f"LABELS: {report['n_cross_label_pairs']} near-duplicate pair(s) are filed under two different "
                   f"labels (e.g. {first['query']} as {first['labels'][0]} and {first['match']} as "
                   f"{first['labels'][1]}): one slice cannot be two stages")
    twins = report.get("kaggle_twins", {}).get("all")
    if twins and twins["augmented_with_twin"]:
        out.append(f"{twins['augmented_with_twin']} augmented images are twins of originals "
                   f"({twins['twins_per_original']:.1f} per original): a random split of the augmented set leaks; "
                   "split with 'alzaudit data split --group pseudo'")
    return out


# ------------------------------------------------------------------------------------------ the grid
def write_pairs_grid(pairs: Sequence[dict], path: str | os.PathLike, *, n: int = 12, tile: int = 128,
                     per_row: int = 3) -> Path:
    """The ``n`` worst pairs as a PNG: query | match, with split pair, distance, SSIM and transform."""
    import cv2

    from model.fileio import atomic_write_bytes, read_grayscale

    chosen = list(pairs)[:n]
    if not chosen:
        raise AlzAuditError(f"{path}: no pairs to draw")
    caption, gap = 18, 8
    cell_w, cell_h = 2 * tile + gap, tile + caption
    rows = (len(chosen) + per_row - 1) // per_row
    canvas = np.full((rows * (cell_h + gap) + gap, per_row * (cell_w + gap) + gap), 24, np.uint8)
    for k, pair in enumerate(chosen):
        y, x = gap + (k // per_row) * (cell_h + gap), gap + (k % per_row) * (cell_w + gap)
        for side, key in enumerate(("query", "match")):
            canvas[y:y + tile, x + side * (tile + 2):x + side * (tile + 2) + tile] = _fit(read_grayscale(pair[key]), tile)
        score = pair.get("match_score", pair.get("ssim", 0.0))
        text = f"{pair['splits']} m={score:.2f} {pair['transform']}"
        cv2.putText(canvas, text[:48], (x, y + tile + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.33, 230, 1, cv2.LINE_AA)
    ok, encoded = cv2.imencode(".png", canvas)
    if not ok:  # pragma: no cover - OpenCV failure
        raise AlzAuditError(f"{path}: could not encode the pairs grid")
    return atomic_write_bytes(path, encoded.tobytes())


def _fit(image: np.ndarray, tile: int) -> np.ndarray:
    """``image`` scaled into a ``tile``-square box, aspect kept, centred on black."""
    import cv2

    h, w = image.shape
    scale = tile / max(h, w)
    small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    out = np.zeros((tile, tile), np.uint8)
    y, x = (tile - small.shape[0]) // 2, (tile - small.shape[1]) // 2
    out[y:y + small.shape[0], x:x + small.shape[1]] = small
    return out
