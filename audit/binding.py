"""Bind an audit to the model's own split: which images to evaluate, and which of them it trained on.

A model trained by ``alzaudit train`` sits in a run folder with ``config.json`` and the
``split_manifest.csv`` it was trained on. Gating it on a split of our own choosing (a fresh seed, a
swapped manifest) can put its training images into the "test" set, where accuracy measures memory. So:
- with no ``--data``, or ``--data`` without a split, the run's own split is evaluated;
- whatever is evaluated, each image's content hash is looked up among the run's training images
  (``data.train_overlap``), so a copied or renamed training file still counts.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from model.errors import AlzAuditError
from model.manifest import Manifest, load_dataset
from model.splits import DEFAULT_RATIOS, ensure_split

RUN_MANIFEST = "split_manifest.csv"
RUN_CONFIG = "config.json"
TRAINING_SPLITS = ("train",)  # the images the weights were fitted on (val only chose the epoch)


@dataclass
class SplitSource:
    """Where the evaluated split came from, for audit.json and the report."""

    kind: str                       # "run" | "data" | "seed"
    description: str
    run_manifest: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "description": self.description, "run_manifest": self.run_manifest,
                "warnings": list(self.warnings)}


def run_manifest_of(model_path: str | Path) -> Path | None:
    """The run folder's training manifest when the model sits in one (``config.json`` beside it)."""
    folder = Path(model_path).resolve().parent
    manifest = folder / RUN_MANIFEST
    return manifest if (folder / RUN_CONFIG).is_file() and manifest.is_file() else None


def resolve_data(model_path: str | Path, data: str | Path | Manifest | None, *, seed: int = 0) -> tuple[Manifest, SplitSource]:
    """The manifest to evaluate, split, and where its split came from (see the module docstring)."""
    run_manifest = run_manifest_of(model_path)
    if data is None:
        if run_manifest is None:
            raise AlzAuditError(f"{model_path}: no --data given and the model has no run folder "
                                f"({RUN_CONFIG} and {RUN_MANIFEST} beside it); pass --data")
        return load_dataset(run_manifest), SplitSource(
            "run", f"the model's own run split ({run_manifest})", str(run_manifest))
    manifest = data if isinstance(data, Manifest) else load_dataset(data)
    if manifest.has_splits:
        return manifest, SplitSource("data", f"the split given with --data ({_name(data)})",
                                     None if run_manifest is None else str(run_manifest))
    if run_manifest is not None:
        return load_dataset(run_manifest), SplitSource(
            "run", f"the model's own run split ({run_manifest}); --data {_name(data)} has no split column",
            str(run_manifest), [f"--data {_name(data)} has no split: evaluated the split the model was trained "
                                f"with ({run_manifest}) instead of splitting anew"])
    split = ensure_split(manifest, seed=seed)
    return split, SplitSource(
        "seed", f"split here, subject-aware, with seed {seed} and ratios "
                f"{','.join(str(r) for r in DEFAULT_RATIOS)} (no split in --data and no run folder)", None,
        ["no training manifest is known: the model may have been trained on some of the evaluated images"])


def _name(data) -> str:
    return str(data.root if isinstance(data, Manifest) else data)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_hashes(paths) -> list[str | None]:
    """SHA-256 of each file's bytes (None for a file that cannot be read)."""
    out = []
    for path in paths:
        try:
            out.append(file_sha256(path))
        except OSError:
            out.append(None)
    return out


def train_overlap(evaluated: Manifest, run_manifest: str | Path | None,
                  evaluated_hashes: list[str | None] | None = None) -> dict | None:
    """Evaluated images whose bytes equal a training image of the model's run; None when unknown.

    ``evaluated_hashes`` (``content_hashes`` of the evaluated files, when the caller already has them)
    saves reading them twice. Returns ``{"count", "n_evaluated", "n_training", "examples": [{"evaluated",
    "training"}], "run_manifest"}``.
    """
    if run_manifest is None:
        return None
    training = load_dataset(run_manifest)
    if not training.has_splits:
        raise AlzAuditError(f"{run_manifest}: the run's manifest has no split column; cannot tell which images "
                            "the model was trained on")
    train_samples = [s for s in training.samples if s.split in TRAINING_SPLITS]
    by_hash: dict[str, str] = {}
    for sample, digest in zip(train_samples, content_hashes(s.path for s in train_samples)):
        if digest is not None:
            by_hash.setdefault(digest, str(sample.path))
    hits = []
    if evaluated_hashes is None:
        evaluated_hashes = content_hashes(s.path for s in evaluated.samples)
    for sample, digest in zip(evaluated.samples, evaluated_hashes):
        if digest is not None and digest in by_hash:
            hits.append({"evaluated": str(sample.path), "training": by_hash[digest]})
    return {"count": len(hits), "n_evaluated": len(evaluated.samples), "n_training": len(train_samples),
            "examples": hits[:20], "run_manifest": str(run_manifest)}
