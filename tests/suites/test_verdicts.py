"""Complete verdicts bound to the model's own split, and a cache that cannot go stale (the gate end to end).

- a `-k` subset is INCOMPLETE with a non-zero exit, every unrun check listed as NOT_RUN;
- a manifest whose test split is the model's training split FAILs ``data.train_overlap``, also when the
  training images were copied under new names; an unsplit --data evaluates the run's own split;
- no run folder: ``train_overlap`` is NOT_APPLICABLE; no train split: leakage is NOT_APPLICABLE;
- a stage missing from the evaluated split FAILs ``class_coverage`` and still gives a valid audit.json and
  a rendered report;
- editing one image in place (same file size) changes the cached predictions.
"""
from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from suites import DEFAULT_THRESHOLDS, SUITES_DIR
from test_gate import FAST_AUDIT

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_folder(oasis_dir, tmp_path_factory) -> Path:
    """A model in a run folder as ``alzaudit train`` leaves it: model.keras, config.json, split_manifest.csv."""
    from model.manifest import index_dataset, write_manifest
    from model.network import build_classifier
    from model.splits import split_manifest

    folder = tmp_path_factory.mktemp("run")
    split, _ = split_manifest(index_dataset(oasis_dir), seed=0)
    write_manifest(split, folder / "split_manifest.csv")
    (folder / "config.json").write_text(json.dumps({"config": {"backbone": "small", "input_size": 32}}))
    build_classifier("small", None, 32, seed=0).save(folder / "model.keras")
    return folder


def _thresholds(tmp_path: Path) -> Path:
    path = tmp_path / "t.toml"
    path.write_text(DEFAULT_THRESHOLDS.read_text().split("[audit]")[0] + FAST_AUDIT)
    return path


def gate(pytester, tmp_path, model, data, *extra):
    out = tmp_path / "audit"
    args = [str(SUITES_DIR), "--model", str(model), "--audit-out", str(out), "--thresholds", str(_thresholds(tmp_path)),
            "-p", "no:cacheprovider", "-q", "--benchmark-disable-gc", *extra]
    if data is not None:
        args += ["--data", str(data)]
    result = pytester.runpytest_inprocess(*args)
    document = json.loads((out / "audit.json").read_text())
    from audit.schema_io import validate_audit

    validate_audit(document)
    return result, document, {c["id"]: c for c in document["checks"]}


def test_a_k_subset_is_incomplete_and_exits_non_zero(pytester, run_folder, tmp_path):
    from suites.catalog import expected_check_ids
    from suites.thresholds import load_thresholds

    result, document, checks = gate(pytester, tmp_path, run_folder / "model.keras", None,
                                    "-k", "every_stage or subjects_do_not_span")
    ran = {k: c["status"] for k, c in checks.items() if c["status"] != "NOT_RUN"}
    assert ran == {"data.class_coverage": "PASS", "data.subject_overlap": "PASS"}
    assert document["verdict"] == "INCOMPLETE" and result.ret != 0
    expected = expected_check_ids(load_thresholds().sigmas, "cpu")
    assert set(checks) >= set(expected)  # every check of the catalog appears
    assert "deselected" in checks["explanations.localization_energy"]["message"]


