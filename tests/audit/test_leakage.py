"""Data-leakage audit: planted twins are found, distinct subjects are not paired, splits are judged.

Figures these tests pin down (synthetic cohorts; printed with ``-s``):
- recall of planted twins made as augmenters make them (tests/twin_maker.py: any angle in ±15°, never a
  multiple of 5; shifts up to 10%; zoom ±10%; flips; brightness/contrast with clipping; JPEG q50-90; all
  at once) — 210 twins per run, recall >= 99% overall and >= 29/30 per family, each matched to its own
  original;
- false pairs on a clean subject split of a 40 x 8 cohort: 0, with every distinct-subject candidate
  scored and the best of them at least 0.05 under the match threshold;
- near-duplicates filed under two labels are reported as such.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from audit import hashing
from audit.hashing import (DEFAULT_VARIANTS, apply_variant, brain_mask, canonical_thumbnail,
                           flip_invariant, flipped, foreground_pose, hamming, hamming_search, pair_matrix,
                           register, similarity_search, ssim_batch, unit_rows, work_image)
from audit.leakage import (DEFAULT_MATCH_MIN, DEFAULT_MAX_DISTANCE, DEFAULT_SSIM_MIN, DEFAULT_TOP_K, describe_work,
                           find_twins, image_data_from_arrays, image_hashes, leakage_report, pseudo_subjects)
from model.classes import CLASSES
from model.manifest import Manifest, Sample, index_dataset, load_dataset, write_manifest
from model.splits import split_manifest
from twin_maker import FAMILIES, jpeg, make_twin, random_angle

REPORT_KEYS = {"n_images", "rate", "rate_by_class", "max_rate", "subject_overlap", "subjects_known", "pairs",
               "thresholds", "grid_png", "split", "warnings", "cross_label_pairs", "n_cross_label_pairs"}
TWINS_PER_FAMILY = 30


def rotate(image: np.ndarray, angle: float) -> np.ndarray:
    h, w = image.shape
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
    return cv2.warpAffine(image, matrix, (w, h), borderMode=cv2.BORDER_REPLICATE)


# name -> (how the train copy is made from the test image, the flip and angle that map the copy back)
PLANTS = {
    "flip": (lambda im: im[:, ::-1], ("flip", 0.0)),
    "rot8": (lambda im: rotate(im, 8.3), ("", -8.3)),
    "jpeg": (lambda im: jpeg(im, 60), ("", 0.0)),
    "flip_rot7": (lambda im: rotate(np.ascontiguousarray(im[:, ::-1]), -7), None),
    "bright": (lambda im: np.clip(im.astype(np.float32) * 1.15 + 12, 0, 255).astype(np.uint8), ("", 0.0)),
}


def read(path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)


def write(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(image))
    return path


def angle_of(transform: str) -> float:
    """The rotation in a transform name such as ``flip+rotate-8.2+zoom1.04``."""
    import re

    found = re.search(r"rotate([+-][0-9.]+)", transform)
    return float(found.group(1)) if found else 0.0


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Manifest:
    from model.synth import synthesize_cohort

    return synthesize_cohort(tmp_path_factory.mktemp("cohort") / "c", subjects=12, slices_per_subject=4,
                             seed=0, progress=False)


@pytest.fixture(scope="module")
def cohort40(tmp_path_factory) -> Manifest:
    """40 subjects x 8 slices: 49,920 distinct-subject pairs, the size the false-pair figure is quoted at."""
    from model.synth import synthesize_cohort

    return synthesize_cohort(tmp_path_factory.mktemp("cohort40") / "c", subjects=40, slices_per_subject=8,
                             seed=0, progress=False)


@pytest.fixture(scope="module")
def clean(cohort) -> Manifest:
    split, _ = split_manifest(cohort, seed=0, group="subject")
    return split


@pytest.fixture(scope="module")
def planted(clean, tmp_path_factory):
    """The clean split plus train copies of test images: (manifest, {(test path, copy path): (flip, angle)})."""
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


def test_similarity_search_equals_brute_force_top_k_floor_and_self():
    rng = np.random.default_rng(3)
    ref = unit_rows(rng.normal(size=(900, 40)))
    query = unit_rows(np.r_[ref[:50] + rng.normal(0, 0.03, (50, 40)), rng.normal(size=(250, 40))])
    found = similarity_search(query, ref, 5, block=64)        # small blocks: many block edges crossed
    sims = query @ ref.T
    assert len(found) == 300 * 5
    for q in range(0, 300, 7):
        mine = found.ref[found.query == q]
        assert np.allclose(sims[q, mine], np.sort(sims[q])[::-1][:5], atol=1e-5)   # the 5 best, best first
    assert np.all(found.ref[found.query < 50][::5] == np.arange(50))             # a noisy copy finds its original
    floor = similarity_search(query, ref, 5, min_similarity=0.5)
    assert floor.similarity.min() >= 0.5 and len(floor) < len(found)
    own = similarity_search(ref, ref, 3, exclude_self=True, block=100)
    assert len(own) == 900 * 3 and not np.any(own.query == own.ref)
    assert len(similarity_search(query, ref, 0)) == 0


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


def test_variant_names_and_inverse_closure():
    names = [v.name for v in DEFAULT_VARIANTS]
    assert names[0] == "identity" and "flip" in names and "rotate-10" in names and len(set(names)) == len(names)
    image = np.arange(30 * 20, dtype=np.float32).reshape(30, 20)
    for v in DEFAULT_VARIANTS:                     # flip-then-rotate is its own inverse, up to interpolation
        if v.angle == 0:
            assert np.array_equal(apply_variant(apply_variant(image, v), v), image)


def test_pose_undoes_rotation_shift_and_zoom(clean):
    """Why the search needs no rotation variants: the foreground's pose turns, moves and scales with the
    slice, so the canonical thumbnails of a slice and of its moved copy coincide."""
    rng = np.random.default_rng(4)
    for sample in [s for s in clean.samples if s.split == "test"][:4]:
        image = read(sample.path)
        h, w = image.shape
        angle, zoom, shift = random_angle(rng), float(rng.uniform(0.9, 1.1)), rng.uniform(-0.08, 0.08, 2)
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, zoom)
        matrix[:, 2] += shift * (w, h)
        moved = cv2.warpAffine(image, matrix, (w, h))
        a, b = work_image(image), work_image(moved)
        pa, pb = foreground_pose(a), foreground_pose(b)
        assert pb[2] - pa[2] == pytest.approx(angle, abs=1.5)             # the major axis turned with it
        assert pb[3] / pa[3] == pytest.approx(zoom, abs=0.03)             # sqrt(area) scaled with it
        centre = matrix @ np.array([(pa[0] + 0.5) * w / a.shape[1], (pa[1] + 0.5) * h / a.shape[0], 1.0])
        assert np.allclose(centre, [(pb[0] + 0.5) * w / b.shape[1], (pb[1] + 0.5) * h / b.shape[0]], atol=3.0)
        ta, tb = canonical_thumbnail(a, pa), canonical_thumbnail(b, pb)
        assert float(unit_rows(ta[None])[0] @ unit_rows(tb[None])[0]) > 0.98
        assert brain_mask(a).mean() == pytest.approx(brain_mask(b).mean() / zoom ** 2, rel=0.08)


def test_flip_invariant_keys_and_registration(clean):
    """Keys do not change under flips, yet tell slices apart; ECC recovers a known similarity transform."""
    images = [work_image(read(s.path)) for s in clean.samples[:12]]
    thumbs = np.stack([canonical_thumbnail(im, foreground_pose(im)) for im in images])
    keys = flip_invariant(thumbs)
    for flip in ("h", "v", "hv"):
        assert np.allclose(flip_invariant(np.ascontiguousarray(flipped(thumbs, flip))), keys, atol=1e-5)
    sims = keys @ keys.T
    assert np.all(np.argmax(sims, axis=1) == np.arange(len(keys)))
    image = read(clean.samples[0].path)
    h, w = image.shape
    true = cv2.getRotationMatrix2D((w / 2, h / 2), 11.7, 1.06)
    true[:, 2] += (6.0, -4.0)
    moved = cv2.warpAffine(image, true, (w, h))
    ref, query = work_image(image), work_image(moved)
    init = pair_matrix(foreground_pose(query), foreground_pose(ref))
    refined = register(cv2.GaussianBlur(query / 255.0, (0, 0), 0.8).astype(np.float32),
                       cv2.GaussianBlur(ref / 255.0, (0, 0), 0.8).astype(np.float32), init)
    assert refined is not None
    k = ref.shape[1] / w                              # the true map in work-image pixels
    scale = np.array([[k, 0, 0.5 * k - 0.5], [0, k, 0.5 * k - 0.5], [0, 0, 1]])
    expected = (scale @ np.vstack([true, [0, 0, 1]]) @ np.linalg.inv(scale))[:2]
    grid = np.array([[x, y, 1.0] for x in (10, 30, 50) for y in (10, 30, 55)]).T
    assert np.abs(refined @ grid - expected @ grid).max() < 0.35                  # within a third of a pixel
    assert np.abs(init @ grid - expected @ grid).max() < 2.0                      # the pose alone: ~ a pixel


def test_canonical_hashes_survive_the_augmentations(clean):
    """Why ``max_distance`` 16: at the best flip, twins' canonical pHashes stay within 12 bits."""
    rng = np.random.default_rng(5)
    worst = 0
    for sample in [s for s in clean.samples if s.split == "test"][:8]:
        image = read(sample.path)
        _, _, _, base, _ = describe_work(np.rint(work_image(image, hashing.CONFIRM_SIZE)).astype(np.uint8))
        for family in FAMILIES:
            twin, _ = make_twin(image, rng, family)
            _, _, _, moved, _ = describe_work(np.rint(work_image(twin, hashing.CONFIRM_SIZE)).astype(np.uint8))
            worst = max(worst, int(hamming(moved[0], base).min()))
    print(f"\n[leakage] worst canonical pHash distance of a twin: {worst} bits")
    assert worst <= DEFAULT_MAX_DISTANCE - 4


