"""The dataset layer: aliases, subject IDs, layouts, splits, manifest round-trip and bad input."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from model.classes import CLASSES, canonical_class
from model.errors import AlzAuditError
from model.manifest import (Manifest, Sample, index_dataset, load_dataset, parse_subject_id, read_manifest,
                            write_manifest)
from model.splits import split_manifest, subject_overlap

from conftest import make_oasis_like, toy_slice, write_png


@pytest.mark.parametrize("name, expected", [
    ("NonDemented", "NonDemented"), ("Non Demented", "NonDemented"), ("Very mild Dementia", "VeryMildDemented"),
    ("VeryMildDemented", "VeryMildDemented"), ("Mild_Demented", "MildDemented"), ("Mild Dementia", "MildDemented"),
    ("Moderate Dementia", "ModerateDemented"), ("ModerateDemented", "ModerateDemented"),
    ("masks", None), ("Demented", None), ("", None)])
def test_aliases_map_onto_the_four_stages(name, expected):
    assert canonical_class(name) == expected


@pytest.mark.parametrize("filename, subject", [
    ("OAS1_0028_MR1_mpr-1_145.jpg", "OAS1_0028"), ("oas1_0001_MR2_mpr-3_100.png", "OAS1_0001"),
    ("OAS2_0103_MR1.jpg", "OAS2_0103"), ("27 (10).jpg", None), ("nonDem0.jpg", None),
    ("3c0e7a1e-5b8f-4bb0-9f65-2a9b.jpg", None), ("ADNI_002_S_0295_slice3.png", "002_S_0295")])
def test_subject_ids_are_parsed_from_file_names(filename, subject):
    assert parse_subject_id(filename) == subject


def test_oasis_layout_is_indexed_with_subjects(oasis_dir):
    manifest = index_dataset(oasis_dir)
    assert manifest.layout == "oasis"
    assert len(manifest) == 4 * 4 * 3
    assert manifest.subjects_known
    assert manifest.subject_counts() == {c: 4 for c in CLASSES}
    assert {s.extra["height"] for s in manifest} == {52}


def test_manifest_round_trip(oasis_dir, tmp_path):
    manifest, _ = split_manifest(index_dataset(oasis_dir), seed=3)
    path = write_manifest(manifest, tmp_path / "m.csv")
    again = read_manifest(path)
    assert [(s.path, s.label, s.subject_id, s.split) for s in again] == \
           [(s.path, s.label, s.subject_id, s.split) for s in manifest]
    assert again.content_hash() == manifest.content_hash()


def test_split_folders_layout(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for i, c in enumerate(CLASSES):
            write_png(tmp_path / split / c / f"{split}_{c}.png", toy_slice(i, rng))
    manifest = index_dataset(tmp_path)
    assert manifest.layout == "split-folders"
    assert manifest.has_splits and sorted({s.split for s in manifest}) == ["test", "train", "val"]
    assert not manifest.subjects_known


def test_kaggle_augmented_layout_tags_the_source(tmp_path):
    rng = np.random.default_rng(0)
    for source in ("OriginalDataset", "AugmentedAlzheimerDataset"):
        for i, c in enumerate(CLASSES):
            write_png(tmp_path / source / c / "27 (10).jpg", toy_slice(i, rng))
    manifest = index_dataset(tmp_path)
    assert manifest.layout == "kaggle-augmented"
    assert sorted({s.extra["source"] for s in manifest}) == ["AugmentedAlzheimerDataset", "OriginalDataset"]
    only = index_dataset(tmp_path, source="OriginalDataset")
    assert len(only) == 4


def test_wrapped_class_folders_are_found(tmp_path):
    make_oasis_like(tmp_path / "Alzheimer_s Dataset", subjects_per_class=1, slices=1)
    assert len(index_dataset(tmp_path)) == 4


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n_subjects=st.integers(1, 12), slices=st.integers(1, 4))
def test_subject_split_never_puts_one_subject_in_two_splits(seed, n_subjects, slices):
    rng = np.random.default_rng(seed)
    samples = [Sample(path=__import__("pathlib").Path(f"/x/s{s}_{k}.png"), label=CLASSES[int(rng.integers(0, 4))
                      if k == 0 else 0], subject_id=f"S{s}") for s in range(n_subjects) for k in range(slices)]
    # all slices of a subject share a label
    samples = [Sample(path=x.path, label=samples[(i // slices) * slices].label, subject_id=x.subject_id)
               for i, x in enumerate(samples)]
    split, report = split_manifest(Manifest(root=__import__("pathlib").Path("/x"), samples=samples), seed=seed)
    assert subject_overlap(split) == {}
    assert all(s.split in ("train", "val", "test") for s in split)
    assert report.group_kind == "subject"


def test_split_is_seeded_and_stratified(oasis_dir):
    manifest = index_dataset(oasis_dir)
    a, _ = split_manifest(manifest, seed=1)
    b, _ = split_manifest(manifest, seed=1)
    c, _ = split_manifest(manifest, seed=2)
    assert [s.split for s in a] == [s.split for s in b]
    assert [s.split for s in a] != [s.split for s in c]
    # 4 subjects per class at 0.7/0.15/0.15: every class has a test subject.
    assert {s.label for s in a if s.split == "test"} == set(CLASSES)


def test_slice_split_of_subject_data_leaks(oasis_dir):
    split, report = split_manifest(index_dataset(oasis_dir), seed=0, group="slice")
    assert subject_overlap(split)  # neighbouring slices of one subject land on both sides
    assert any("leaky" in w for w in report.warnings)


def test_unknown_subjects_are_flagged_loudly(tmp_path):
    rng = np.random.default_rng(0)
    for i, c in enumerate(CLASSES):
        for k in range(3):
            write_png(tmp_path / c / f"{k}.png", toy_slice(i, rng))
    _, report = split_manifest(index_dataset(tmp_path), seed=0)
    assert report.group_kind == "slice"
    assert any("NO SUBJECT IDs" in w for w in report.warnings)


# ------------------------------------------------------------------------------------------ bad input
def test_corrupt_and_non_image_files_are_listed_not_fatal(oasis_dir, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(oasis_dir, root)
    (root / "Non Demented" / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    (root / "Non Demented" / "empty.png").write_bytes(b"")
    (root / "Non Demented" / "notes.txt").write_text("hello")
    manifest = index_dataset(root)
    reasons = {p.split("/")[-1]: r for p, r in manifest.skipped}
    assert set(reasons) == {"broken.jpg", "empty.png", "notes.txt"}
    assert "corrupt" in reasons["broken.jpg"] and "not an image" in reasons["notes.txt"]
    assert len(manifest) == 48
    assert any("skipped" in w for w in manifest.warnings)


def test_empty_class_folder_is_a_warning(tmp_path):
    make_oasis_like(tmp_path, subjects_per_class=1, slices=1)
    shutil.rmtree(tmp_path / "Moderate Dementia")
    (tmp_path / "Moderate Dementia").mkdir()
    manifest = index_dataset(tmp_path)
    assert any("is empty" in w for w in manifest.warnings)


def test_unknown_class_folder_is_a_one_line_error(tmp_path):
    make_oasis_like(tmp_path, subjects_per_class=1, slices=1)
    (tmp_path / "Dementedish").mkdir()
    with pytest.raises(AlzAuditError) as err:
        index_dataset(tmp_path)
    assert "Dementedish" in str(err.value) and "\n" not in str(err.value)


def test_missing_folder_and_one_class(tmp_path):
    with pytest.raises(AlzAuditError, match="not found"):
        index_dataset(tmp_path / "nope")
    write_png(tmp_path / "one" / "NonDemented" / "a.png", toy_slice(0, np.random.default_rng(0)))
    manifest = index_dataset(tmp_path / "one")
    assert any("only one class" in w for w in manifest.warnings)


def test_folder_with_only_corrupt_images_is_an_error(tmp_path):
    (tmp_path / "NonDemented").mkdir()
    (tmp_path / "NonDemented" / "x.png").write_bytes(b"garbage")
    with pytest.raises(AlzAuditError, match="could be read"):
        index_dataset(tmp_path)


def test_manifest_with_unknown_class_or_missing_files(tmp_path, oasis_dir):
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nx.png,Alien\n")
    with pytest.raises(AlzAuditError, match="unknown class 'Alien'"):
        read_manifest(bad)
    some = next(iter(index_dataset(oasis_dir)))
    ok = tmp_path / "ok.csv"
    ok.write_text(f"path,label\n{some.path},NonDemented\nmissing.png,NonDemented\n")
    manifest = load_dataset(ok)
    assert len(manifest) == 1 and manifest.skipped[0][1].startswith("listed in the manifest")


def test_cli_data_commands_print_one_line_errors(tmp_path, capsys):
    from alzaudit.cli import main

    assert main(["data", "summary", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("alzaudit: error:") and "not found" in err and "\n" not in err


def test_cli_index_split_summary(oasis_dir, tmp_path, capsys):
    from alzaudit.cli import main

    out = tmp_path / "m.csv"
    assert main(["data", "index", str(oasis_dir), "--out", str(out)]) == 0
    assert main(["data", "split", str(out), "--out", str(tmp_path / "s.csv"), "--seed", "1"]) == 0
    assert main(["data", "summary", str(tmp_path / "s.csv")]) == 0
    text = capsys.readouterr().out
    assert "subjects" in text and "test" in text
    assert read_manifest(tmp_path / "s.csv").has_splits


def test_cli_help_does_not_import_tensorflow():
    import subprocess
    import sys

    code = ("import sys; from alzaudit.cli import build_parser; build_parser(); "
            "from alzaudit.cli import main; "
            "sys.exit(1 if 'tensorflow' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ------------------------------------------------------------------------------------- portable manifests
def _masked_project(root: Path) -> Manifest:
    """An OASIS-like dataset under ``root/data`` whose samples carry a mask and a brain mask file."""
    manifest, _ = split_manifest(index_dataset(make_oasis_like(root / "data", subjects_per_class=2, slices=2)), seed=0)
    samples = []
    for s in manifest:
        mask = write_png(root / "data" / "masks" / s.path.parent.name / s.path.name.replace(".jpg", ".png"),
                         np.full((52, 44), 255, np.uint8))
        brain = write_png(root / "data" / "brain_masks" / s.path.name.replace(".jpg", ".png"),
                          np.full((52, 44), 255, np.uint8))
        samples.append(Sample(path=s.path, label=s.label, subject_id=s.subject_id, split=s.split, mask_path=mask,
                              extra={"brain_mask_path": str(brain), "height": 52}))
    return manifest.subset(samples)


def _assert_loads(csv_path: Path, n: int) -> None:
    from model.pipeline import load_masks, load_slices

    manifest = read_manifest(csv_path)
    assert len(manifest) == n and not manifest.skipped and manifest.has_splits
    assert all(s.path.is_file() and s.mask_path.is_file() and Path(s.extra["brain_mask_path"]).is_file()
               for s in manifest)
    assert load_slices(manifest.samples, (52, 44)).shape[0] == n
    assert load_masks(manifest.samples, (52, 44), column="brain_mask_path").all()


def test_manifests_are_written_relative_and_survive_a_move(tmp_path):
    project = tmp_path / "project"
    manifest = _masked_project(project)
    inside = write_manifest(manifest, project / "data" / "split_manifest.csv")
    outside = write_manifest(manifest, project / "run" / "split_manifest.csv")  # like training's run folder
    for csv_path in (inside, outside):
        text = csv_path.read_text()
        assert str(tmp_path) not in text and "\\" not in text
    assert "\nNon Demented/OAS1_0001_MR1_mpr-1_100.jpg," in inside.read_text()
    assert ",masks/Non Demented/OAS1_0001_MR1_mpr-1_100.png,brain_masks/OAS1_0001_MR1_mpr-1_100.png," in inside.read_text()
    assert "\n../data/Non Demented/OAS1_0001_MR1_mpr-1_100.jpg," in outside.read_text()

    moved = tmp_path / "elsewhere" / "deeper"
    moved.parent.mkdir()
    shutil.move(str(project), str(moved))
    assert not project.exists()
    _assert_loads(moved / "data" / "split_manifest.csv", len(manifest))
    _assert_loads(moved / "run" / "split_manifest.csv", len(manifest))
    copied = tmp_path / "copy_of_data"
    shutil.copytree(moved / "data", copied)
    shutil.rmtree(moved / "data")
    _assert_loads(copied / "split_manifest.csv", len(manifest))


def test_training_split_manifest_survives_moving_the_run_with_its_data(tmp_path):
    from model.train import TrainConfig, prepare_split

    project = tmp_path / "project"
    make_oasis_like(project / "data", subjects_per_class=4, slices=1)
    prepare_split(TrainConfig(data=str(project / "data"), out=str(project / "run")), project / "run")
    shutil.move(str(project), str(tmp_path / "moved"))
    again = prepare_split(TrainConfig(data="no/longer/here", out="x"), tmp_path / "moved" / "run")
    assert len(again) == 16 and all(s.path.is_file() for s in again)


def test_old_absolute_manifests_still_load(tmp_path):
    manifest = _masked_project(tmp_path)
    rows = ["path,label,subject_id,split,mask_path,brain_mask_path"]
    rows += [f"{s.path},{s.label},{s.subject_id},{s.split},{s.mask_path},{s.extra['brain_mask_path']}" for s in manifest]
    old = tmp_path / "elsewhere" / "old_manifest.csv"
    old.parent.mkdir()
    old.write_text("\n".join(rows) + "\n")
    _assert_loads(old, len(manifest))
    # Re-written by this version, the same manifest becomes relative (and still loads).
    rewritten = write_manifest(read_manifest(old), old)
    assert str(tmp_path) not in rewritten.read_text()
    _assert_loads(rewritten, len(manifest))


def test_a_path_on_another_drive_stays_absolute(tmp_path, monkeypatch):
    import os

    from model import manifest as manifest_module

    def no_relative_path(*args):
        raise ValueError("path is on mount 'D:', start on mount 'C:'")

    monkeypatch.setattr(os.path, "relpath", no_relative_path)
    target = tmp_path / "a" / "x.png"
    assert manifest_module._relative(target, tmp_path / "b") == target.as_posix()
    assert manifest_module._relative(target, tmp_path) == "a/x.png"  # inside the folder: no relpath needed


def test_flip_augmentation_only_mirrors_left_right_when_asked():
    """The demo recipe's 'horizontal' keeps a slice's front at the front; the reference method flips both ways."""
    from model.errors import ParameterError
    from model.pipeline import augmenter

    def flip_modes(flip: str) -> list[str]:
        return [layer.mode for layer in augmenter(0, 0.0, flip).layers if type(layer).__name__ == "RandomFlip"]

    assert flip_modes("horizontal") == ["horizontal"]
    assert flip_modes("horizontal_and_vertical") == ["horizontal_and_vertical"]
    assert flip_modes("none") == []
    with pytest.raises(ParameterError, match="flip"):
        augmenter(0, 0.0, "diagonal")


def test_scanner_augmentation_changes_the_brain_and_keeps_the_background_black():
    import tensorflow as tf

    from model.pipeline import augmenter

    image = np.zeros((4, 32, 32, 1), np.float32)
    image[:, 8:24, 8:24] = 120.0
    out = np.asarray(augmenter(0, 0.0, "none", intensity=True)(tf.constant(image), training=True))
    assert np.all(out[:, :4, :4] == 0.0)                                  # background stays black
    brain = out[:, 12:20, 12:20]
    assert not np.allclose(brain, 120.0, atol=1.0)                        # the scan changed ...
    assert np.all((brain > 40.0) & (brain < 255.0))                       # ... within a scanner's range
    assert len({round(float(b.mean()), 1) for b in brain}) > 1            # differently for each image
