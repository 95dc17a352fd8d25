"""Data-leakage audit: near-duplicate slices across splits, subject overlap, pseudo-subjects, Kaggle twins.

Why: a slice-level split puts neighbouring slices (and augmented copies) of one brain on both sides of
the split and inflates accuracy by ~30 points (Yagis et al. 2021, Sci. Rep. 11:22544); the Kaggle
augmented set was generated from *all* originals, so a random split of it puts augmented twins of every
test image in training. The user must see that before trusting a number.

How: every slice is hashed (64-bit DCT pHash and dHash, :mod:`audit.hashing`) under the flips and
rotations augmentation uses; each val/test slice is searched against every train slice of its class by
Hamming distance; for the nearest candidates pHash + dHash pick the variant that aligns the pair (pHash
alone often ties a flip with a rotation of a nearly symmetric brain), and SSIM on the aligned thumbnails
confirms. Thresholds (measured on the synthetic cohort, tests/test_leakage.py):

- ``max_distance`` 10 bits (pHash, best variant): planted twins (flip, rotations up to ±15°, JPEG
  quality 50, brightness) stay within 8 bits; distinct subjects' slices at the same level come as close
  as 2 bits, so the hash only nominates candidates and never decides alone.
- ``ssim_min`` 0.90 (64x64, contrast-stretched, rotation refined by ±2.5°): twins score >= 0.95; on a
  40-subject x 8-slice synthetic cohort no pair of distinct subjects (49,920 pairs) scored above 0.79,
  and neighbouring slices of one subject (about 4 mm apart) at most 0.87, so they are not twins either.
- ``dhash_max`` 10 bits (dHash at the aligning variant): twins stay within 6; it drops about a quarter
  of the distinct-subject candidates before the (costlier) SSIM.
- ``top_k`` 5: each query's five nearest candidates are confirmed (bounds the SSIM work on 34,000 images).

Known blind spots: shifts, zooms and crops larger than a few pixels change the hash (the reference
augmentation's 10% shifts are not covered), and slices from one subject that are not near-duplicates
(far-apart slices) are invisible without subject IDs.
"""
from __future__ import annotations

import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from audit.hashing import (DEFAULT_VARIANTS, SSIM_SIZE, WORK_SIZE, Matches, Variant, aligned_thumbnail,
                           hamming, hamming_search, hash_work, ssim_batch, stretch, work_image)
from model.classes import CLASSES
from model.errors import AlzAuditError
from model.manifest import KAGGLE_SOURCES, SPLIT_NAMES, Manifest, Sample

DEFAULT_MAX_DISTANCE = 10
DEFAULT_SSIM_MIN = 0.90
DEFAULT_TOP_K = 5
DEFAULT_DHASH_MAX = 10
ANGLE_REFINE = (0.0, -2.5, 2.5)   # variants are 5° apart: refining by ±2.5° leaves at most 1.25° residual
REFINE_WINDOW = 0.25              # SSIM below the threshold by less than this earns the refinement
MAX_PAIRS = 200
MAX_IDS = 50
SPLIT_PAIRS = (("val", "train"), ("test", "train"), ("test", "val"))
CACHE_NAME = ".alzaudit-hashes.npz"
_CACHE_VERSION = "phash64+dhash64/v1"


# ------------------------------------------------------------------------------------ hashes, cached
@dataclass
class ImageData:
    """Per-sample hashes ``(N, V)`` and, loaded on demand, the small work images SSIM needs."""

    samples: list[Sample]
    phash: np.ndarray
    dhash: np.ndarray
    variants: tuple[Variant, ...]
    works: dict[int, np.ndarray]
    scores: dict = field(default_factory=dict)  # (query, ref, variant, ssim_min) -> (SSIM, angle refinement)

    def load_works(self, indices: Sequence[int]) -> None:
        """Decode the images SSIM will compare (once; the hash pass keeps those it decoded)."""
        missing = sorted({int(i) for i in indices} - self.works.keys())
        if missing:
            with ThreadPoolExecutor(max_workers=_workers()) as pool:
                for i, work in zip(missing, pool.map(lambda k: _work(self.samples[k].path), missing)):
                    self.works[i] = work


def cache_path_for(manifest: Manifest) -> Path:
    """Where the hash cache lives: beside the manifest (the dataset folder when there is no CSV)."""
    return Path(manifest.root) / CACHE_NAME


