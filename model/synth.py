"""A synthetic Alzheimer's-stage cohort with known ground truth, built from the MNI152 template.

Real datasets cannot tell whether an explanation points at the evidence, because nobody marked the
evidence. Here we plant it: each subject gets a stage, a severity drawn from the stage, its own anatomy
(smooth deformation), pose, scanner contrast, bias field and noise, and stage-dependent atrophy
(ventricles balloon, sulci widen, the medial-temporal region shrinks). Each slice comes with a mask of
where the atrophy changed the image and a brain mask; an optional class-correlated corner marker
("shortcut") lets the audit prove it catches a model that cheats. See docs/synthetic_cohort.md.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.classes import CLASSES
from model.errors import AlzAuditError, ParameterError
from model.manifest import MANIFEST_NAME, Manifest, Sample, write_manifest
from model.progress import progress_bar

COHORT_INFO = "cohort.json"
BALANCES = ("balanced", "kaggle")
KAGGLE_COUNTS = (3200, 2240, 896, 64)  # images per class in the Kaggle original set, CLASSES order
# Severity per stage: mean and spread of a normal (|normal| for NonDemented), clipped to [0, 1]. Clinical
# stage and atrophy are only loosely coupled, so neighbouring stages overlap: about 1.7 spreads from each
# mean to the midpoint, i.e. roughly one subject in twelve looks like its neighbouring stage (even a
# model that read the severity perfectly would reach ~0.92 balanced accuracy; docs/synthetic_cohort.md).
STAGE_SEVERITY = {
    "NonDemented": (0.0, 0.05),
    "VeryMildDemented": (0.22, 0.06),
    "MildDemented": (0.48, 0.07),
    "ModerateDemented": (0.78, 0.08),
}
# MNI z (mm) of the first and last slice centre: the lateral ventricles (frontal horns, bodies, atria).
SLICE_RANGE_MM = (6, 24)
MAX_SLICES = 24
_OWN_ENTRIES = {*CLASSES, "masks", "brain_masks", MANIFEST_NAME, COHORT_INFO}


@dataclass(frozen=True)
class CohortPlan:
    """What to generate: one entry per subject, plus the options every slice needs."""

    subjects: tuple  # of model.synth_render.Subject
    shortcut_marker: float


def stage_counts(subjects: int, class_balance: str) -> dict[str, int]:
    """Subjects per stage: equal (``balanced``) or in the Kaggle original proportions, at least 2 each."""
    if class_balance == "balanced":
        base, extra = divmod(subjects, len(CLASSES))
        return {c: base + (i < extra) for i, c in enumerate(CLASSES)}
    minimum = 2
    weights = np.array(KAGGLE_COUNTS, dtype=float) / sum(KAGGLE_COUNTS)
    counts = np.maximum(np.floor(weights * subjects).astype(int), minimum)
    # Largest remainders get the leftovers; an excess (from the minimum) comes off the largest class.
    remainders = weights * subjects - np.floor(weights * subjects)
    for i in np.argsort(-remainders, kind="stable"):
        if counts.sum() >= subjects:
            break
        counts[i] += 1
    while counts.sum() > subjects:
        counts[int(np.argmax(counts))] -= 1
    return dict(zip(CLASSES, (int(c) for c in counts)))


def draw_severity(rng: np.random.Generator, stage: str) -> float:
    """A subject's atrophy severity in [0, 1]: about 0 for NonDemented, rising through the stages."""
    mean, spread = STAGE_SEVERITY[stage]
    value = abs(rng.normal(mean, spread)) if mean == 0 else rng.normal(mean, spread)
    return float(np.clip(value, 0.0, 1.0))


def slice_positions(rng: np.random.Generator, k: int) -> tuple[int, ...]:
    """MNI z (mm) of a subject's k slices: spread over the ventricle range, shifted per subject, distinct."""
    lo, hi = SLICE_RANGE_MM
    centres = np.linspace(lo, hi, k) if k > 1 else np.array([(lo + hi) / 2.0])
    z = np.clip(np.rint(centres + rng.uniform(-2.0, 2.0) + rng.uniform(-0.5, 0.5, k)), lo - 4, hi + 4).astype(int)
    steps = np.arange(k)
    z = np.maximum.accumulate(z - steps) + steps  # strictly increasing: no two slices of one level
    return tuple(int(v) for v in z)