# --------------------------------------------------------------------------- recall: any angle, any scale
@pytest.fixture(scope="module")
def recall(cohort40, tmp_path_factory):
    """Twins of random originals of the 40 x 8 cohort, TWINS_PER_FAMILY per family, searched against all
    320 originals (so every twin has 319 similar distractors): per family, found / made, and details."""
    folder = tmp_path_factory.mktemp("twins")
    rng = np.random.default_rng(11)
    originals = list(cohort40.samples)
    samples, made = list(originals), []
    for family in FAMILIES:
        for k, i in enumerate(rng.choice(len(originals), TWINS_PER_FAMILY, replace=False)):
            twin, params = make_twin(read(originals[i].path), rng, family)
            path = write(folder / f"{family}_{k}.png", twin)
            samples.append(Sample(path=path, label=originals[i].label, subject_id=f"TWIN_{family}_{k}"))
            made.append((len(samples) - 1, int(i), params))
    data = image_hashes(samples)
    twins = find_twins(data, [m[0] for m in made], np.arange(len(originals)))
    found = dict(zip(twins.query.tolist(), zip(twins.match.tolist(), twins.transform)))
    out = {family: [] for family in FAMILIES}
    for q, i, params in made:
        hit = found.get(q)
        out[params["family"]].append((hit is not None and hit[0] == i, params, hit[1] if hit else None))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_planted_twins_are_found_whatever_the_augmentation(recall, family):
    rows = recall[family]
    hits = sum(ok for ok, _, _ in rows)
    print(f"\n[leakage] {family}: {hits}/{len(rows)} twins found")
    assert len(rows) == TWINS_PER_FAMILY
    assert hits >= TWINS_PER_FAMILY - 1
    if family in ("rotate", "combo"):                       # any angle, and the angle is recovered
        angles = [p["angle"] for _, p, _ in rows]
        assert min(abs(a - 5 * round(a / 5)) for a in angles) >= 0.5
        for ok, p, transform in rows:
            if ok and not p["flip"]:
                assert angle_of(transform) == pytest.approx(p["angle"], abs=2.0), transform  # match -> twin