def image_hashes(samples: Sequence[Sample], *, variants: Sequence[Variant] = DEFAULT_VARIANTS,
                 cache: str | os.PathLike | None = None, progress: bool = False,
                 warnings: list[str] | None = None) -> ImageData:
    """pHash/dHash of every sample under every variant, reusing the cache for unchanged files.

    The cache (npz) is keyed by path, size and modification time, so an edited or replaced file is hashed
    again; it is written atomically, and a read-only dataset folder only costs a warning.
    """
    samples = list(samples)
    variants = tuple(variants)
    key = f"{_CACHE_VERSION}|{WORK_SIZE}|{','.join(v.name for v in variants)}"
    stats = [_stat(s.path) for s in samples]
    cached = _read_cache(Path(cache), key) if cache else {}
    n_var = len(variants)
    phash = np.zeros((len(samples), n_var), np.uint64)
    dhash = np.zeros((len(samples), n_var), np.uint64)
    todo = []
    for i, (sample, stat) in enumerate(zip(samples, stats)):
        hit = cached.get((str(sample.path), *stat))
        if hit is None:
            todo.append(i)
        else:
            phash[i], dhash[i] = hit
    works: dict[int, np.ndarray] = {}

    def one(i: int):
        work = _work(samples[i].path)
        return i, work, hash_work(work, variants)

    if todo:
        with ThreadPoolExecutor(max_workers=_workers()) as pool:
            results = pool.map(one, todo)
            if progress and len(todo) > 200:
                from rich.progress import track

                results = track(results, total=len(todo), description="hashing slices", transient=True)
            for i, work, (p, d) in results:
                works[i], phash[i], dhash[i] = work, p, d
        if cache:
            try:
                _write_cache(Path(cache), key, samples, stats, phash, dhash, cached)
            except OSError as exc:
                if warnings is not None:
                    warnings.append(f"{cache}: hash cache not written ({exc.strerror or exc})")
    return ImageData(samples, phash, dhash, variants, works)


def _work(path: Path) -> np.ndarray:
    from model.fileio import read_grayscale

    return np.rint(work_image(read_grayscale(path))).astype(np.uint8)


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
            return {(p, int(s), int(m)): (ph, dh) for p, s, m, ph, dh in
                    zip(data["paths"].tolist(), data["sizes"], data["mtimes"], data["phash"], data["dhash"])}
    except Exception:  # a damaged cache is rebuilt, never fatal
        return {}


def _write_cache(path: Path, key: str, samples, stats, phash, dhash, previous: dict) -> None:
    from model.fileio import atomic_path

    rows = {(str(s.path), *st): (p, d) for s, st, p, d in zip(samples, stats, phash, dhash)}
    current = {k[0] for k in rows}
    rows.update({k: v for k, v in previous.items() if k[0] not in current})  # other manifests' entries
    keys = list(rows)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, key=np.array(key), paths=np.array([k[0] for k in keys]),
                 sizes=np.array([k[1] for k in keys], np.int64), mtimes=np.array([k[2] for k in keys], np.int64),
                 phash=np.array([rows[k][0] for k in keys], np.uint64).reshape(len(keys), -1),
                 dhash=np.array([rows[k][1] for k in keys], np.uint64).reshape(len(keys), -1))


def _workers() -> int:
    return min(4, os.cpu_count() or 1)


# ---------------------------------------------------------------------------------- twin confirmation
@dataclass(frozen=True)
class Twins:
    """Confirmed near-duplicates: ``query[k]`` looks like ``match[k]`` after ``transform[k]``."""

    query: np.ndarray      # int64 sample indices
    match: np.ndarray      # int64 sample indices
    distance: np.ndarray   # pHash bits at the aligning variant
    dhash: np.ndarray      # dHash bits at that variant
    ssim: np.ndarray       # float32, best refined alignment
    transform: list[str]
    candidates: int        # pairs the hash search nominated