def plan_cohort(*, subjects: int, slices_per_subject: int, class_balance: str, seed: int,
                shortcut_marker: float, severity_scale: float, scanner_confound: float = 0.0) -> CohortPlan:
    """Draw every subject (a pure function of the arguments): the same seed gives the same cohort."""
    from model.synth_render import draw_subject

    _check_options(subjects, slices_per_subject, class_balance, seed, shortcut_marker, severity_scale)
    if not 0.0 <= float(scanner_confound) <= 1.0:
        raise ParameterError("scanner_confound", f"a fraction in [0, 1] is needed, got {scanner_confound}")
    counts = stage_counts(subjects, class_balance)
    stages = [stage for stage in CLASSES for _ in range(counts[stage])]
    # Shuffled, so subject numbers do not give the stage away.
    stages = [stages[i] for i in np.random.default_rng([seed, 0]).permutation(len(stages))]
    drawn = []
    for number, stage in enumerate(stages, start=1):
        rng = np.random.default_rng([seed, 1, number])
        severity = draw_severity(rng, stage)
        z = slice_positions(rng, slices_per_subject)
        subject = draw_subject(rng, f"SYN_{number:04d}", stage, severity, severity_scale, z)
        drawn.append(confound_scanner(subject, scanner_confound) if scanner_confound else subject)
    return CohortPlan(subjects=tuple(drawn), shortcut_marker=float(shortcut_marker))


# A scanner confound, stage by stage: in multi-site data the sicker patients often come from one site (a
# memory clinic's scanner), so brightness and sharpness carry the label. Gain and blur shift by stage.
CONFOUND_GAIN = {"NonDemented": 0.80, "VeryMildDemented": 0.93, "MildDemented": 1.07, "ModerateDemented": 1.20}
CONFOUND_BLUR = {"NonDemented": 0.0, "VeryMildDemented": 0.3, "MildDemented": 0.6, "ModerateDemented": 0.9}


def confound_scanner(subject, strength: float):
    """The subject scanned on its stage's scanner: gain and blur pulled towards the stage's by ``strength``
    (0 = the subject's own draw, 1 = the stage's level), so a model can read the stage from the scanner.
    Applied after the draw, so the random stream (and every other parameter) is unchanged."""
    from dataclasses import replace

    gain = tuple((1 - strength) * g + strength * CONFOUND_GAIN[subject.stage] * (g / np.mean(subject.gain))
                 for g in subject.gain)
    blur = (1 - strength) * subject.blur + strength * CONFOUND_BLUR[subject.stage]
    return replace(subject, gain=tuple(float(g) for g in gain), blur=float(blur))


def synthesize_cohort(out_dir: str | os.PathLike, *, subjects: int = 60, slices_per_subject: int = 8,
                      class_balance: str = "balanced", seed: int = 0, shortcut_marker: float = 0.0,
                      severity_scale: float = 1.0, scanner_confound: float = 0.0, progress: bool = True,
                      workers: int | None = None) -> Manifest:
    """Write a synthetic cohort to ``out_dir`` and return its manifest (also written as manifest.csv).

    ``workers`` processes render subjects in parallel (default: up to 2 for large cohorts); the output
    does not depend on it. An existing cohort in ``out_dir`` is replaced; any other non-empty folder
    is refused.
    """
    plan = plan_cohort(subjects=subjects, slices_per_subject=slices_per_subject, class_balance=class_balance,
                       seed=seed, shortcut_marker=shortcut_marker, severity_scale=severity_scale,
                       scanner_confound=scanner_confound)
    out = _prepare_out_dir(Path(out_dir))
    from model.synth_template import load_template

    load_template()  # once here, inherited by forked workers
    n_images = subjects * slices_per_subject
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if n_images >= 96 else 1
    rows: list[list[dict]] = []
    with progress_bar(progress, len(plan.subjects), "synthesising subjects") as advance:
        if workers <= 1:
            for subject in plan.subjects:
                rows.append(_write_subject(subject, str(out), plan.shortcut_marker))
                advance()
        else:
            with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as pool:
                futures = [pool.submit(_write_subject, s, str(out), plan.shortcut_marker) for s in plan.subjects]
                for future in futures:
                    rows.append(future.result())
                    advance()
    samples = [_sample(out, row) for subject_rows in rows for row in subject_rows]
    manifest = Manifest(root=out.resolve(), samples=samples, layout="manifest")
    from model.fileio import atomic_write_json

    atomic_write_json(out / COHORT_INFO, {
        "generator": "alzaudit data synth", "template": "MNI152 2009 (nilearn, 1 mm)",
        "subjects": subjects, "slices_per_subject": slices_per_subject, "class_balance": class_balance,
        "seed": seed, "shortcut_marker": shortcut_marker, "severity_scale": severity_scale,
        "scanner_confound": scanner_confound,
        "subjects_per_class": stage_counts(subjects, class_balance),
    })
    write_manifest(manifest, out / MANIFEST_NAME)  # last: its presence marks a complete cohort
    return manifest


