"""The synthetic cohort: layout, determinism, ground-truth masks, shortcut marker, CLI errors."""
from __future__ import annotations

import csv
import re
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from alzaudit.cli import main
from model.classes import CLASSES
from model.manifest import load_dataset
from model.synth import plan_cohort, stage_counts, synthesize_cohort
from model.synth_render import MASK_THRESHOLD, OUT_H, OUT_W, marker_box, render_slice
from model.synth_template import load_template

SMALL = dict(subjects=8, slices_per_subject=2, class_balance="balanced", seed=5)
NAME = re.compile(r"^(SYN_\d{4})_slice_(\d{2})\.png$")


def _read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image


@pytest.fixture(scope="module")
def template():
    """The template, loaded with the network cut off: it must come from the nilearn wheel."""
    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    load_template.cache_clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "create_connection", refuse)
        return load_template()


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory, template):
    root = tmp_path_factory.mktemp("synth")
    made = {
        "a": synthesize_cohort(root / "a", progress=False, workers=1, **SMALL),
        "a_again": synthesize_cohort(root / "a_again", progress=False, workers=2, **SMALL),
        "other_seed": synthesize_cohort(root / "b", progress=False, workers=1, **{**SMALL, "seed": 6}),
        "marked": synthesize_cohort(root / "m", progress=False, workers=1, shortcut_marker=1.0, **SMALL),
    }
    return {key: (manifest.root, manifest) for key, manifest in made.items()}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_whatever_the_worker_count(cohorts):
    first, second = _files(cohorts["a"][0]), _files(cohorts["a_again"][0])
    assert len(first) == 3 * 16 + 2  # image, mask and brain mask per slice; manifest.csv and cohort.json
    assert first == second


def test_another_seed_gives_other_images(cohorts):
    first, other = _files(cohorts["a"][0]), _files(cohorts["other_seed"][0])
    pngs = [k for k in first if k.endswith(".png") and not k.startswith(("masks/", "brain_masks/"))]
    differing = [k for k in pngs if other.get(k) != first[k]]
    assert len(differing) == len(pngs)


def test_layout_names_and_manifest_columns(cohorts):
    root, manifest = cohorts["a"]
    with (root / "manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["path", "label", "subject_id", "split", "mask_path", "severity", "slice_index",
                             "slice_z_mm", "brain_mask_path", "synthetic", "shortcut"]
    assert len(rows) == 16
    for row in rows:
        folder, name = row["path"].split("/")
        match = NAME.match(name)
        assert folder == row["label"] and match and match.group(1) == row["subject_id"]
        assert int(match.group(2)) == int(row["slice_index"])
        assert row["mask_path"] == f"masks/{folder}/{name}"
        assert row["brain_mask_path"] == f"brain_masks/{folder}/{name}"
        assert row["synthetic"] == "1" and row["shortcut"] == "0" and row["split"] == ""
        for key in ("path", "mask_path", "brain_mask_path"):
            assert (root / row[key]).is_file()
    # Every stage present with two subjects (balanced), each with two slices at different levels.
    assert manifest.subject_counts() == {c: 2 for c in CLASSES}
    levels = {}
    for row in rows:
        levels.setdefault(row["subject_id"], set()).add(row["slice_z_mm"])
    assert all(len(z) == 2 for z in levels.values())


def test_images_and_masks_are_208_by_176_uint8(cohorts):
    root, manifest = cohorts["a"]
    for sample in manifest:
        for path in (sample.path, sample.mask_path, root / sample.extra["brain_mask_path"]):
            image = _read(path)
            assert image.shape == (OUT_H, OUT_W) == (208, 176) and image.dtype == np.uint8
        assert set(np.unique(_read(sample.mask_path))) <= {0, 255}


def test_load_dataset_gives_back_the_manifest_with_subject_ids(cohorts):
    root, manifest = cohorts["a"]
    loaded = load_dataset(root)
    assert [s.path for s in loaded] == [s.path for s in manifest]
    assert [s.subject_id for s in loaded] == [s.subject_id for s in manifest]
    assert all(s.subject_id and s.subject_id in s.path.name for s in loaded)
    assert all(s.mask_path is not None and s.mask_path.is_file() for s in loaded)
    assert loaded.subjects_known and loaded.has_masks
    assert {s.extra["synthetic"] for s in loaded} == {"1"}


