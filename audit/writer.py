"""The one audit.json writer: assemble the document, write its image files, write it atomically, validate.

The gate (``suites/``) decides the checks and hands them here as plain values (``GateOutcome``); every
other block comes from the run through ``audit.serialize``. A block that fails to build is recorded as
null with its error named in ``run.errors``, so the file is always written and always says why.
"""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.schema_io import SCHEMA_VERSION, validate_audit
from audit.serialize import (Artefact, data_section, figures_section, gallery_section, heatmap_sample_section,
                             model_section)
from model.errors import AlzAuditError
from model.fileio import atomic_path, atomic_write_bytes, atomic_write_json

RANDOMIZATION_CHECK = "explanations.randomization_max_similarity"


@dataclass(frozen=True)
class GateOutcome:
    """What the gate decided, as plain values: the verdict, every check (in report order), and the
    figures only the gate measures (throughput) or knows (when and how it was run)."""

    verdict: str
    fail_on_warn: bool
    checks: list[dict]
    started: str
    finished: str
    seed: int
    thresholds_file: str
    command: str | None = None
    throughput: dict | None = None
    strategy: str = "auto"


def write_audit(path: str | Path, run, outcome: GateOutcome) -> Path:
    """Write ``path`` (audit.json) and the files it names beside it; warn on stderr if it fails its schema."""
    path = Path(path)
    sections: dict[str, Any] = {}
    for name, build in (("model", lambda: model_section(run)), ("data", lambda: data_section(run)),
                        ("figures", lambda: figures_section(run)), ("gallery", lambda: gallery_section(run)),
                        ("heatmap_sample", lambda: heatmap_sample_section(run))):
        try:
            sections[name] = write_artefacts(build(), path.parent)
        except Exception as exc:  # noqa: BLE001 - the file is still written; the failure is named in it
            run.errors[name] = f"{type(exc).__name__}: {exc}"
            sections[name] = None
    figures = sections["figures"] or {}
    if outcome.throughput:
        figures["throughput"] = outcome.throughput
    if figures.get("randomization") is not None:
        status = next((c["status"] for c in outcome.checks if c["id"] == RANDOMIZATION_CHECK), None)
        figures["randomization"]["passed"] = None if status is None else status in ("PASS", "WARN")
    sections["figures"] = figures
    if sections["model"] is None:
        sections["model"] = {"path": str(run.model_path), "sha256": None, "classes": list(run.classes)}
    if sections["data"] is None:
        sections["data"] = {"path": str(run.data or run.model_path), "split": run.config.split, "counts": {}}
    sections["run"] = run_section(run, outcome)
    document = {"schema_version": SCHEMA_VERSION, "verdict": outcome.verdict, "fail_on_warn": outcome.fail_on_warn,
                **sections, "checks": list(outcome.checks)}
    atomic_write_json(path, document)
    try:
        validate_audit(json.loads(path.read_text()), source=str(path))
    except AlzAuditError as exc:
        sys.stderr.write(f"alzaudit gate: warning: {exc}\n")
    return path


def figures_document(run, *, compute: bool = False) -> dict:
    """The ``figures`` block alone, its images written under the run's folder (``run_audit``, notebooks)."""
    return write_artefacts(figures_section(run, compute=compute), run.out_dir)


def write_artefacts(value, folder: Path):
    """Write every ``Artefact`` inside ``value`` under ``folder`` and put its relative path in its place."""
    if isinstance(value, Artefact):
        _write(value, Path(folder))
        return value.relative
    if isinstance(value, dict):
        return {k: write_artefacts(v, folder) for k, v in value.items()}
    if isinstance(value, list):
        return [write_artefacts(v, folder) for v in value]
    return value


def _write(artefact: Artefact, folder: Path) -> None:
    import numpy as np

    target = folder / artefact.relative
    if artefact.source is not None:
        atomic_write_bytes(target, Path(artefact.source).read_bytes())
    elif artefact.arrays is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target, suffix=target.suffix) as tmp:
            np.savez_compressed(tmp, **artefact.arrays)
    else:
        import cv2

        image = np.asarray(artefact.image)
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        ok, data = cv2.imencode(".png", image)
        if not ok:
            raise AlzAuditError(f"{artefact.relative}: could not encode PNG")
        atomic_write_bytes(target, data.tobytes())


def run_section(run, outcome: GateOutcome) -> dict:
    """When, where and how the audit ran: versions, device, plan, timings, errors, sample sizes."""
    import keras
    import tensorflow as tf

    from audit.distribute import describe, get_strategy
    from model.train import device_description

    device = device_description()
    return {"started": outcome.started, "finished": outcome.finished, "seed": outcome.seed,
            "distribute": describe(get_strategy(outcome.strategy)),
            "device": {"kind": device["kind"], "name": device["name"]},
            "versions": {"python": platform.python_version(), "tensorflow": tf.__version__,
                         "keras": keras.__version__, "alzaudit": own_version()},
            "git_commit": git_commit(), "thresholds_file": outcome.thresholds_file,
            "thresholds_sha256": file_sha256_or_none(outcome.thresholds_file), "command": outcome.command,
            "timings": {k: round(v, 3) for k, v in run.timings.items()}, "errors": run.errors,
            "plan": run.plan, "sample_sizes": run.config.sample_sizes()}


def file_sha256_or_none(path: str | Path) -> str | None:
    """SHA-256 of a file the audit depends on (the thresholds), so a signed report pins it; None if unreadable."""
    from audit.binding import file_sha256

    try:
        return file_sha256(path)
    except (OSError, AlzAuditError):
        return None


def own_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("alzaudit")
    except Exception:  # noqa: BLE001 - running from a source tree
        return None


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None
