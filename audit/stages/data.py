"""Data stage: near-duplicate leakage, evaluated images the model trained on, and how subjects are split."""
from __future__ import annotations

from model.manifest import Manifest


def leakage(run) -> dict:
    """Near-duplicate twins across splits, pseudo-subjects and cross-label duplicates (``audit.leakage``)."""
    from audit.leakage import leakage_report

    return leakage_report(run.manifest, seed=run.config.seed)


def train_overlap(run) -> dict | None:
    """Evaluated images the model was trained on, by content hash; None when no run manifest is known."""
    from audit.binding import run_manifest_of
    from audit.binding import train_overlap as overlap

    return overlap(run.split, run_manifest_of(run.model_path), run.image_hashes)


def split_grouping(manifest: Manifest) -> dict:
    """How the split keeps subjects apart: subjects per split and those found in more than one split."""
    from model.splits import subject_overlap, subjects_by_split

    per_split = subjects_by_split(manifest.samples)
    shared = {pair: len(ids) for pair, ids in subject_overlap(manifest).items()}
    return {"subjects_known": manifest.subjects_known, "subjects_per_split": {k: len(v) for k, v in per_split.items()},
            "shared_subjects": shared, "subject_level": bool(per_split) and not shared}
