"""Leakage search at Kaggle scale: recall of planted twins among many near neighbours, false pairs, time.

The Kaggle augmented set is 33,984 augmented images made from 6,400 originals. Here: 6,408 reference
slices (267 synthetic subjects x 24 slices 0.75 mm apart — every reference has a dozen near-identical
neighbours of its own subject and hundreds of similar slices of other subjects) and 34,000 queries, of
which 340 (1%) are planted twins of references, made as augmenters make them (tests/twin_maker.py: any
angle in ±15°, shifts up to 10%, zoom ±10%, flips, brightness/contrast, JPEG, and all at once), and
33,660 are augmented slices of 100 *other* synthetic subjects: near neighbours, never twins.

Printed: time to describe, time of the top-k candidate search (same-class, as the report runs it, and
across all classes), candidate recall (the twin's original among its top k), confirmed recall per
family, false pairs among a sample of the distractor queries, and two baselines measured in the same
run: the old variant-hash pipeline (pHash under 4 flips x 7 rotations, top-5 Hamming, SSIM) on the same
planted twins, and a naive per-query loop for the search. Then, end to end on files, the whole
``leakage_report`` of a fake Kaggle layout (240 originals of distinct subjects, 1,200 augmented twins,
the split made by slice and then by pseudo-subject). Exits 1 if the same-class search takes 30 s or more, the confirmed
recall is under 99%, or a false pair is confirmed.

    .venv/bin/python benchmarks/bench_leakage.py [--cache-dir DIR] [--distractor-sample N] [--no-layout]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from audit import hashing  # noqa: E402
from audit.hashing import similarity_search  # noqa: E402
from audit.leakage import (DEFAULT_MAX_DISTANCE, DEFAULT_MIN_SIMILARITY, DEFAULT_TOP_K, find_twins,  # noqa: E402
                           image_data_from_arrays)
from model.classes import CLASSES  # noqa: E402
from twin_maker import FAMILIES, make_twin  # noqa: E402

N_QUERY, PLANTED, LIMIT_S, RECALL_MIN = 34_000, 340, 30.0, 0.99


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def cohort(folder: Path, subjects: int, seed: int):
    """(images, labels, subject ids) of a synthetic cohort, synthesised once into ``folder``."""
    import cv2

    from model.manifest import load_dataset
    from model.synth import synthesize_cohort

    if (folder / "manifest.csv").is_file():
        manifest = load_dataset(folder)
    else:
        manifest = synthesize_cohort(folder, subjects=subjects, slices_per_subject=24, seed=seed, progress=False)
    images = [cv2.imread(str(s.path), cv2.IMREAD_GRAYSCALE) for s in manifest.samples]
    return images, [s.label for s in manifest.samples], [s.subject_id for s in manifest.samples]


class Queries:
    """34,000 query images made on demand (deterministic per index), so they never all sit in memory."""

    def __init__(self, refs, distractors, planted_refs, seed: int = 0):
        self.refs, self.distractors, self.planted_refs, self.seed = refs, distractors, planted_refs, seed
        rng = np.random.default_rng(seed)
        self.sources = rng.integers(0, len(distractors), N_QUERY - len(planted_refs))

    def __len__(self) -> int:
        return N_QUERY

    def family(self, i: int) -> str:
        return FAMILIES[i % len(FAMILIES)] if i < len(self.planted_refs) else "combo"

    def __getitem__(self, i: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, i))
        if i < len(self.planted_refs):
            return make_twin(self.refs[self.planted_refs[i]], rng, self.family(i))[0]
        return make_twin(self.distractors[self.sources[i - len(self.planted_refs)]], rng, "combo")[0]


class Concat:
    def __init__(self, *parts):
        self.parts = parts

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __getitem__(self, i: int):
        for p in self.parts:
            if i < len(p):
                return p[i]
            i -= len(p)
        raise IndexError(i)


def search_per_class(keys, labels, queries, refs, top_k):
    """The report's candidate search: each class's queries against that class's references."""
    out_q, out_r, out_s = [], [], []
    for c in CLASSES:
        q, r = queries[labels[queries] == c], refs[labels[refs] == c]
        if q.size and r.size:
            found = similarity_search(keys[q], keys[r], top_k, min_similarity=DEFAULT_MIN_SIMILARITY)
            out_q.append(q[found.query])
            out_r.append(r[found.ref])
            out_s.append(found.similarity)
    return np.concatenate(out_q), np.concatenate(out_r), np.concatenate(out_s)