def test_planted_twin_recall_is_at_least_99_percent(recall):
    total = sum(len(rows) for rows in recall.values())
    hits = sum(ok for rows in recall.values() for ok, _, _ in rows)
    print(f"\n[leakage] recall {hits}/{total} = {hits / total:.3f}")
    assert total >= 200 and hits / total >= 0.99


def test_the_reported_case_noisy_slices_rotated_8_degrees_by_pil_and_jpeg_q80(cohort40, tmp_path):
    """The issue's reproduction: twins of noisy slices rotated by 8° with PIL (black corners), saved as
    JPEG q80, were all missed by the 5°-grid of hash variants; they must all be found now."""
    from PIL import Image

    rng = np.random.default_rng(13)
    samples, pairs = [], []
    for k, sample in enumerate(cohort40.samples[::16]):           # 20 slices, all levels and classes
        noisy = np.clip(read(sample.path) + rng.normal(0, 12, (208, 176)), 0, 255).astype(np.uint8)
        original = write(tmp_path / f"noisy_{k}.png", noisy)
        twin = tmp_path / f"twin_{k}.jpg"
        Image.fromarray(noisy).rotate(8).save(twin, quality=80)
        samples += [Sample(original, sample.label), Sample(twin, sample.label)]
        pairs.append((2 * k + 1, 2 * k))
    data = image_hashes(samples)
    found = find_twins(data, [q for q, _ in pairs], [r for _, r in pairs])
    assert set(zip(found.query.tolist(), found.match.tolist())) == set(pairs)
    assert all(angle_of(t) == pytest.approx(8.0, abs=1.5) for t in found.transform)


