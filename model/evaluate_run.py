"""Evaluate a saved model on one split of a dataset: predictions.csv, metrics.json, a terminal report."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from model.classes import CLASSES
from model.contract import ModelContract, parse_classes, read_contract
from model.evaluate import Predictions, evaluate_predictions, predict
from model.fileio import atomic_write_json, atomic_write_text
from model.manifest import Manifest, load_dataset
from model.pipeline import load_slices
from model.splits import ensure_split


def predict_manifest(model, manifest: Manifest, contract: ModelContract, *, batch_size: int = 64,
                     images: np.ndarray | None = None) -> tuple[Predictions, np.ndarray]:
    """Canonical-order probabilities for every sample, and the uint8 slices used."""
    if images is None:
        images = load_slices(manifest.samples, (contract.height, contract.width), progress=True)
    probs = predict(model, contract.prepare(images), batch_size=batch_size)[:, contract.to_canonical]
    pred = Predictions(paths=[str(s.path) for s in manifest.samples],
                       subjects=[s.subject_id for s in manifest.samples],
                       y_true=np.array(manifest.label_indices()), probs=probs)
    return pred, images


def write_predictions(pred: Predictions, path: Path) -> None:
    """One row per image. Paths stay as the manifest resolved them (absolute): the file is a record for
    people and other tools, never read back by alzaudit, and its folder has no fixed place beside the data."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "subject_id", "true", "predicted", *[f"p_{c}" for c in CLASSES]])
    for i, p in enumerate(pred.paths):
        writer.writerow([p, pred.subjects[i] or "", CLASSES[pred.y_true[i]], CLASSES[pred.y_pred[i]],
                         *[f"{v:.6f}" for v in pred.probs[i]]])
    atomic_write_text(path, buffer.getvalue())


def evaluate_model(model_path, data, *, split: str = "test", out_dir=None, seed: int = 0,
                   input_scale: float = 255.0, classes: str | None = None, unsafe: bool = False,
                   n_resamples: int = 1000) -> dict:
    from model.network import load_model

    model = load_model(model_path, unsafe=unsafe)
    contract = read_contract(model, input_scale=input_scale, classes=parse_classes(classes), source=str(model_path))
    manifest = ensure_split(load_dataset(data), seed=seed).split(split)
    pred, _ = predict_manifest(model, manifest, contract)
    metrics = evaluate_predictions(pred, n_resamples=n_resamples, seed=seed)
    metrics.update(split=split, model=str(model_path), data=str(data), warnings=manifest.warnings)
    if out_dir is not None:
        out_dir = Path(out_dir)
        write_predictions(pred, out_dir / "predictions.csv")
        atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics


def print_report(metrics: dict, console) -> None:
    """A table like scikit-learn's classification report, plus the headline figures with CIs.

    Figures that are not estimable (an absent stage, a CI from one subject) print as "—" with the
    reason, never as None or nan.
    """
    from rich.table import Table

    def num(value) -> str:
        return "—" if value is None else f"{value:.3f}"

    table = Table(title=f"{metrics.get('split', 'test')} split: {metrics['n_images']} images"
                        + (f", {metrics['n_subjects']} subjects" if metrics.get("n_subjects") else ""))
    for col in ("class", "precision", "recall", "f1", "support", "note"):
        table.add_column(col, justify="left" if col in ("class", "note") else "right")
    for c in CLASSES:
        row = metrics["per_class"][c]
        note = "" if row.get("estimable", True) else f"not estimable: {row.get('reason') or 'fewer than 5 subjects'}"
        table.add_row(c, num(row["precision"]), num(row["recall"]), num(row["f1"]), str(row["support"]), note)
    console.print(table)
    ci = metrics.get("ci") or {}
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        interval = ci.get(key)
        shown = (f"95% CI {interval[0]:.3f}–{interval[1]:.3f}, {metrics['ci_method']}" if interval
                 else f"CI not estimable: {ci.get('reason') or 'not computed'}")
        console.print(f"{key:>18}: {num(metrics[key])}  ({shown})")
    console.print(f"{'ECE (15 bins)':>18}: {num(metrics['ece'])}")
    if metrics.get("subject_accuracy") is not None:
        console.print(f"{'subject accuracy':>18}: {metrics['subject_accuracy']:.3f} (soft vote over slices)")
    if metrics.get("absent"):
        console.print(f"[yellow]absent from the {metrics.get('split', 'test')} split: {', '.join(metrics['absent'])} "
                      "(macro figures average over the stages present)[/]")
    for w in metrics.get("warnings", []):
        console.print(f"[yellow]warning: {w}[/]")
