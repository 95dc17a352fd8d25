"""Data checks: leakage across splits, subjects across splits, class coverage, unreadable files."""
import numpy as np
import pytest


@pytest.mark.check("data.leakage_rate")
def test_near_duplicate_leakage(gate, run):
    if "train" not in {s.split for s in run.manifest.samples}:
        gate.not_applicable("data.leakage_rate", "the manifest has no train split to search for twins")
    report = run.leakage
    gate.check("data.leakage_rate", report["max_rate"],
               detail=f"worst split pair; {len(report.get('pairs', []))} twin pair(s) listed in audit.json")


@pytest.mark.check("data.subject_overlap")
def test_subjects_do_not_span_splits(gate, run):
    from model.splits import subject_overlap

    if not run.manifest.subjects_known:
        gate.not_applicable("data.subject_overlap", "subject IDs unknown (see the leakage check)")
    overlap = subject_overlap(run.manifest)
    n = len({s for ids in overlap.values() for s in ids})
    gate.check("data.subject_overlap", n, detail=", ".join(f"{k}: {len(v)}" for k, v in overlap.items()) or "none")


@pytest.mark.check("data.class_coverage")
def test_every_stage_is_present(gate, run):
    from model.classes import CLASSES

    present = np.unique(run.labels)
    missing = [CLASSES[i] for i in range(len(CLASSES)) if i not in set(present.tolist())]
    gate.check("data.class_coverage", len(present),
               detail=f"{run.config.split} split" + (f"; absent: {', '.join(missing)}" if missing else ""))


@pytest.mark.check("data.train_overlap")
def test_evaluated_images_were_not_trained_on(gate, run):
    overlap = run.train_overlap
    if overlap is None:
        gate.not_applicable("data.train_overlap", "no training manifest is known (the model has no run folder "
                                                  "with split_manifest.csv)")
    examples = "; ".join(f"{e['evaluated']} = {e['training']}" for e in overlap["examples"][:3])
    gate.check("data.train_overlap", overlap["count"],
               detail=f"{overlap['count']} of {overlap['n_evaluated']} evaluated images are byte-identical to one of "
                      f"the {overlap['n_training']} training images of {overlap['run_manifest']}"
                      + (f", e.g. {examples}" if examples else ""))


@pytest.mark.check("data.unreadable_fraction")
def test_unreadable_files(gate, run):
    skipped = len(run.manifest.skipped)
    total = skipped + len(run.manifest)
    gate.check("data.unreadable_fraction", skipped / total if total else 0.0, detail=f"{skipped} of {total} files")