def image_name(subject_id: str, k: int) -> str:
    return f"{subject_id}_slice_{k:02d}.png"


def _write_subject(subject, out: str, shortcut_marker: float) -> list[dict]:
    """Render and write one subject's slices (runs in a worker); returns one manifest row per slice."""
    import cv2

    from model.fileio import atomic_write_bytes
    from model.synth_render import render_slice
    from model.synth_template import load_template

    template = load_template()
    root = Path(out)
    rows = []
    for k in range(len(subject.z_mm)):
        images = render_slice(template, subject, k, shortcut_marker=shortcut_marker)
        name = image_name(subject.subject_id, k)
        paths = {"path": Path(subject.stage) / name, "mask_path": Path("masks") / subject.stage / name,
                 "brain_mask_path": Path("brain_masks") / subject.stage / name}
        for key, array in (("path", images.image), ("mask_path", images.mask), ("brain_mask_path", images.brain)):
            ok, encoded = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 6])
            if not ok:  # pragma: no cover - OpenCV failure
                raise AlzAuditError(f"{root / paths[key]}: could not encode PNG")
            atomic_write_bytes(root / paths[key], encoded.tobytes())
        rows.append({**{k_: str(v) for k_, v in paths.items()}, "label": subject.stage,
                     "subject_id": subject.subject_id, "severity": round(subject.severity, 4),
                     "slice_index": k, "slice_z_mm": subject.z_mm[k], "shortcut": int(images.marker)})
    return rows


def _sample(root: Path, row: dict) -> Sample:
    return Sample(
        path=(root / row["path"]).resolve(), label=row["label"], subject_id=row["subject_id"],
        mask_path=(root / row["mask_path"]).resolve(),
        extra={"severity": row["severity"], "slice_index": row["slice_index"], "slice_z_mm": row["slice_z_mm"],
               "brain_mask_path": str((root / row["brain_mask_path"]).resolve()), "synthetic": 1,
               "shortcut": row["shortcut"]},
    )


def _check_options(subjects: int, slices_per_subject: int, class_balance: str, seed: int, shortcut_marker: float,
                   severity_scale: float) -> None:
    if class_balance not in BALANCES:
        raise ParameterError("class_balance", f"'{class_balance}' is not one of {', '.join(BALANCES)}")
    minimum = len(CLASSES) if class_balance == "balanced" else 2 * len(CLASSES)
    if not isinstance(subjects, (int, np.integer)) or subjects < minimum:
        raise ParameterError("subjects", f"need at least {minimum} subjects for '{class_balance}' class balance "
                            f"(every stage present), got {subjects}")
    if not isinstance(slices_per_subject, (int, np.integer)) or not 1 <= slices_per_subject <= MAX_SLICES:
        raise ParameterError("slices_per_subject", f"need 1 to {MAX_SLICES} (the ventricle range is "
                            f"{SLICE_RANGE_MM[1] - SLICE_RANGE_MM[0]} mm), got {slices_per_subject}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ParameterError("seed", f"need a non-negative integer, got {seed}")
    if not 0.0 <= float(shortcut_marker) <= 1.0:
        raise ParameterError("shortcut_marker", f"a fraction in [0, 1] is needed, got {shortcut_marker}")
    if not np.isfinite(severity_scale) or not 0.0 <= float(severity_scale) <= 3.0:
        raise ParameterError("severity_scale", f"need a number in [0, 3] (1 = default atrophy), got {severity_scale}")


def is_cohort_dir(path: Path) -> bool:
    """True when ``path`` holds a cohort this generator wrote (its cohort.json names it)."""
    info = path / COHORT_INFO
    try:
        return json.loads(info.read_text(encoding="utf-8")).get("generator") == "alzaudit data synth"
    except (OSError, ValueError, AttributeError):
        return False


def _prepare_out_dir(out: Path) -> Path:
    """An empty (or new) folder, or a previous cohort whose own files are removed first."""
    if out.exists() and not out.is_dir():
        raise AlzAuditError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not is_cohort_dir(out):
            raise AlzAuditError(f"{out}: folder is not empty and holds no synthetic cohort; choose an empty or new folder")
        foreign = sorted(p.name for p in out.iterdir() if p.name not in _OWN_ENTRIES)
        if foreign:
            raise AlzAuditError(f"{out}: holds a previous cohort plus other files ({', '.join(foreign[:3])}); "
                                "choose an empty or new folder")
        for entry in out.iterdir():
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def _pool_context():
    """Fork where it is safe (Linux, TensorFlow not loaded): workers inherit the loaded template."""
    if sys.platform.startswith("linux") and "tensorflow" not in sys.modules:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")