def test_the_models_training_split_fails_train_overlap(pytester, run_folder, tmp_path):
    """The run's manifest with train and test swapped: high accuracy would mean memory."""
    rows = list(csv.DictReader(open(run_folder / "split_manifest.csv")))
    for row in rows:
        row["split"] = {"train": "test", "test": "train"}.get(row["split"], row["split"])
        row["path"] = str((run_folder / row["path"]).resolve())
    swapped = tmp_path / "swapped.csv"
    with open(swapped, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result, document, checks = gate(pytester, tmp_path, run_folder / "model.keras", swapped, "-k", "data")
    overlap = checks["data.train_overlap"]
    n_test = sum(1 for r in rows if r["split"] == "test")
    assert overlap["status"] == "FAIL" and overlap["value"] == n_test and result.ret == 1
    assert document["data"]["split_source"]["kind"] == "data"


def test_a_renamed_copy_of_a_training_image_still_counts(pytester, run_folder, tmp_path):
    from model.manifest import load_dataset, write_manifest

    manifest = load_dataset(run_folder / "split_manifest.csv")
    train = [s for s in manifest.samples if s.split == "train"]
    test = [s for s in manifest.samples if s.split == "test"]
    copy = tmp_path / "copied" / "renamed_slice.jpg"
    copy.parent.mkdir()
    shutil.copyfile(train[0].path, copy)
    # one evaluated image is a renamed copy of a training image
    manifest.samples = [replace(s, path=copy) if s is test[0] else s for s in manifest.samples]
    data = write_manifest(manifest, tmp_path / "with_copy.csv")
    _, _, checks = gate(pytester, tmp_path, run_folder / "model.keras", data, "-k", "not_trained_on")
    assert checks["data.train_overlap"]["status"] == "FAIL" and checks["data.train_overlap"]["value"] == 1
    assert "renamed_slice.jpg" in checks["data.train_overlap"]["message"]


def test_unsplit_data_is_evaluated_on_the_runs_own_split(pytester, run_folder, oasis_dir, tmp_path):
    _, document, checks = gate(pytester, tmp_path, run_folder / "model.keras", oasis_dir, "-k", "data",
                               "--seed", "3")
    assert document["data"]["split_source"]["kind"] == "run"
    assert checks["data.train_overlap"]["status"] == "PASS" and checks["data.train_overlap"]["value"] == 0
    run_test = sum(1 for r in csv.DictReader(open(run_folder / "split_manifest.csv")) if r["split"] == "test")
    assert sum(document["data"]["counts"]["test"].values()) == run_test


def test_without_a_run_folder_train_overlap_is_not_applicable(pytester, run_folder, oasis_dir, tmp_path):
    model = tmp_path / "loose.keras"
    shutil.copyfile(run_folder / "model.keras", model)
    _, document, checks = gate(pytester, tmp_path, model, oasis_dir, "-k", "data")
    assert checks["data.train_overlap"]["status"] == "NOT_APPLICABLE"
    assert "no training manifest" in checks["data.train_overlap"]["message"]
    assert document["data"]["split_source"]["kind"] == "seed"


def test_leakage_without_a_train_split_is_not_applicable(pytester, run_folder, tmp_path):
    from model.manifest import load_dataset, write_manifest

    manifest = load_dataset(run_folder / "split_manifest.csv")
    manifest.samples = [replace(s, split="test" if s.split == "test" else "val") for s in manifest.samples]
    data = write_manifest(manifest, tmp_path / "no_train.csv")
    model = tmp_path / "loose.keras"
    shutil.copyfile(run_folder / "model.keras", model)
    _, _, checks = gate(pytester, tmp_path, model, data, "-k", "leakage")
    assert checks["data.leakage_rate"]["status"] == "NOT_APPLICABLE" and checks["data.leakage_rate"]["value"] is None


def test_a_missing_stage_fails_class_coverage_and_still_renders(pytester, run_folder, tmp_path):
    from model.manifest import load_dataset, write_manifest
    from reports import render_report

    manifest = load_dataset(run_folder / "split_manifest.csv")
    manifest.samples = [s for s in manifest.samples if not (s.split == "test" and s.label == "ModerateDemented")]
    data = write_manifest(manifest, tmp_path / "missing_stage.csv")
    result, document, checks = gate(pytester, tmp_path, run_folder / "model.keras", data,
                                    "-k", "performance or every_stage")
    assert checks["data.class_coverage"]["status"] == "FAIL" and "ModerateDemented" in checks["data.class_coverage"][
        "message"]
    assert document["figures"]["performance"]["roc"]["ModerateDemented"]["estimable"] is False
    written = render_report(tmp_path / "audit" / "audit.json", tmp_path / "audit", pdf=False)
    html = Path(written["html"]).read_text()
    assert "INCOMPLETE" in html or "FAIL" in html
    assert "not estimable" in html


def test_editing_one_image_in_place_changes_the_cached_predictions(run_folder, tmp_path):
    import cv2

    from audit.runner import AuditConfig, AuditRun
    from model.manifest import load_dataset, write_manifest

    manifest = load_dataset(run_folder / "split_manifest.csv")
    data_dir = tmp_path / "data"
    samples = []
    for s in manifest.samples:  # uncompressed PNGs: any edit keeps the file size
        target = data_dir / f"{s.path.stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), cv2.imread(str(s.path), cv2.IMREAD_GRAYSCALE), [cv2.IMWRITE_PNG_COMPRESSION, 0])
        samples.append(replace(s, path=target))
    manifest.samples = samples
    csv_path = write_manifest(manifest, data_dir / "manifest.csv")
    model = run_folder / "model.keras"
    config = AuditConfig(progress=False)
    before = AuditRun(model, csv_path, tmp_path / "out", config).probs
    edited = load_dataset(csv_path).split("test").samples[0].path
    size = edited.stat().st_size
    image = cv2.imread(str(edited), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(edited), 255 - image, [cv2.IMWRITE_PNG_COMPRESSION, 0])
    assert edited.stat().st_size == size
    after = AuditRun(model, csv_path, tmp_path / "out", config).probs
    assert not np.allclose(before[0], after[0]) and np.allclose(before[1:], after[1:], atol=1e-5)
    assert len(list((tmp_path / "out" / "cache").glob("probs-*.npy"))) == 2
