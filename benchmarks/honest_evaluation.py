"""Honest evaluation: the same recipe trained on a leaky slice-level split and on a subject-level split.

Yagis et al. (2021) showed that slice-level splits inflate accuracy (slices of one brain sit in train and
test), and that on *randomly labelled* subjects a slice-level split still scores far above chance. This
script repeats both experiments on the default synthetic cohort with one training recipe for all four
runs (the demo's small backbone and augmentation, trained until it fits its training split: 40 epochs at
96 px, no noise augmentation; 16 slices per subject, 1.2 mm apart as in real slice exports) and prints, per run, the test balanced
accuracy the split *reports* with its subject-bootstrap 95% CI, and for true labels what the same model
scores on subjects nobody has seen (a fresh cohort, another seed): what the model is really worth. The
inflation is the slice-level split's reported score minus the subject-level model's score on those new
subjects (a subject-level test with more subjects than the split's own 20%, so its CI is narrower).

    .venv/bin/python benchmarks/honest_evaluation.py [--subjects 100] [--slices 16] [--epochs 40]
        [--input-size 96] [--augment-noise 0] [--new-subjects 60] [--seed 0] [--out out/honest] [--record]

On 2 cores this takes about an hour (four trainings of ~10-15 minutes).

``--record`` also writes the figures to ``reports/reference/honest_evaluation.json``, which the audit
report quotes ("what a leaky split would have scored") without re-training anything.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from model.classes import CLASSES
from model.evaluate_run import evaluate_model
from model.fileio import atomic_write_json
from model.manifest import load_dataset, write_manifest
from model.splits import split_manifest, subject_overlap
from model.synth import synthesize_cohort
from model.train import TrainConfig, train

RECORD = Path(__file__).resolve().parents[1] / "reports" / "reference" / "honest_evaluation.json"
NEW_COHORT_SEED_OFFSET = 1000  # the unseen cohort: same generator, subjects drawn with another seed
SUBJECTS = 100
RATIOS = (0.6, 0.2, 0.2)  # train/val/test, for the slice-level and the subject-level split alike


def random_subject_labels(manifest, seed: int):
    """Every subject gets a random stage (all its slices share it): nothing real to learn."""
    rng = np.random.default_rng(seed)
    subjects = sorted({s.subject_id for s in manifest.samples})
    label = {s: CLASSES[int(rng.integers(0, len(CLASSES)))] for s in subjects}
    return manifest.subset([replace(s, label=label[s.subject_id]) for s in manifest.samples])


def as_test_split(manifest):
    """Every image of ``manifest`` in the test split (the unseen cohort is all test)."""
    return manifest.subset([replace(s, split="test") for s in manifest.samples])


def _score(metrics: dict) -> dict:
    ci = metrics["ci"].get("balanced_accuracy") if metrics["ci"].get("estimable", True) else None
    return {"balanced_accuracy": round(metrics["balanced_accuracy"], 3),
            "ci": None if ci is None else [round(v, 3) for v in ci], "accuracy": round(metrics["accuracy"], 3),
            "images": metrics["n_images"], "subjects": metrics.get("n_subjects")}


def run_one(name: str, labels: str, group: str, manifest, unseen_csv: Path | None, args, out: Path) -> dict:
    split, _ = split_manifest(manifest, RATIOS, seed=args.seed, group=group)
    csv = write_manifest(split, out / f"{name}.csv")
    run_dir = out / name
    started = time.time()
    model = run_dir / "model.keras"
    if not model.is_file():
        train(TrainConfig(data=str(csv), out=str(run_dir), backbone="small", weights=None, input_size=args.input_size,
                          epochs_phase2=args.epochs, lr_phase2=1e-3, patience=args.epochs, lr_schedule="cosine",
                          augment_noise=args.augment_noise, seed=args.seed, group=group))
    reported = evaluate_model(model, run_dir / "split_manifest.csv", n_resamples=1000, seed=args.seed)
    row = {"run": name, "labels": labels, "split": group, "reported": _score(reported),
           "subjects_shared_between_splits": sum(len(v) for v in subject_overlap(split).values()),
           "train_seconds": round(time.time() - started, 1)}
    if unseen_csv is not None:
        row["new_subjects"] = _score(evaluate_model(model, unseen_csv, n_resamples=1000, seed=args.seed))
    return row


def _fmt(score: dict | None) -> str:
    if not score:
        return "-"
    ci = score["ci"]
    return f"{score['balanced_accuracy']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=SUBJECTS)
    parser.add_argument("--slices", type=int, default=16, help="slices per subject (1.2 mm apart, as in exports)")
    parser.add_argument("--epochs", type=int, default=40, help="long enough to fit the training split")
    parser.add_argument("--input-size", type=int, default=96)
    parser.add_argument("--augment-noise", type=float, default=0.0, help="noise augmentation (demo: 0.05)")
    parser.add_argument("--new-subjects", type=int, default=60, help="size of the unseen cohort (true labels)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/honest")
    parser.add_argument("--record", action="store_true", help=f"write the figures to {RECORD}")
    args = parser.parse_args()
    out = Path(args.out)
    data, unseen = out / "cohort", out / "unseen_cohort"
    if not (data / "manifest.csv").is_file():
        synthesize_cohort(data, subjects=args.subjects, slices_per_subject=args.slices, seed=args.seed)
    if not (unseen / "manifest.csv").is_file():
        synthesize_cohort(unseen, subjects=args.new_subjects, slices_per_subject=args.slices,
                          seed=args.seed + NEW_COHORT_SEED_OFFSET)
    unseen_csv = write_manifest(as_test_split(load_dataset(unseen / "manifest.csv")), out / "unseen_test.csv")
    cohort = load_dataset(data / "manifest.csv")
    shuffled = random_subject_labels(cohort, args.seed)
    rows = [run_one("true_labels_slice_split", "true", "slice", cohort, unseen_csv, args, out),
            run_one("true_labels_subject_split", "true", "subject", cohort, unseen_csv, args, out),
            run_one("random_labels_slice_split", "random", "slice", shuffled, None, args, out),
            run_one("random_labels_subject_split", "random", "subject", shuffled, None, args, out)]
    print(f"{'labels':<7} {'split':<8} {'reported balanced acc [95% CI]':<32} {'on new subjects':<24} {'shared subj.':>12}")
    for r in rows:
        print(f"{r['labels']:<7} {r['split']:<8} {_fmt(r['reported']):<32} {_fmt(r.get('new_subjects')):<24} "
              f"{r['subjects_shared_between_splits']:>12}")
    # The subject-level figure is judged on the unseen cohort: as subject-level as its own test split, but
    # with more subjects, so its CI is narrow enough to compare (the split's own 20 subjects are printed too).
    leaky = rows[0]["reported"]
    honest = rows[1].get("new_subjects") or rows[1]["reported"]
    inflation = leaky["balanced_accuracy"] - honest["balanced_accuracy"]
    overlap = leaky["ci"] is None or honest["ci"] is None or leaky["ci"][0] <= honest["ci"][1]
    print(f"inflation on true labels (slice-level split as reported vs the subject-level model on new subjects): "
          f"{100 * inflation:+.1f} points of balanced accuracy; CIs {'overlap' if overlap else 'do not overlap'}")
    result = {
        "experiment": "benchmarks/honest_evaluation.py", "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "date": _dt.date.today().isoformat(), "machine": f"{platform.machine()}, {platform.system()}",
        "recipe": {"backbone": "small", "input_size": args.input_size, "epochs": args.epochs, "ratios": list(RATIOS)},
        "cohort": {"subjects": args.subjects, "slices_per_subject": args.slices, "seed": args.seed,
                   "new_subjects": args.new_subjects, "options": "defaults of alzaudit data synth"},
        "rows": rows, "inflation_points": round(100 * inflation, 1), "cis_overlap": overlap,
    }
    atomic_write_json(out / "honest_evaluation.json", result)
    if args.record:
        atomic_write_json(RECORD, result)
        print(f"recorded: {RECORD}")


if __name__ == "__main__":
    main()