def find_twins(data: ImageData, query_idx: Sequence[int], ref_idx: Sequence[int], *,
               max_distance: int = DEFAULT_MAX_DISTANCE, ssim_min: float = DEFAULT_SSIM_MIN,
               top_k: int = DEFAULT_TOP_K, dhash_max: int = DEFAULT_DHASH_MAX, same_class: bool = True,
               exclude_self: bool = False) -> Twins:
    """Near-duplicates of the query samples among the reference samples.

    ``same_class``: a twin shares its original's label, so searching class by class finds the same
    twins at about a third of the cost. ``exclude_self``: query and reference are the same list.
    """
    query_idx = np.asarray(query_idx, np.int64)
    ref_idx = np.asarray(ref_idx, np.int64)
    labels = np.array([s.label for s in data.samples])
    groups = [(query_idx, ref_idx)]
    if same_class:
        groups = [(query_idx[labels[query_idx] == c], ref_idx[labels[ref_idx] == c]) for c in CLASSES]
    q_all, r_all = [], []
    for q, r in groups:
        if q.size == 0 or r.size == 0:
            continue
        found: Matches = hamming_search(data.phash[q, 0], data.phash[r], max_distance, top_k=top_k,
                                        exclude_self=exclude_self)
        q_all.append(q[found.query])
        r_all.append(r[found.ref])
    q = np.concatenate(q_all) if q_all else np.empty(0, np.int64)
    r = np.concatenate(r_all) if r_all else np.empty(0, np.int64)
    # Which variant aligns the pair: pHash alone often ties between a flip and a rotation of a nearly
    # symmetric brain; pHash + dHash picks the right one (and the runner-up is tried if SSIM disagrees).
    dp = hamming(data.phash[q, 0][:, None], data.phash[r]).astype(np.int16)
    dd = hamming(data.dhash[q, 0][:, None], data.dhash[r]).astype(np.int16)
    score = np.where((dp <= max_distance) & (dd <= dhash_max), dp + dd, 999)
    order = np.argsort(score, axis=1, kind="stable")[:, :2]
    rows = np.arange(q.size)
    first, second = order[:, 0], order[:, min(1, order.shape[1] - 1)]
    keep = score[rows, first] < 999
    q, r, first, second, rows = q[keep], r[keep], first[keep], second[keep], rows[keep]
    ssim, names = _confirm(data, q, r, first, ssim_min)
    variant = first.copy()
    retry = np.flatnonzero((ssim < ssim_min) & (score[rows, second] < 999) & (second != first))
    if retry.size:
        ssim2, names2 = _confirm(data, q[retry], r[retry], second[retry], ssim_min)
        better = ssim2 > ssim[retry]
        for k, idx in enumerate(retry.tolist()):
            if better[k]:
                ssim[idx], names[idx], variant[idx] = ssim2[k], names2[k], second[idx]
    keep = ssim >= ssim_min
    return Twins(q[keep], r[keep], dp[rows, variant][keep].astype(np.uint8), dd[rows, variant][keep].astype(np.uint8),
                 ssim[keep], [n for n, k in zip(names, keep) if k], int(q.size))


def _confirm(data: ImageData, q: np.ndarray, r: np.ndarray, v: np.ndarray, ssim_min: float):
    """SSIM of each candidate (the reference moved by its variant), remembered per pair in ``data``."""
    keys = [(*k, ssim_min) for k in zip(q.tolist(), r.tolist(), v.tolist())]  # refinement depends on it
    missing = np.array([k not in data.scores for k in keys], bool)
    if missing.any():
        score, delta = _ssim_aligned(data, q[missing], r[missing], v[missing], ssim_min)
        for k, s_, d_ in zip((k for k, m in zip(keys, missing) if m), score.tolist(), delta.tolist()):
            data.scores[k] = (s_, d_)
    found = [data.scores[k] for k in keys]
    best = np.array([f[0] for f in found], np.float32)
    names = [_moved(data.variants[k[2]], f[1]).name for k, f in zip(keys, found)]
    return best, names


