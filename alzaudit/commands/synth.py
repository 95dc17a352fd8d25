"""``alzaudit data synth``: write the synthetic cohort (no TensorFlow; nilearn is imported only when run)."""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from model.errors import AlzAuditError


def register(top, data) -> None:
    p = data.add_parser(
        "synth", help="build a synthetic cohort with planted atrophy, masks and subject IDs (MNI152 template)",
        description="Synthesise axial 176x208 slices in Kaggle class folders from nilearn's bundled MNI152 "
                    "template, with stage-dependent atrophy, ground-truth masks and manifest.csv.")
    p.add_argument("--out", required=True, help="output folder (new, empty, or a previous cohort to replace)")
    # Numbers are parsed in run() so that a bad value gives the CLI's one-line error, not argparse usage.
    p.add_argument("--subjects", default="60", help="number of subjects (default 60)")
    p.add_argument("--slices-per-subject", default="8", help="axial slices per subject, 1-24 (default 8)")
    p.add_argument("--class-balance", default="balanced",
                   help="'balanced' (equal subjects per stage, default) or 'kaggle' (Kaggle proportions, >= 2 each)")
    p.add_argument("--seed", default="0", help="random seed: the same seed gives byte-identical files (default 0)")
    p.add_argument("--shortcut-marker", default="0", metavar="FRACTION",
                   help="fraction of images given a class-coded corner marker, for shortcut tests (default 0)")
    p.add_argument("--severity-scale", default="1.0", help="multiplies the planted atrophy (default 1.0)")
    p.add_argument("--scanner-confound", default="0", metavar="FRACTION",
                   help="pull each subject's scanner gain and blur towards its stage's (0-1), for confound tests "
                        "(default 0)")
    p.add_argument("--workers", default=None, help="processes rendering in parallel (default: up to 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from model.synth import synthesize_cohort

    options = dict(
        subjects=_integer(args.subjects, "--subjects"),
        slices_per_subject=_integer(args.slices_per_subject, "--slices-per-subject"),
        class_balance=str(args.class_balance).strip().lower(),
        seed=_integer(args.seed, "--seed"),
        shortcut_marker=_number(args.shortcut_marker, "--shortcut-marker"),
        severity_scale=_number(args.severity_scale, "--severity-scale"),
        scanner_confound=_number(args.scanner_confound, "--scanner-confound"),
    )
    workers = None if args.workers is None else _integer(args.workers, "--workers")
    if workers is not None and workers < 1:
        raise AlzAuditError(f"--workers: need at least 1, got {args.workers}")
    start = time.perf_counter()
    manifest = synthesize_cohort(args.out, progress=not args.quiet, workers=workers, **options)
    print(summary(manifest, options, time.perf_counter() - start))
    print(f"manifest: {Path(args.out) / 'manifest.csv'}")
    return 0


def summary(manifest, options: dict, seconds: float) -> str:
    """One paragraph: what was written, how it varies by stage, and the knobs used."""
    from model.classes import CLASSES

    subjects = manifest.subject_counts()
    marked = sum(int(s.extra.get("shortcut", 0)) for s in manifest)
    per_class = ", ".join(f"{c} {subjects[c]}" for c in CLASSES)
    marker = (f" A class-coded corner marker is drawn on {marked} of {len(manifest)} images "
              f"(--shortcut-marker {options['shortcut_marker']:g}).") if options["shortcut_marker"] > 0 else ""
    return (f"Synthesised {len(manifest)} slices of {sum(subjects.values())} subjects ({per_class}; "
            f"{options['slices_per_subject']} slices each, seed {options['seed']}) in {seconds:.1f} s into "
            f"{manifest.root}: 176x208 8-bit PNGs from the MNI152 template with stage-dependent atrophy "
            f"(ventricles enlarge, sulci widen, medial-temporal tissue shrinks; severity scale "
            f"{options['severity_scale']:g}), atrophy masks under masks/ and brain masks under brain_masks/."
            f"{marker}" + (f" The scanner's gain and blur follow the stage (--scanner-confound "
                           f"{options['scanner_confound']:g})." if options.get("scanner_confound") else ""))


def _integer(text, option: str) -> int:
    try:
        value = float(str(text).strip())
    except ValueError:
        raise AlzAuditError(f"{option}: '{text}' is not a whole number") from None
    if not math.isfinite(value) or value != int(value):
        raise AlzAuditError(f"{option}: '{text}' is not a whole number")
    return int(value)


def _number(text, option: str) -> float:
    try:
        value = float(str(text).strip())
    except ValueError:
        raise AlzAuditError(f"{option}: '{text}' is not a number") from None
    if not math.isfinite(value):
        raise AlzAuditError(f"{option}: '{text}' is not a finite number")
    return value
