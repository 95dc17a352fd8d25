"""Honest evaluation: the same small CNN trained on a leaky slice-level split and on a subject-level split.

Yagis et al. (2021) showed slice-level splits inflate accuracy, and that on *randomly labelled* subjects a
slice-level split still scores far above chance. This script repeats both experiments on the synthetic
cohort, with one training budget for all four runs, and prints test balanced accuracies:

    .venv/bin/python benchmarks/honest_evaluation.py [--subjects 60] [--slices 8] [--epochs 12] [--out out/honest]
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from model.classes import CLASSES
from model.evaluate_run import evaluate_model
from model.manifest import load_dataset, write_manifest
from model.splits import split_manifest, subject_overlap
from model.synth import synthesize_cohort
from model.train import TrainConfig, train


def random_subject_labels(manifest, seed: int):
    """Every subject gets a random stage (all its slices share it): nothing real to learn."""
    rng = np.random.default_rng(seed)
    subjects = sorted({s.subject_id for s in manifest.samples})
    label = {s: CLASSES[int(rng.integers(0, len(CLASSES)))] for s in subjects}
    return manifest.subset([replace(s, label=label[s.subject_id]) for s in manifest.samples])


def run_one(name: str, manifest, group: str, args, out: Path) -> dict:
    split, _ = split_manifest(manifest, seed=args.seed, group=group)
    csv = write_manifest(split, out / f"{name}.csv")
    run_dir = out / name
    started = time.time()
    model = run_dir / "model.keras"
    if not model.is_file():
        train(TrainConfig(data=str(csv), out=str(run_dir), backbone="small", weights=None, input_size=args.input_size,
                          epochs_phase2=args.epochs, lr_phase2=1e-3, patience=args.epochs, lr_schedule="cosine",
                          augment_noise=0.05, seed=args.seed))
    metrics = evaluate_model(model, run_dir / "split_manifest.csv", n_resamples=200, seed=args.seed)
    overlap = sum(len(v) for v in subject_overlap(split).values())
    return {"run": name, "split": group, "test_images": metrics["n_images"],
            "balanced_accuracy": round(metrics["balanced_accuracy"], 3), "accuracy": round(metrics["accuracy"], 3),
            "subjects_shared_between_splits": overlap, "train_seconds": round(time.time() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=60)
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--input-size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/honest")
    args = parser.parse_args()
    out = Path(args.out)
    data = out / "cohort"
    if not (data / "manifest.csv").is_file():
        synthesize_cohort(data, subjects=args.subjects, slices_per_subject=args.slices, seed=args.seed)
    cohort = load_dataset(data / "manifest.csv")
    shuffled = random_subject_labels(cohort, args.seed)
    rows = [run_one("true_labels_slice_split", cohort, "slice", args, out),
            run_one("true_labels_subject_split", cohort, "subject", args, out),
            run_one("random_labels_slice_split", shuffled, "slice", args, out),
            run_one("random_labels_subject_split", shuffled, "subject", args, out)]
    print(f"{'run':<30} {'split':<8} {'bal. acc':>8} {'acc':>6} {'shared subj.':>12} {'s':>6}")
    for r in rows:
        print(f"{r['run']:<30} {r['split']:<8} {r['balanced_accuracy']:>8} {r['accuracy']:>6} "
              f"{r['subjects_shared_between_splits']:>12} {r['train_seconds']:>6}")
    (out / "honest_evaluation.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
