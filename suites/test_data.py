"""Data checks: leakage across splits, subjects across splits, class coverage, unreadable files."""
import numpy as np
import pytest


@pytest.mark.check("data.leakage_rate")
def test_near_duplicate_leakage(gate, run):
    report = run.leakage
    gate.check("data.leakage_rate", report["max_rate"],
               detail=f"worst split pair; {len(report.get('pairs', []))} twin pair(s) listed in audit.json")


@pytest.mark.check("data.subject_overlap")
def test_subjects_do_not_span_splits(gate, run):
    from model.splits import subject_overlap

    if not run.manifest.subjects_known:
        pytest.skip("subject IDs unknown: subject overlap cannot be checked (see the leakage check)")
    overlap = subject_overlap(run.manifest)
    n = len({s for ids in overlap.values() for s in ids})
    gate.check("data.subject_overlap", n, detail=", ".join(f"{k}: {len(v)}" for k, v in overlap.items()) or "none")


@pytest.mark.check("data.class_coverage")
def test_every_stage_is_present(gate, run):
    present = np.unique(run.labels)
    gate.check("data.class_coverage", len(present), detail=f"{run.config.split} split")


@pytest.mark.check("data.unreadable_fraction")
def test_unreadable_files(gate, run):
    skipped = len(run.manifest.skipped)
    total = skipped + len(run.manifest)
    gate.check("data.unreadable_fraction", skipped / total if total else 0.0, detail=f"{skipped} of {total} files")