def test_twins_held_in_memory_are_found_too(cohort40):
    """:func:`image_data_from_arrays` (what the benchmark uses) gives the same answers as files."""
    rng = np.random.default_rng(12)
    originals = [read(s.path) for s in cohort40.samples[:96]]
    picks = rng.choice(len(originals), 24, replace=False)
    twins = [make_twin(originals[i], rng, "combo")[0] for i in picks]
    data = image_data_from_arrays(originals + twins, [s.label for s in cohort40.samples[:96]]
                                  + [cohort40.samples[i].label for i in picks])
    found = find_twins(data, np.arange(96, 120), np.arange(96))
    matched = dict(zip(found.query.tolist(), found.match.tolist()))
    assert sum(matched.get(96 + k) == int(i) for k, i in enumerate(picks)) >= 23


# ------------------------------------------------------------------------------------- planted twins
def test_every_planted_twin_is_found_and_nothing_else(planted, planted_report):
    _, expected = planted
    found = {(p["query"], p["match"]): p["transform"] for p in planted_report["pairs"]}
    assert set(found) == set(expected), "missed or false pairs"
    for key, transform in expected.items():
        if transform is not None:
            flip, angle = transform
            assert found[key].startswith(flip) and angle_of(found[key]) == pytest.approx(angle, abs=1.5), found[key]
    assert found[next(k for k, v in expected.items() if v is None)].startswith("flip+rotate")
    tests = planted_report["n_images"]["test"]
    assert planted_report["rate"]["test->train"] == pytest.approx(len(expected) / tests)
    assert planted_report["max_rate"] == planted_report["rate"]["test->train"] > 0
    assert planted_report["rate"]["val->train"] == 0.0
    for pair in planted_report["pairs"]:
        assert pair["splits"] == "test->train" and pair["distance"] <= DEFAULT_MAX_DISTANCE
        assert pair["match_score"] >= DEFAULT_MATCH_MIN and pair["ssim"] >= DEFAULT_SSIM_MIN
    assert planted_report["n_cross_label_pairs"] == 0 and planted_report["cross_label_pairs"] == []