def test_severity_rises_with_the_stage():
    plan = plan_cohort(subjects=40, slices_per_subject=1, class_balance="balanced", seed=1,
                       shortcut_marker=0.0, severity_scale=1.0)
    by_stage = {c: [s.severity for s in plan.subjects if s.stage == c] for c in CLASSES}
    means = [np.mean(by_stage[c]) for c in CLASSES]
    assert means == sorted(means) and means[0] < 0.08 and means[-1] > 0.65
    # Neighbouring stages overlap a little (as clinical stage and atrophy do); stages two apart do not.
    assert max(by_stage["NonDemented"]) < min(by_stage["MildDemented"])
    assert max(by_stage["VeryMildDemented"]) < min(by_stage["ModerateDemented"])
    # Stage order is shuffled over subject numbers: the ID does not give the stage away.
    assert [s.stage for s in plan.subjects[:10]] != sorted(s.stage for s in plan.subjects[:10])


def test_class_balance_kaggle_keeps_proportions_with_two_subjects_minimum():
    assert stage_counts(100, "kaggle") == {"NonDemented": 49, "VeryMildDemented": 35, "MildDemented": 14,
                                           "ModerateDemented": 2}
    assert stage_counts(8, "kaggle") == {c: 2 for c in CLASSES}
    assert stage_counts(10, "balanced") == {"NonDemented": 3, "VeryMildDemented": 3, "MildDemented": 2,
                                            "ModerateDemented": 2}
    assert all(sum(stage_counts(n, "kaggle").values()) == n for n in range(8, 60))


def test_mask_covers_the_pixels_the_atrophy_changed(template):
    plan = plan_cohort(subjects=8, slices_per_subject=2, class_balance="balanced", seed=2,
                       shortcut_marker=0.0, severity_scale=1.0)
    subject = next(s for s in plan.subjects if s.stage == "MildDemented")
    for k in range(2):
        sick = render_slice(template, subject, k)
        healthy = render_slice(template, subject, k, atrophy=0.0)
        diff = np.abs(sick.image.astype(int) - healthy.image.astype(int))
        mask = sick.mask > 0
        changed = diff > MASK_THRESHOLD + 1  # +1: rounding to 8 bits
        assert changed.sum() > 500  # the atrophy is there
        assert mask[changed].mean() > 0.98  # the mask covers what changed ...
        assert (diff[mask] >= MASK_THRESHOLD - 1).mean() > 0.97  # ... and little else
        assert not (healthy.mask > 0).any()  # the healthy twin has nothing planted
        assert np.array_equal(sick.brain, healthy.brain)


def test_mask_grows_with_the_stage_and_nondemented_masks_stay_small(cohorts):
    root, manifest = cohorts["a"]
    fractions: dict[str, list[float]] = {c: [] for c in CLASSES}
    for sample in manifest:
        brain = _read(root / sample.extra["brain_mask_path"]) > 0
        fractions[sample.label].append((_read(sample.mask_path) > 0).sum() / brain.sum())
    assert max(fractions["NonDemented"]) < 0.10  # a little natural-looking atrophy at most
    assert min(fractions["MildDemented"] + fractions["ModerateDemented"]) > 0.05
    means = [np.mean(fractions[c]) for c in CLASSES if fractions[c]]
    assert means == sorted(means)