def naive_search(keys, queries, refs, top_k):
    """Baseline: one query at a time, full sort (what a first implementation would do)."""
    ref_keys = keys[refs]
    return [np.argsort(-(ref_keys @ keys[q]))[:top_k] for q in queries]


def old_pipeline(ref_images, twin_images, ref_labels, twin_labels):
    """The pre-issue leakage search, rebuilt from the still-public hashing functions: pHash/dHash under
    4 flips x 7 rotations (0, ±5, ±10, ±15°), top-5 within 10 pHash bits, variant by pHash + dHash
    (dHash <= 10), SSIM >= 0.90 on 64x64 stretched thumbnails with ±2.5° refinement. Returns, per twin,
    the index of the confirmed reference (or -1)."""
    from concurrent.futures import ThreadPoolExecutor

    from audit.hashing import (DEFAULT_VARIANTS, Variant, aligned_thumbnail, hamming, hamming_search, hash_work,
                               ssim_batch, stretch, work_image)

    def one(image):
        work = np.rint(work_image(image)).astype(np.uint8)
        return work, *hash_work(work, DEFAULT_VARIANTS)

    with ThreadPoolExecutor(max_workers=2) as pool:
        refs = list(pool.map(one, ref_images))
        twins = list(pool.map(one, twin_images))
    r_p, r_d = np.stack([x[1] for x in refs]), np.stack([x[2] for x in refs])
    ref_labels, twin_labels = np.asarray(ref_labels), np.asarray(twin_labels)
    matched = np.full(len(twins), -1)
    best = np.full(len(twins), -1.0)
    for c in CLASSES:
        qi, ri = np.flatnonzero(twin_labels == c), np.flatnonzero(ref_labels == c)
        if not qi.size or not ri.size:
            continue
        q_p = np.array([twins[i][1][0] for i in qi], np.uint64)
        q_d = np.array([twins[i][2][0] for i in qi], np.uint64)
        found = hamming_search(q_p, r_p[ri], 10, top_k=5)
        for a, b in zip(found.query.tolist(), found.ref.tolist()):
            dp = hamming(q_p[a], r_p[ri[b]]).astype(int)
            dd = hamming(q_d[a], r_d[ri[b]]).astype(int)
            score = np.where((dp <= 10) & (dd <= 10), dp + dd, 999)
            if score.min() == 999:
                continue
            variant = DEFAULT_VARIANTS[int(np.argmin(score))]
            own = stretch(aligned_thumbnail(twins[qi[a]][0])[None])
            for delta in (0.0, -2.5, 2.5):
                moved = Variant(variant.flip, variant.angle + delta)
                s = float(ssim_batch(own, stretch(aligned_thumbnail(refs[ri[b]][0], moved)[None]))[0])
                if s > best[qi[a]]:
                    best[qi[a]] = s
                    if s >= 0.90:
                        matched[qi[a]] = ri[b]
    return matched


