"""Speed of the leakage search: 34,000 query hashes against 6,400 reference images x their variants.

The size of the Kaggle augmented set (33,984) against its originals (6,400). Baselines are measured in
the same run on a subset and extrapolated: a Python loop (``int.bit_count`` per pair) and the unchunked
numpy broadcast (which for the full problem would need the whole distance matrix in memory).
Also times batched SSIM against scikit-image one pair at a time. Exits 1 if the search with the default
variants (flips x rotations) takes 30 s or more.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from audit.hashing import DEFAULT_VARIANTS, hamming_search, ssim_batch  # noqa: E402

N_QUERY, N_REF, MAX_DISTANCE, LIMIT_S = 34_000, 6_400, 10, 30.0


def hashes(rng: np.random.Generator, n_variants: int) -> tuple[np.ndarray, np.ndarray]:
    query = rng.integers(0, 2**63, N_QUERY, dtype=np.uint64) | (rng.integers(0, 2, N_QUERY, dtype=np.uint64) << np.uint64(63))
    ref = rng.integers(0, 2**63, (N_REF, n_variants), dtype=np.uint64)
    # Plant 1,000 near pairs so the search has something to return.
    rows = rng.choice(N_QUERY, 1000, replace=False)
    ref[rng.integers(0, N_REF, 1000), rng.integers(0, n_variants, 1000)] = query[rows] ^ np.uint64(0b1011)
    return query, ref


def python_loop(query: np.ndarray, ref: np.ndarray) -> int:
    flat = [int(x) for x in ref.ravel()]
    hits = 0
    for q in (int(x) for x in query):
        for r in flat:
            if (q ^ r).bit_count() <= MAX_DISTANCE:
                hits += 1
    return hits


def unchunked(query: np.ndarray, ref: np.ndarray) -> int:
    dist = np.bitwise_count(query[:, None] ^ ref.ravel()[None, :])
    return int(np.count_nonzero(dist <= MAX_DISTANCE))


def timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def bench_search(n_variants: int, label: str) -> float:
    rng = np.random.default_rng(0)
    query, ref = hashes(rng, n_variants)
    pairs = N_QUERY * N_REF * n_variants
    seconds, found = timed(hamming_search, query, ref, MAX_DISTANCE)
    loop_rows, numpy_rows = 20, 2_000
    loop_s, _ = timed(python_loop, query[:loop_rows], ref)
    numpy_s, _ = timed(unchunked, query[:numpy_rows], ref)
    loop_full, numpy_full = loop_s * N_QUERY / loop_rows, numpy_s * N_QUERY / numpy_rows
    print(f"{label}: {N_QUERY:,} x {N_REF:,} x {n_variants} variants = {pairs / 1e9:.2f} G pairs")
    print(f"  blocked search    {seconds:8.2f} s  ({pairs / seconds / 1e9:.2f} G pairs/s, {len(found)} pairs <= {MAX_DISTANCE} bits)")
    print(f"  python loop       {loop_full:8.1f} s  (extrapolated from {loop_rows} queries)  -> {loop_full / seconds:,.0f}x slower")
    print(f"  unchunked numpy   {numpy_full:8.2f} s  (extrapolated from {numpy_rows:,} queries; the full matrix "
          f"would take {pairs * 9 / 2**30:.0f} GiB)  -> {numpy_full / seconds:.1f}x slower")
    return seconds


def bench_ssim() -> None:
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(1)
    a = rng.random((2048, 64, 64), dtype=np.float32)
    b = np.clip(a + rng.normal(0, 0.1, a.shape).astype(np.float32), 0, 1)
    batch_s, _ = timed(ssim_batch, a, b)
    n = 200
    loop_s, _ = timed(lambda: [structural_similarity(x, y, gaussian_weights=True, sigma=1.5, data_range=1.0,
                                                     use_sample_covariance=False) for x, y in zip(a[:n], b[:n])])
    per_batch, per_loop = batch_s / len(a) * 1e6, loop_s / n * 1e6
    print(f"SSIM 64x64: batched {per_batch:.0f} us/pair, scikit-image loop {per_loop:.0f} us/pair "
          f"-> {per_loop / per_batch:.1f}x")


def main() -> int:
    print(f"leakage search benchmark ({os.cpu_count()} CPU cores)")
    bench_search(2, "flips only")
    seconds = bench_search(len(DEFAULT_VARIANTS), "default variants (4 flips x 7 rotations)")
    bench_ssim()
    verdict = "PASS" if seconds < LIMIT_S else "FAIL"
    print(f"{verdict}: default search {seconds:.1f} s (limit {LIMIT_S:.0f} s)")
    return 0 if seconds < LIMIT_S else 1


if __name__ == "__main__":
    sys.exit(main())
