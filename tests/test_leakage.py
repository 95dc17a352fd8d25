"""Data-leakage audit: planted twins are found, distinct subjects are not paired, splits are judged.

Figures these tests pin down (synthetic cohort, 12 subjects x 4 slices): every planted twin (flip, 10°
rotation, JPEG re-compression, flip + 7° rotation, brighter copy) is confirmed; on the clean
subject-aware split no pair is reported (false-positive rate 0 over all distinct-subject pairs), and the
most similar distinct-subject candidate stays well under the SSIM threshold.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from audit import hashing
from audit.hashing import (DEFAULT_VARIANTS, Variant, apply_variant, hamming, hamming_search, hash_image,
                           ssim_batch)
from audit.leakage import (DEFAULT_DHASH_MAX, DEFAULT_MAX_DISTANCE, DEFAULT_SSIM_MIN, find_twins, image_hashes, leakage_report,
                           pseudo_subjects)
from model.classes import CLASSES
from model.manifest import Manifest, Sample, index_dataset, load_dataset, write_manifest
from model.splits import split_manifest

REPORT_KEYS = {"n_images", "rate", "rate_by_class", "max_rate", "subject_overlap", "subjects_known", "pairs",
               "thresholds", "grid_png", "split", "warnings"}


def rotate(image: np.ndarray, angle: float) -> np.ndarray:
    h, w = image.shape
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
    return cv2.warpAffine(image, matrix, (w, h), borderMode=cv2.BORDER_REPLICATE)


def jpeg(image: np.ndarray, quality: int = 60) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)


# name -> (how the train copy is made from the test image, the transform that maps the copy back)
PLANTS = {
    "flip": (lambda im: im[:, ::-1], "flip"),
    "rot10": (lambda im: rotate(im, 10), "rotate-10"),
    "jpeg": (lambda im: jpeg(im, 60), "identity"),
    "flip_rot7": (lambda im: rotate(np.ascontiguousarray(im[:, ::-1]), -7), None),
    "bright": (lambda im: np.clip(im.astype(np.float32) * 1.15 + 12, 0, 255).astype(np.uint8), "identity"),
}


def read(path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)


def write(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(image))
    return path


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Manifest:
    from model.synth import synthesize_cohort

    return synthesize_cohort(tmp_path_factory.mktemp("cohort") / "c", subjects=12, slices_per_subject=4,
                             seed=0, progress=False)


@pytest.fixture(scope="module")
def clean(cohort) -> Manifest:
    split, _ = split_manifest(cohort, seed=0, group="subject")
    return split


@pytest.fixture(scope="module")
def planted(clean, tmp_path_factory):
    """The clean split plus train copies of test images: (manifest, {(test path, copy path): transform})."""
    folder = tmp_path_factory.mktemp("planted")
    tests = [s for s in clean.samples if s.split == "test"]
    samples, expected = list(clean.samples), {}
    for k, (name, (make, transform)) in enumerate(PLANTS.items()):
        source = tests[(3 * k) % len(tests)]
        suffix = ".jpg" if name == "jpeg" else ".png"
        if name == "jpeg":
            copy = folder / f"copy_{k}{suffix}"
            assert cv2.imwrite(str(copy), read(source.path), [cv2.IMWRITE_JPEG_QUALITY, 60])
        else:
            copy = write(folder / f"copy_{k}{suffix}", make(read(source.path)))
        samples.append(Sample(path=copy.resolve(), label=source.label, subject_id=f"PLANT_{k}", split="train"))
        expected[(str(source.path), str(copy.resolve()))] = transform
    manifest = clean.subset(samples)
    manifest.root = folder
    write_manifest(manifest, folder / "manifest.csv")
    return manifest, expected


@pytest.fixture(scope="module")
def planted_report(planted, tmp_path_factory):
    manifest, _ = planted
    grid = tmp_path_factory.mktemp("grid") / "pairs.png"
    return leakage_report(manifest, cache=False, grid_png=grid)


# ------------------------------------------------------------------------------------ numeric core
def test_hamming_search_equals_brute_force_with_variants_top_k_and_self():
    rng = np.random.default_rng(1)
    query = rng.integers(0, 2**63, 700, dtype=np.uint64)
    ref = rng.integers(0, 2**63, (300, 3), dtype=np.uint64)
    ref[5, 2] = query[7] ^ np.uint64(0b101)                 # a planted pair at distance 2 via variant 2
    found = hamming_search(query, ref, 22, block=(64, 128))  # small blocks: many block edges crossed
    dist = hamming(query[:, None, None], ref[None]).min(axis=2)
    qi, ri = np.nonzero(dist <= 22)
    assert set(zip(found.query.tolist(), found.ref.tolist())) == set(zip(qi.tolist(), ri.tolist()))
    assert np.array_equal(found.distance, dist[found.query, found.ref])
    hit = (found.query == 7) & (found.ref == 5)
    assert found.distance[hit].tolist() == [2] and found.variant[hit].tolist() == [2]
    top = hamming_search(query, ref, 22, top_k=2)
    assert np.bincount(top.query).max() <= 2
    for q in np.unique(top.query)[:50]:                     # the two kept are the two nearest
        kept = np.sort(top.distance[top.query == q])
        assert np.array_equal(kept, np.sort(dist[q][dist[q] <= 22])[:kept.size])
    own = hamming_search(query, query, 20, exclude_self=True)
    assert own.query.size > 0 and not np.any(own.query == own.ref)
    assert len(hamming_search(query, ref, -1)) == 0


def test_ssim_batch_equals_scikit_image():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(2)
    a = cv2.GaussianBlur(rng.random((4, 40, 40)).astype(np.float32).transpose(1, 2, 0), (0, 0), 2).transpose(2, 0, 1)
    b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1).astype(np.float32)
    ours = ssim_batch(a, b)
    ref = [structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
           for x, y in zip(a, b)]
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert ssim_batch(a, a).min() > 0.9999


def test_hashes_survive_the_kaggle_augmentations(clean):
    """Why the thresholds: at the variant that aligns them best, JPEG'd twins rotated by up to ±15° stay
    within 8 pHash and 8 dHash bits (measured: at most 8 and 6)."""
    worst, worst_d = 0, 0
    for sample in [s for s in clean.samples if s.split == "test"][:6]:
        image = read(sample.path)
        base, base_d = hash_image(image)
        flipped, _ = hash_image(np.ascontiguousarray(image[:, ::-1]))
        assert hamming(flipped[0], base[DEFAULT_VARIANTS.index(Variant("h", 0.0))]) <= 2
        for angle in np.arange(-15, 15.1, 2.5):
            moved, moved_d = hash_image(rotate(jpeg(image, 60), float(angle)))
            dp, dd = hamming(moved[0], base).astype(int), hamming(moved_d[0], base_d).astype(int)
            best = int(np.argmin(dp + dd))                  # how find_twins picks the aligning variant
            worst, worst_d = max(worst, dp[best]), max(worst_d, dd[best])
    print(f"\n[leakage] worst twin distances: pHash {worst}, dHash {worst_d}")
    assert worst <= DEFAULT_MAX_DISTANCE - 2
    assert worst_d <= DEFAULT_DHASH_MAX - 2


def test_variant_names_and_inverse_closure():
    names = [v.name for v in DEFAULT_VARIANTS]
    assert names[0] == "identity" and "flip" in names and "rotate-10" in names and len(set(names)) == len(names)
    image = np.arange(30 * 20, dtype=np.float32).reshape(30, 20)
    for v in DEFAULT_VARIANTS:                     # flip-then-rotate is its own inverse, up to interpolation
        if v.angle == 0:
            assert np.array_equal(apply_variant(apply_variant(image, v), v), image)


# ------------------------------------------------------------------------------------- planted twins
def test_every_planted_twin_is_found_and_nothing_else(planted, planted_report):
    _, expected = planted
    found = {(p["query"], p["match"]): p["transform"] for p in planted_report["pairs"]}
    assert set(found) == set(expected), "missed or false pairs"
    for key, transform in expected.items():
        if transform is not None:
            assert found[key] == transform
    assert found[next(k for k, v in expected.items() if v is None)].startswith("flip+rotate")
    tests = planted_report["n_images"]["test"]
    assert planted_report["rate"]["test->train"] == pytest.approx(len(expected) / tests)
    assert planted_report["max_rate"] == planted_report["rate"]["test->train"] > 0
    assert planted_report["rate"]["val->train"] == 0.0
    for pair in planted_report["pairs"]:
        assert pair["splits"] == "test->train" and pair["distance"] <= DEFAULT_MAX_DISTANCE
        assert pair["ssim"] >= DEFAULT_SSIM_MIN and pair["dhash"] <= DEFAULT_DHASH_MAX


def test_report_block_shape_and_grid(planted_report):
    assert REPORT_KEYS <= planted_report.keys()
    assert set(planted_report["rate"]) == {"val->train", "test->train", "test->val"}
    by_class = planted_report["rate_by_class"]["test->train"]
    assert set(by_class) <= set(CLASSES) and max(by_class.values()) > 0
    assert planted_report["subjects_known"] is True
    assert all(v["count"] == 0 for v in planted_report["subject_overlap"].values())
    assert planted_report["thresholds"]["max_distance"] == DEFAULT_MAX_DISTANCE
    assert any(w.startswith("LEAK") for w in planted_report["warnings"])
    grid = cv2.imread(planted_report["grid_png"], cv2.IMREAD_GRAYSCALE)
    assert grid is not None and grid.shape[0] >= 128 and grid.shape[1] >= 256
    json.dumps(planted_report)  # serialisable as is


def test_clean_split_has_no_false_pairs_and_a_margin(clean, capsys):
    """False-positive rate on the clean split: confirmed pairs / distinct-subject pairs compared."""
    report = leakage_report(clean, cache=False)
    assert report["max_rate"] == 0.0 and report["pairs"] == []
    data = image_hashes(clean.samples)
    everyone = np.arange(len(clean))
    candidates = find_twins(data, everyone, everyone, ssim_min=1e-9, top_k=10**6, dhash_max=64, exclude_self=True)
    subjects = np.array([s.subject_id for s in clean.samples])
    distinct = subjects[candidates.query] != subjects[candidates.match]
    n_distinct_pairs = int((subjects[:, None] != subjects[None, :]).sum()) // 2      # unordered pairs
    confirmed = distinct & (candidates.ssim >= DEFAULT_SSIM_MIN)
    false_pairs = len({tuple(sorted(p)) for p in zip(candidates.query[confirmed].tolist(),
                                                     candidates.match[confirmed].tolist())})
    assert distinct.sum() > 0  # the hash alone does nominate distinct subjects: SSIM must reject them
    assert false_pairs == 0
    assert candidates.ssim[distinct].max() < DEFAULT_SSIM_MIN - 0.05
    with capsys.disabled():
        print(f"\n[leakage] clean split: {false_pairs} false pairs / {n_distinct_pairs} distinct-subject pairs "
              f"(FP rate {false_pairs / n_distinct_pairs:.4f}); {int(distinct.sum())} hash candidates, "
              f"max SSIM {candidates.ssim[distinct].max():.3f} < {DEFAULT_SSIM_MIN}")


# -------------------------------------------------------------------------------- subjects and splits
def test_subject_overlap_zero_for_subject_split_and_positive_for_slice_split(cohort, clean, tmp_path):
    cache = tmp_path / "hashes.npz"
    aware = leakage_report(clean, cache=cache, pseudo=False)
    assert aware["subject_overlap"] and all(v["count"] == 0 for v in aware["subject_overlap"].values())
    leaky, _ = split_manifest(cohort, seed=0, group="slice")
    sliced = leakage_report(leaky, cache=cache, pseudo=False)
    assert sum(v["count"] for v in sliced["subject_overlap"].values()) > 0
    assert sliced["subject_overlap"]["test->train"]["ids"]
    assert any("subject(s) appear in both" in w for w in sliced["warnings"])


def test_unsplit_manifest_is_split_subject_aware_and_said_so(cohort):
    report = leakage_report(cohort, cache=False, seed=3, pseudo=False)
    assert report["split"] == {"source": "generated", "group": "subject", "seed": 3, "ratios": [0.7, 0.15, 0.15]}
    assert sum(report["n_images"].values()) == len(cohort)
    assert any("no splits" in w for w in report["warnings"])


def test_pseudo_subjects_group_twins_and_pseudo_split_removes_the_leak(planted):
    manifest, expected = planted
    anonymous = manifest.subset(Sample(s.path, s.label) for s in manifest.samples)
    groups = pseudo_subjects(anonymous, cache=False)
    assert set(groups) == {str(s.path) for s in manifest.samples}
    for query, copy in expected:
        assert groups[query] == groups[copy]
    assert len(set(groups.values())) == len(manifest) - len(expected)  # nothing else merged
    split, report = split_manifest(anonymous, seed=0, group="pseudo", groups=groups)
    assert report.group_kind == "pseudo"
    side = {str(s.path): s.split for s in split.samples}
    assert all(side[q] == side[c] for q, c in expected)
    after = leakage_report(split, cache=False)
    assert after["max_rate"] == 0.0
    assert after["pseudo_subjects"] == len(manifest) - len(expected)
    assert after["pseudo_subject_detail"]["spanning_splits"] == 0


# ------------------------------------------------------------------------------------------- layouts
def test_kaggle_layout_counts_twins_per_original(cohort, tmp_path):
    root = tmp_path / "kaggle"
    originals = {}
    for label in CLASSES:  # two originals per class, from different subjects
        picks = [s for s in cohort.samples if s.label == label]
        picks = [picks[0], next(s for s in picks if s.subject_id != picks[0].subject_id)]
        for k, s in enumerate(picks):
            originals[write(root / "OriginalDataset" / label / f"{k + 1} ({k + 10}).jpg", read(s.path))] = label
    augment = [lambda im: im[:, ::-1], lambda im: rotate(im, 10), lambda im: rotate(np.ascontiguousarray(im[:, ::-1]), 5)]
    for n, (path, label) in enumerate(originals.items()):
        for a, make in enumerate(augment):
            write(root / "AugmentedAlzheimerDataset" / label / f"{n:04x}-{a}-uuid.jpg", make(read(path)))
    manifest = index_dataset(root)
    assert manifest.layout == "kaggle-augmented"
    report = leakage_report(manifest, cache=False, seed=0)
    twins = report["kaggle_twins"]
    assert twins["all"] == {"originals": 8, "augmented": 24, "augmented_with_twin": 24,
                            "twins_per_original": 3.0, "max_twins": 3, "originals_with_twins": 1.0}
    assert all(twins[c]["twins_per_original"] == 3.0 for c in CLASSES)
    assert report["split"]["source"] == "generated" and report["split"]["group"] == "slice"
    assert report["subjects_known"] is False and report["subject_overlap"] == {}
    assert report["max_rate"] > 0  # a random split of the augmented set leaks
    assert report["pseudo_subjects"] == 8
    assert any("augmented images are twins" in w for w in report["warnings"])


def test_split_folders_layout(clean, tmp_path):
    root = tmp_path / "folders"
    tests = [s for s in clean.samples if s.split == "test"]
    for s in clean.samples:
        write(root / s.split / s.label / s.path.name, read(s.path))
    write(root / "train" / tests[0].label / "leaked.png", read(tests[0].path)[:, ::-1])
    report = leakage_report(load_dataset(root), cache=False, pseudo=False)
    assert report["split"] == {"source": "manifest"}
    assert report["n_leaked"]["test->train"] == 1
    assert [Path(p["match"]).name for p in report["pairs"]] == ["leaked.png"]


# ---------------------------------------------------------------------------------------------- cache
def test_hash_cache_is_reused_and_invalidated_by_a_changed_file(cohort, tmp_path, monkeypatch):
    folder = tmp_path / "data"
    samples = [Sample(write(folder / s.path.name, read(s.path)), s.label) for s in cohort.samples[:6]]
    cache = folder / ".hashes.npz"
    first = image_hashes(samples, cache=cache)
    assert cache.is_file()
    calls = []
    real = hashing.hash_work
    monkeypatch.setattr("audit.leakage.hash_work", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = image_hashes(samples, cache=cache)
    assert calls == [] and np.array_equal(again.phash, first.phash) and np.array_equal(again.dhash, first.dhash)
    write(samples[2].path, read(samples[2].path)[::-1])  # new content, size or mtime changes
    import os
    os.utime(samples[2].path, ns=(1, 1))
    changed = image_hashes(samples, cache=cache)
    assert len(calls) == 1
    assert not np.array_equal(changed.phash[2], first.phash[2]) and np.array_equal(changed.phash[3], first.phash[3])


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_writes_json_and_grid_and_exits_zero(planted, tmp_path, capsys):
    from audit.cli import main

    manifest, expected = planted
    out = tmp_path / "leak.json"
    assert main(["data", "leakage", str(manifest.root / "manifest.csv"), "--json", str(out), "--no-cache"]) == 0
    printed = capsys.readouterr().out
    assert "LEAK" in printed and "test->train" in printed
    block = json.loads(out.read_text())
    assert REPORT_KEYS <= block.keys()
    assert len(block["pairs"]) == len(expected)
    assert {"query", "match", "splits", "distance", "transform"} <= block["pairs"][0].keys()
    assert Path(block["grid_png"]).is_file()


def test_cli_split_by_pseudo_subject(planted, tmp_path):
    from audit.cli import main

    manifest, expected = planted
    anonymous = manifest.subset(Sample(s.path, s.label) for s in manifest.samples)
    source = write_manifest(anonymous, tmp_path / "anon.csv")
    out = tmp_path / "pseudo_split.csv"
    assert main(["data", "split", str(source), "--group", "pseudo", "--out", str(out)]) == 0
    side = {str(s.path): s.split for s in load_dataset(out).samples}
    assert all(side[q] == side[c] for q, c in expected)


def test_cli_names_a_missing_input(tmp_path, capsys):
    from audit.cli import main

    assert main(["data", "leakage", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