def test_report_block_shape_and_grid(planted_report):
    assert REPORT_KEYS <= planted_report.keys()
    assert set(planted_report["rate"]) == {"val->train", "test->train", "test->val"}
    by_class = planted_report["rate_by_class"]["test->train"]
    assert set(by_class) <= set(CLASSES) and max(by_class.values()) > 0
    assert planted_report["subjects_known"] is True
    assert all(v["count"] == 0 for v in planted_report["subject_overlap"].values())
    assert planted_report["thresholds"]["max_distance"] == DEFAULT_MAX_DISTANCE
    assert planted_report["thresholds"]["match_min"] == DEFAULT_MATCH_MIN
    assert any(w.startswith("LEAK") for w in planted_report["warnings"])
    grid = cv2.imread(planted_report["grid_png"], cv2.IMREAD_GRAYSCALE)
    assert grid is not None and grid.shape[0] >= 128 and grid.shape[1] >= 256
    json.dumps(planted_report)  # serialisable as is


def test_clean_split_has_no_false_pairs_and_a_margin(cohort40, capsys):
    """False pairs on a clean subject split of 40 x 8 similar brains: the report finds none, and when every
    distinct-subject candidate (the search's top 8 per slice among the 312 slices of other subjects) is
    registered and scored, the best stays well under the match threshold."""
    clean40, _ = split_manifest(cohort40, seed=0, group="subject")
    report = leakage_report(clean40, cache=False)
    assert report["max_rate"] == 0.0 and report["pairs"] == [] and report["n_cross_label_pairs"] == 0
    data = image_hashes(clean40.samples)
    subjects = np.array([s.subject_id for s in clean40.samples])
    everyone = np.arange(len(subjects))
    scores, ssims, checked = [], [], 0
    for subject in np.unique(subjects):        # each subject's slices against every other subject's
        found = find_twins(data, everyone[subjects == subject], everyone[subjects != subject], top_k=DEFAULT_TOP_K,
                           max_distance=64, stop="never", keep_rejected=True)
        scores.append(found.score)
        ssims.append(found.ssim)
        checked += found.checked
    scores, ssims = np.concatenate(scores), np.concatenate(ssims)
    n_distinct_pairs = int((subjects[:, None] != subjects[None, :]).sum()) // 2      # unordered pairs
    false_pairs = int(((scores >= DEFAULT_MATCH_MIN) & (ssims >= DEFAULT_SSIM_MIN)).sum())
    assert checked == scores.size == DEFAULT_TOP_K * len(subjects)   # every candidate registered and scored
    assert false_pairs == 0
    assert scores.max() < DEFAULT_MATCH_MIN - 0.05
    with capsys.disabled():
        print(f"\n[leakage] clean 40x8 split: {false_pairs} false pairs / {n_distinct_pairs} distinct-subject pairs; "
              f"{checked} nearest distinct-subject candidates registered, best match {scores.max():.3f} "
              f"< {DEFAULT_MATCH_MIN}")


def test_duplicates_filed_under_two_labels_are_reported(clean, tmp_path, capsys):
    """The same slice in two class folders (a plain copy, and a rotated JPEG copy) is a labelling error the
    report names apart from the split leakage; the clean data has none."""
    tests = [s for s in clean.samples if s.split == "test"]
    first, second = tests[0], next(s for s in tests if s.label != tests[0].label)
    other = [c for c in CLASSES if c not in (first.label, second.label)]
    copy1 = write(tmp_path / other[0] / "copy_of_first.png", read(first.path))
    copy2 = write(tmp_path / other[1] / "copy_of_second.jpg", jpeg(rotate(read(second.path), 6.4), 80))
    samples = list(clean.samples) + [Sample(copy1, other[0], subject_id="X1", split="train"),
                                     Sample(copy2, other[1], subject_id="X2", split="val")]
    report = leakage_report(clean.subset(samples), cache=False, pseudo=False)
    assert report["n_cross_label_pairs"] == 2
    pairs = {frozenset((p["query"], p["match"])): p for p in report["cross_label_pairs"]}
    assert set(pairs) == {frozenset((str(first.path), str(copy1))), frozenset((str(second.path), str(copy2)))}
    row = pairs[frozenset((str(first.path), str(copy1)))]
    assert sorted(row["labels"]) == sorted([first.label, other[0]]) and row["match_score"] > 0.99
    assert any(w.startswith("LABELS: 2") for w in report["warnings"])
    assert report["max_rate"] == 0.0          # a twin under another label is not a same-class split leak
    json.dumps(report)
    from alzaudit.commands.leakage import print_report

    print_report(report)
    printed = "".join(capsys.readouterr().out.split())          # rich wraps long lines
    assert "filedundertwolabels(2pairs)" in printed and "copy_of_first.png" in printed