def test_brain_mask_covers_the_non_background_pixels(cohorts):
    root, manifest = cohorts["a"]
    for sample in manifest:
        image = _read(sample.path)
        brain = _read(root / sample.extra["brain_mask_path"]) > 0
        bright = image > 12
        assert 0.2 < brain.mean() < 0.75
        assert brain[bright].mean() > 0.99
        near = cv2.dilate(brain.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        assert (image[~near] == 0).all()  # skull-stripped: black beyond the brain's edge
        assert (_read(sample.mask_path)[~brain] == 0).all()


def test_shortcut_marker_lies_outside_the_brain_and_encodes_the_class(cohorts):
    plain_root, plain = cohorts["a"]
    root, marked = cohorts["marked"]
    positions = {}
    for sample, unmarked in zip(marked, plain):
        assert sample.extra["shortcut"] == 1
        image, brain = _read(sample.path), _read(root / sample.extra["brain_mask_path"])
        rows, cols = marker_box(sample.label)
        assert (image[rows, cols] == 255).all()
        grown = (slice(rows.start - 3, rows.stop + 3), slice(cols.start - 3, cols.stop + 3))
        assert (brain[grown] == 0).all()
        # Only the marker differs from the unmarked twin, and the masks are the same.
        difference = image != _read(unmarked.path)
        assert difference.any() and not difference[brain > 0].any()
        assert difference.sum() <= (rows.stop - rows.start) * (cols.stop - cols.start)
        assert np.array_equal(_read(sample.mask_path), _read(unmarked.mask_path))
        positions.setdefault(sample.label, set()).add((rows.start, cols.start))
    assert all(len(p) == 1 for p in positions.values())
    assert len(set.union(*positions.values())) == len(CLASSES)
    # Without --shortcut-marker no image carries one.
    for sample in plain:
        image = _read(sample.path)
        assert all((image[marker_box(c)] < 200).all() for c in CLASSES)


def test_partial_marker_fraction_marks_some_images(template, tmp_path):
    manifest = synthesize_cohort(tmp_path / "half", subjects=4, slices_per_subject=6, seed=0,
                                 shortcut_marker=0.5, progress=False, workers=1)
    marked = [int(s.extra["shortcut"]) for s in manifest]
    assert 0 < sum(marked) < len(marked)


@pytest.mark.parametrize("argv, needle", [
    (["--subjects", "-3"], "--subjects"),
    (["--subjects", "abc"], "--subjects"),
    (["--slices-per-subject", "0"], "--slices-per-subject"),
    (["--shortcut-marker", "1.5"], "--shortcut-marker"),
    (["--shortcut-marker", "-0.1"], "--shortcut-marker"),
    (["--class-balance", "uneven"], "--class-balance"),
    (["--severity-scale", "nan"], "--severity-scale"),
    (["--seed", "-1"], "--seed"),
])
def test_bad_cli_arguments_give_one_line_errors(tmp_path, capsys, argv, needle):
    out = tmp_path / "cohort"
    assert main(["data", "synth", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("alzaudit: error:") and needle in err and "\n" not in err
    assert not out.exists()


def test_cli_refuses_a_non_empty_folder_that_is_not_a_cohort(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["data", "synth", "--out", str(tmp_path), "--subjects", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not empty" in err and str(tmp_path) in err and "\n" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_cli_writes_a_cohort_and_replaces_a_previous_one(template, tmp_path, capsys):
    out = tmp_path / "cohort"
    argv = ["data", "synth", "--out", str(out), "--subjects", "4", "--slices-per-subject", "2", "--workers", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Synthesised 8 slices of 4 subjects" in printed and f"{out / 'manifest.csv'}" in printed
    assert main([*argv[:5], "4", "--slices-per-subject", "1", "--quiet", "--seed", "9"]) == 0
    assert len(load_dataset(out)) == 4
    assert len(list(out.rglob("*.png"))) == 3 * 4  # the old cohort's files are gone


def test_importing_the_command_loads_neither_tensorflow_nor_nilearn():
    code = ("import sys, alzaudit.cli, alzaudit.commands.synth, model.synth, model.synth_render; alzaudit.cli.build_parser(); "
            "bad = [m for m in ('tensorflow', 'nilearn', 'keras') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_scanner_confound_codes_the_stage_in_the_scanner_and_nothing_else():
    from model.errors import ParameterError
    from model.synth import CONFOUND_GAIN, plan_cohort

    kwargs = dict(subjects=8, slices_per_subject=2, class_balance="balanced", seed=0, shortcut_marker=0.0,
                  severity_scale=1.0)
    plain, confounded = plan_cohort(**kwargs), plan_cohort(**kwargs, scanner_confound=1.0)
    for a, b in zip(plain.subjects, confounded.subjects):
        assert a.stage == b.stage and a.noise_seeds == b.noise_seeds and a.contrast == b.contrast
        assert abs(np.mean(b.gain) - CONFOUND_GAIN[b.stage]) < 1e-6  # the stage's scanner, exactly
    stages = sorted({s.stage for s in confounded.subjects}, key=CONFOUND_GAIN.get)
    gains = [np.mean([np.mean(s.gain) for s in confounded.subjects if s.stage == st]) for st in stages]
    assert gains == sorted(gains) and len(set(np.round(gains, 3))) == len(stages)
    with pytest.raises(ParameterError, match="^scanner_confound: "):
        plan_cohort(**kwargs, scanner_confound=1.5)