def kaggle_layout(refs, ref_labels, ref_subjects, folder: Path) -> bool:
    """``leakage_report`` end to end on a fake Kaggle layout: 240 originals (60 per class, one slice per
    subject), 5 augmented twins each (families cycling), JPEG files; split by slice, then by
    pseudo-subject. Returns whether every figure came out right."""
    import cv2

    from audit.leakage import leakage_report, pseudo_subjects
    from model.manifest import index_dataset
    from model.splits import split_manifest

    rng = np.random.default_rng(3)
    labels, subjects = np.array(ref_labels), np.array(ref_subjects)
    picks = []
    for c in CLASSES:
        own = rng.permutation(np.unique(subjects[labels == c]))[:60]
        picks += [int(rng.choice(np.flatnonzero(subjects == sid))) for sid in own]
    families = [f for f in FAMILIES if f != "flip"] + ["flip"]
    for n, i in enumerate(picks):
        original = refs[i]
        out = folder / "OriginalDataset" / labels[i] / f"{n} ({n % 7}).jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out), original, [cv2.IMWRITE_JPEG_QUALITY, 95])
        for a in range(5):
            twin, _ = make_twin(original, rng, families[(n + a) % len(families)])
            aug = folder / "AugmentedAlzheimerDataset" / labels[i] / f"{n:05d}-{a}-uuid.jpg"
            aug.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(aug), twin, [cv2.IMWRITE_JPEG_QUALITY, 95])
    manifest = index_dataset(folder)
    t_report, report = timed(leakage_report, manifest, cache=False, seed=0)
    twins = report["kaggle_twins"]["all"]
    print(f"fake Kaggle layout ({twins['originals']} originals, {twins['augmented']} augmented twins), "
          f"leakage_report end to end {t_report:.0f} s:")
    print(f"  augmented images with their twin found: {twins['augmented_with_twin']} of {twins['augmented']}; "
          f"pseudo-subjects {report['pseudo_subjects']} ({len(picks)} expected); cross-label pairs "
          f"{report['n_cross_label_pairs']}")
    print(f"  random (slice) split: {report['rate']['test->train']:.1%} of test images have a twin in train")
    t_pseudo, groups = timed(pseudo_subjects, manifest, cache=False)
    split, _ = split_manifest(manifest, seed=0, group="pseudo", groups=groups)
    after = leakage_report(split, cache=False, pseudo=False)
    print(f"  split by pseudo-subject ({t_pseudo:.0f} s to group): {after['max_rate']:.1%} of val/test images "
          f"have a twin in another split")
    return (twins["augmented_with_twin"] >= 0.99 * twins["augmented"] and report["n_cross_label_pairs"] == 0
            and after["max_rate"] == 0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache-dir", type=Path, help="keep the two synthetic cohorts here between runs")
    parser.add_argument("--distractor-sample", type=int, default=2000,
                        help="distractor queries whose candidates are all registered (false pairs); 0: all 33,660")
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K)
    parser.add_argument("--no-layout", action="store_true", help="skip the end-to-end fake Kaggle layout run")
    args = parser.parse_args()
    print(f"leakage benchmark at Kaggle scale ({os.cpu_count()} CPU cores, load {os.getloadavg()[0]:.1f})")
    with tempfile.TemporaryDirectory() as tmp:
        base = args.cache_dir or Path(tmp)
        seconds, (refs, ref_labels, ref_subjects) = timed(cohort, base / "references", 267, 1)
        d_seconds, (distractors, d_labels, _) = timed(cohort, base / "distractors", 100, 2)
    print(f"cohorts: {len(refs):,} references, {len(distractors):,} distractor slices ({seconds + d_seconds:.0f} s)")
    rng = np.random.default_rng(0)
    planted_refs = rng.choice(len(refs), PLANTED, replace=False)
    queries = Queries(refs, distractors, planted_refs)
    q_labels = [ref_labels[i] for i in planted_refs] + [d_labels[j] for j in queries.sources]
    labels = np.array(ref_labels + q_labels)
    n_ref = len(refs)
    everything = Concat(refs, queries)

    t_describe, data = timed(image_data_from_arrays, everything, list(labels), workers=2)
    print(f"describe {len(everything):,} images (augment, pose, canonical thumbnail, hashes): {t_describe:.1f} s "
          f"({t_describe / len(everything) * 1e3:.2f} ms/image)")
    keys = data.keys
    ref_idx = np.arange(n_ref)
    q_idx = np.arange(n_ref, n_ref + N_QUERY)
    k = args.top_k

    t_search, (cq, cr, cs) = timed(search_per_class, keys, labels, q_idx, ref_idx, k)
    t_all, all_found = timed(similarity_search, keys[q_idx], keys[ref_idx], k, min_similarity=DEFAULT_MIN_SIMILARITY)
    sample = q_idx[:: N_QUERY // 400][:400]
    t_naive, _ = timed(naive_search, keys, sample, ref_idx, k)
    naive_full = t_naive * N_QUERY / len(sample)
    print(f"top-{k} candidate search, {N_QUERY:,} x {n_ref:,}:")
    print(f"  same class (as the report)   {t_search:6.1f} s  ({len(cq):,} candidates)")
    print(f"  all classes (worst case)     {t_all:6.1f} s")
    print(f"  naive per-query loop         {naive_full:6.1f} s  (extrapolated from {len(sample)} queries) "
          f"-> blocked search is {naive_full / t_all:.1f}x faster")

    # candidate recall: is the original among the twin's top k (after the pHash veto)?
    twin_rows = np.arange(PLANTED)
    in_top = np.zeros(PLANTED, bool)
    candidates = {}
    for a, b in zip(cq.tolist(), cr.tolist()):
        candidates.setdefault(a - n_ref, []).append(b)
    for t in twin_rows:
        origin = int(planted_refs[t])
        if origin in candidates.get(t, []):
            in_top[t] = hashing.hamming(data.phash[n_ref + t, 0], data.phash[origin]).min() <= DEFAULT_MAX_DISTANCE

    t_confirm, twins = timed(find_twins, data, q_idx[:PLANTED], ref_idx, top_k=k)
    matched = dict(zip((twins.query - n_ref).tolist(), twins.match.tolist()))
    subjects = np.array(ref_subjects)
    found = np.array([matched.get(int(t)) == int(planted_refs[t]) for t in twin_rows])
    other = [(t, m) for t, m in matched.items() if m != planted_refs[t]]
    same_subject = sum(subjects[m] == subjects[planted_refs[t]] for t, m in other)
    t_old, old = timed(old_pipeline, refs, [queries[i] for i in range(PLANTED)], ref_labels,
                       [ref_labels[i] for i in planted_refs])
    old_found = old == planted_refs
    print(f"planted twins ({PLANTED}, {PLANTED // len(FAMILIES)}-{-(-PLANTED // len(FAMILIES))} per family): "
          f"confirmation {t_confirm:.1f} s, {twins.checked} pairs registered")
    print(f"  {'family':10s} {'in top-k':>9s} {'found':>7s} {'old variant set':>16s}")
    families = np.array([queries.family(int(t)) for t in twin_rows])
    for fam in FAMILIES:
        rows = families == fam
        print(f"  {fam:10s} {in_top[rows].mean():9.1%} {found[rows].mean():7.1%} {old_found[rows].mean():16.1%}")
    recall, old_recall = found.mean(), old_found.mean()
    print(f"  {'all':10s} {in_top.mean():9.1%} {recall:7.1%} {old_recall:16.1%}   "
          f"(recall ratio {recall / max(old_recall, 1e-9):.2f}x; old pipeline {t_old:.0f} s on the twins alone)")
    print(f"  matched to another slice: {len(other)} ({same_subject} of the same subject, "
          f"{len(other) - same_subject} of another subject = false pairs)")

    n = args.distractor_sample or (N_QUERY - PLANTED)
    picks = q_idx[PLANTED:][np.random.default_rng(1).permutation(N_QUERY - PLANTED)[:n]]
    t_false, false = timed(find_twins, data, picks, ref_idx, top_k=k)
    scored = find_twins(data, picks[:200], ref_idx, top_k=k, stop="never", keep_rejected=True, max_distance=64)
    print(f"distractor queries (other subjects, augmented): {len(false.query)} false pairs among {n:,} queries "
          f"({false.checked:,} candidate pairs registered, {t_false:.1f} s = "
          f"{t_false / max(false.checked, 1) * 1e3:.2f} ms/pair); best match of 200 queries' candidates "
          f"{scored.score.max():.3f}")
    ok = t_search < LIMIT_S and recall >= RECALL_MIN and len(false.query) == 0
    if not args.no_layout:
        with tempfile.TemporaryDirectory() as tmp:
            ok = kaggle_layout(refs, ref_labels, ref_subjects, Path(tmp) / "kaggle") and ok
    print(f"{'PASS' if ok else 'FAIL'}: same-class search {t_search:.1f} s (limit {LIMIT_S:.0f} s), recall "
          f"{recall:.1%} (min {RECALL_MIN:.0%}), {len(false.query)} false pairs")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