def _ssim_aligned(data: ImageData, q: np.ndarray, r: np.ndarray, v: np.ndarray, ssim_min: float,
                  batch: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Best SSIM and its angle refinement; pairs within ``REFINE_WINDOW`` under the threshold are tried
    again at ±2.5°, the most a 5° grid of rotations can miss."""
    data.load_works(np.concatenate([q, r]))
    unique_q = np.unique(q).tolist()
    own = dict(zip(unique_q, stretch(np.stack([aligned_thumbnail(data.works[i]) for i in unique_q]))))
    best = np.full(q.size, -1.0, np.float32)
    best_delta = np.zeros(q.size, np.float32)
    todo = np.arange(q.size)
    for delta in ANGLE_REFINE:
        for start in range(0, todo.size, batch):
            rows = todo[start:start + batch]
            a = np.stack([own[i] for i in q[rows].tolist()])
            b = stretch(np.stack([aligned_thumbnail(data.works[j], _moved(data.variants[k], delta))
                                  for j, k in zip(r[rows].tolist(), v[rows].tolist())]))
            score = ssim_batch(a, b)
            better = score > best[rows]
            best[rows[better]] = score[better]
            best_delta[rows[better]] = delta
        todo = np.flatnonzero((best < ssim_min) & (best >= ssim_min - REFINE_WINDOW))
    return best, best_delta


def _moved(variant: Variant, delta: float) -> Variant:
    return Variant(variant.flip, variant.angle + delta) if delta else variant


# ---------------------------------------------------------------------------------- pseudo-subjects
def pseudo_subject_labels(data: ImageData, *, max_distance: int = DEFAULT_MAX_DISTANCE,
                          ssim_min: float = DEFAULT_SSIM_MIN, top_k: int = DEFAULT_TOP_K,
                          dhash_max: int = DEFAULT_DHASH_MAX) -> np.ndarray:
    """Component number per sample: connected components of the confirmed near-duplicate graph.

    Why components and not clusters: duplicates chain (an original, its flipped copy, that copy
    re-compressed), and whatever is linked must stay on one side of a split.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(data.samples)
    everyone = np.arange(n)
    twins = find_twins(data, everyone, everyone, max_distance=max_distance, ssim_min=ssim_min,
                       top_k=top_k, dhash_max=dhash_max, exclude_self=True)
    graph = coo_matrix((np.ones(twins.query.size, np.int8), (twins.query, twins.match)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels


def pseudo_subjects(manifest: Manifest, *, max_distance: int = DEFAULT_MAX_DISTANCE,
                    ssim_min: float = DEFAULT_SSIM_MIN, cache: bool | str | os.PathLike = True,
                    progress: bool = False) -> dict[str, str]:
    """``{str(sample.path): pseudo-subject id}`` for ``split_manifest(group="pseudo")``: near-duplicate
    slices (augmented copies of one original, re-saved files) share an id, so no split separates them."""
    data = image_hashes(manifest.samples, cache=_cache_arg(manifest, cache), progress=progress)
    labels = pseudo_subject_labels(data, max_distance=max_distance, ssim_min=ssim_min)
    return {str(s.path): f"pseudo-{int(g):05d}" for s, g in zip(manifest.samples, labels)}


def _cache_arg(manifest: Manifest, cache) -> Path | None:
    if cache is True:
        return cache_path_for(manifest)
    return Path(cache) if cache else None


# ----------------------------------------------------------------------------------------- the report
def leakage_report(manifest: Manifest, *, seed: int = 0, max_distance: int = DEFAULT_MAX_DISTANCE,
                   ssim_min: float = DEFAULT_SSIM_MIN, top_k: int = DEFAULT_TOP_K, dhash_max: int = DEFAULT_DHASH_MAX,
                   cache: bool | str | os.PathLike = True, grid_png: str | os.PathLike | None = None,
                   max_pairs: int = MAX_PAIRS, pseudo: bool | None = None, progress: bool = False) -> dict:
    """The leakage block of ``audit.json``: rates per split pair and class, subject overlap, pairs.

    An unsplit manifest is split here, subject-aware (by slice when IDs are unknown, which is what a
    user would get), with ``seed``; the block says so. ``pseudo`` (default: when subject IDs are unknown)
    also groups near-duplicates into pseudo-subjects and counts those that span splits.
    """
    from model.splits import DEFAULT_RATIOS, split_manifest

    if max_distance < 0 or max_distance > 64:
        raise AlzAuditError(f"--max-distance: {max_distance} is outside 0..64 bits")
    if not 0.0 < ssim_min <= 1.0:
        raise AlzAuditError(f"--ssim-min: {ssim_min} is outside (0, 1]")
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
    options = dict(max_distance=max_distance, ssim_min=ssim_min, top_k=top_k, dhash_max=dhash_max)
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
    pairs.sort(key=lambda p: (-p["ssim"], p["distance"], p["query"]))
    report["n_pairs"] = len(pairs)
    report["pairs"] = pairs[:max_pairs]
    report["candidates_checked"] = candidates
    report["thresholds"] = {
        "max_distance": max_distance, "dhash_max": dhash_max, "ssim_min": ssim_min, "top_k": top_k,
        "hash": "pHash 64-bit (8x8 DCT of 32x32), dHash 64-bit (9x8)",
        "variants": [v.name for v in data.variants], "angle_refine": list(ANGLE_REFINE), "ssim_size": SSIM_SIZE,
        "same_class": True,
    }
    report["grid_png"] = str(write_pairs_grid(report["pairs"], grid_png)) if grid_png and pairs else None
    report["warnings"] = warnings + _loud_warnings(report)
    return report


def _pair_rows(samples: list[Sample], twins: Twins, key: str) -> list[dict]:
    return [{"query": str(samples[q].path), "match": str(samples[m].path), "splits": key, "distance": int(d),
             "transform": t, "ssim": round(float(s), 4), "dhash": int(dd), "label": samples[q].label}
            for q, m, d, dd, s, t in zip(twins.query.tolist(), twins.match.tolist(), twins.distance.tolist(),
                                         twins.dhash.tolist(), twins.ssim.tolist(), twins.transform)]


def _subject_overlap(samples: list[Sample]) -> dict:
    by_split: dict[str, set] = defaultdict(set)
    for s in samples:
        if s.subject_id and s.split:
            by_split[s.split].add(s.subject_id)
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
        text = f"{pair['splits']} d={pair['distance']} ssim={pair['ssim']:.2f} {pair['transform']}"
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