def test_identical_pixels_are_twins_even_with_nothing_to_match(tmp_path):
    """A blank slice, a flat grey one and a thin strip carry no anatomy to register; byte-identical copies
    of them (here re-saved as BMP) are still duplicates, found by their pixel digest."""
    rng = np.random.default_rng(14)
    images = {"blank": np.zeros((208, 176), np.uint8), "grey": np.full((50, 40), 77, np.uint8),
              "strip": rng.integers(0, 255, (30, 300)).astype(np.uint8)}
    samples = [Sample(write(tmp_path / f"{name}.png", im), CLASSES[0]) for name, im in images.items()]
    samples += [Sample(write(tmp_path / f"copy_{name}.bmp", im), CLASSES[0]) for name, im in images.items()]
    found = find_twins(image_hashes(samples), [3, 4, 5], [0, 1, 2])
    assert sorted(zip(found.query.tolist(), found.match.tolist())) == [(3, 0), (4, 1), (5, 2)]
    assert found.transform == ["identity"] * 3 and np.all(found.score == 1.0)


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
    rng = np.random.default_rng(7)
    augment = [lambda im: im[:, ::-1], lambda im: make_twin(im, rng, "rotate")[0],
               lambda im: make_twin(im, rng, "combo")[0]]
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
    import audit.leakage

    real = audit.leakage.describe_work
    monkeypatch.setattr("audit.leakage.describe_work", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = image_hashes(samples, cache=cache)
    assert calls == [] and np.array_equal(again.phash, first.phash) and np.array_equal(again.dhash, first.dhash)
    assert np.allclose(again.poses, first.poses) and np.allclose(again.thumbs, first.thumbs, rtol=1e-3, atol=0.05)
    write(samples[2].path, read(samples[2].path)[::-1])  # new content, size or mtime changes
    import os
    os.utime(samples[2].path, ns=(1, 1))
    changed = image_hashes(samples, cache=cache)
    assert len(calls) == 1
    assert not np.allclose(changed.thumbs[2], first.thumbs[2], atol=1.0)
    assert np.array_equal(changed.phash[3], first.phash[3])


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_writes_json_and_grid_and_exits_zero(planted, tmp_path, capsys):
    from alzaudit.cli import main

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
    from alzaudit.cli import main

    manifest, expected = planted
    anonymous = manifest.subset(Sample(s.path, s.label) for s in manifest.samples)
    source = write_manifest(anonymous, tmp_path / "anon.csv")
    out = tmp_path / "pseudo_split.csv"
    assert main(["data", "split", str(source), "--group", "pseudo", "--out", str(out)]) == 0
    side = {str(s.path): s.split for s in load_dataset(out).samples}
    assert all(side[q] == side[c] for q, c in expected)


def test_cli_names_a_missing_input(tmp_path, capsys):
    from alzaudit.cli import main

    assert main(["data", "leakage", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


def test_cli_names_a_bad_threshold(planted, capsys):
    from alzaudit.cli import main

    manifest, _ = planted
    assert main(["data", "leakage", str(manifest.root / "manifest.csv"), "--no-cache", "--match-min", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "--match-min" in err and "1.5" in err and len(err.strip().splitlines()) == 1
