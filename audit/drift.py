"""Compare two audits of the same model (e.g. under two TensorFlow versions): does it still behave the same?

Both audits save a fixed heatmap sample (the first images of the split by file name: probabilities and
32x32 Grad-CAM maps); drift compares those image by image, plus the check verdicts. Throughput checks are
left out of the verdict comparison, since speed legitimately differs between environments.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from model.errors import AlzAuditError


def _load(audit_json: str | Path) -> tuple[dict, dict]:
    path = Path(audit_json)
    if not path.is_file():
        raise AlzAuditError(f"{path}: audit.json not found")
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise AlzAuditError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    sample = document.get("heatmap_sample")
    if not sample:
        raise AlzAuditError(f"{path}: the audit saved no heatmap sample (re-run the audit with this version)")
    npz = (path.parent / sample).resolve()
    if path.parent.resolve() not in npz.parents or not npz.is_file():
        raise AlzAuditError(f"{path}: heatmap sample '{sample}' missing or outside the audit folder")
    with np.load(npz, allow_pickle=False) as data:
        arrays = {k: data[k] for k in ("paths", "probs", "maps")}
    return document, arrays


def compare_audits(audit_a: str | Path, audit_b: str | Path) -> dict:
    """Figures of drift between two audits, on the images both heatmap samples share."""
    from audit.quality.base import ssim_pairs

    doc_a, a = _load(audit_a)
    doc_b, b = _load(audit_b)
    if doc_a["model"].get("sha256") != doc_b["model"].get("sha256"):
        raise AlzAuditError(f"{audit_a} and {audit_b} audit different model files (SHA-256 differ); "
                            "drift compares one model across environments")
    index_b = {str(p): i for i, p in enumerate(b["paths"])}
    shared = [(i, index_b[str(p)]) for i, p in enumerate(a["paths"]) if str(p) in index_b]
    if not shared:
        raise AlzAuditError(f"{audit_a} and {audit_b} share no images in their heatmap samples")
    ia, ib = np.array([s[0] for s in shared]), np.array([s[1] for s in shared])
    probs_a, probs_b = a["probs"][ia].astype(np.float64), b["probs"][ib].astype(np.float64)
    maps_a, maps_b = a["maps"][ia].astype(np.float32), b["maps"][ib].astype(np.float32)
    status_a = {c["id"]: c["status"] for c in doc_a["checks"] if not c["id"].startswith("throughput.")}
    status_b = {c["id"]: c["status"] for c in doc_b["checks"] if not c["id"].startswith("throughput.")}
    changed = [{"id": k, "a": status_a.get(k), "b": status_b.get(k)}
               for k in sorted(set(status_a) | set(status_b)) if status_a.get(k) != status_b.get(k)]
    return {
        "a": {"path": str(audit_a), "versions": doc_a["run"].get("versions")},
        "b": {"path": str(audit_b), "versions": doc_b["run"].get("versions")},
        "n_images": len(shared),
        "prediction_agreement": float(np.mean(probs_a.argmax(1) == probs_b.argmax(1))),
        "max_probability_difference": float(np.max(np.abs(probs_a - probs_b))),
        "heatmap_ssim": float(np.mean(ssim_pairs(maps_a, maps_b))),
        "changed_verdicts": len(changed),
        "changed": changed,
    }


def judge(figures: dict, thresholds) -> list[dict]:
    """One verdict per drift figure with a rule in the thresholds file."""
    out = []
    for key in ("prediction_agreement", "max_probability_difference", "heatmap_ssim", "changed_verdicts"):
        rule = thresholds.rule(f"drift.{key}")
        if rule is None:
            continue
        ok = rule.passes(figures[key])
        out.append({"id": f"drift.{key}", "value": figures[key], "threshold": rule.threshold,
                    "direction": rule.direction,
                    "status": "PASS" if ok else ("WARN" if rule.severity == "warn" else "FAIL")})
    return out
