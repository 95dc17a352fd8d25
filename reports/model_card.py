"""audit.json → a Hugging Face model card (``README.md``: YAML front matter with ``model-index``, then prose).

The numbers come from ``reports.facts`` like the report's, so the card and the report cannot disagree.
The YAML is emitted by hand in a small subset (block mappings and lists, every scalar a JSON string or
number, which YAML 1.2 reads as is) so no YAML library is needed to write it and none can mis-quote a
value taken from audit.json.
"""
from __future__ import annotations

import json
from pathlib import Path, PurePath
from typing import Any

from model.errors import AlzAuditError
from reports.facts import CONTROL_LABELS, derive_facts, fmt, fmt_ci, sha256_bytes
from reports.limitations import derive_limitations
from reports.loader import load_audit

# audit.json performance key -> (HF metric type, display name)
METRICS = (("accuracy", "accuracy", "Accuracy"), ("balanced_accuracy", "balanced_accuracy", "Balanced accuracy"),
           ("macro_f1", "f1", "Macro F1"), ("ece", "expected_calibration_error", "Expected calibration error"))


def _scalar(value: Any) -> str:
    """A YAML scalar: JSON numbers and double-quoted JSON strings are valid YAML 1.2 flow scalars."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(round(value, 4) if isinstance(value, float) else value)
    return json.dumps(str(value), ensure_ascii=False)


def to_yaml(value: Any, indent: int = 0) -> list[str]:
    """Block-style YAML lines for dicts, lists of dicts/scalars and scalars (the model-index shapes)."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{key}:")
                lines += to_yaml(item, indent + (0 if isinstance(item, list) else 2))
            else:
                lines.append(f"{pad}{key}: {_scalar(item) if not isinstance(item, (dict, list)) else '[]'}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                sub = to_yaml(item, indent + 2)
                lines.append(f"{pad}- {sub[0].lstrip()}")
                lines += sub[1:]
            else:
                lines.append(f"{pad}- {_scalar(item)}")
    else:
        lines.append(pad + _scalar(value))
    return lines


def _model_name(audit: dict[str, Any]) -> str:
    path = PurePath(str((audit.get("model") or {}).get("path") or "model"))
    stem = path.stem if path.stem not in ("model", "") else (path.parent.name or "model")
    return f"alzaudit-{stem}" if not stem.startswith("alzaudit") else stem


def front_matter(audit: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
    """The card's metadata: model-index results taken from audit.json's performance figures."""
    perf = (audit.get("figures") or {}).get("performance") or {}
    prov = facts["provenance"]
    synthetic = prov["synthetic"]
    dataset = {"name": "alzaudit synthetic MNI152 cohort" if synthetic else
               (PurePath(str((audit.get("data") or {}).get("path") or "dataset")).name or "dataset"),
               "type": "synthetic-mni152-axial-slices" if synthetic else "custom",
               "split": prov["split"]}
    metrics = [{"type": kind, "value": perf[key], "name": name}
               for key, kind, name in METRICS if isinstance(perf.get(key), (int, float))]
    meta: dict[str, Any] = {
        "library_name": "keras", "pipeline_tag": "image-classification", "license": "other",
        "tags": ["alzheimer", "mri", "image-classification", "explainability", "alzaudit"]
        + (["synthetic-data"] if synthetic else []),
        "model-index": [{"name": _model_name(audit), "results": [{
            "task": {"type": "image-classification", "name": "Alzheimer's stage from an axial MRI slice"},
            "dataset": dataset, "metrics": metrics}]}],
    }
    return meta


def _perf_rows(audit: dict[str, Any]) -> list[str]:
    perf = (audit.get("figures") or {}).get("performance") or {}
    ci = perf.get("ci") if isinstance(perf.get("ci"), dict) else {}
    rows = []
    for key, _, name in METRICS:
        if isinstance(perf.get(key), (int, float)):
            rows.append(f"| {name} | {fmt(perf[key])} | {fmt_ci(ci.get(key))} |")
    return rows


def _md(text: Any) -> str:
    """Table-cell safe text: no pipes or line breaks from audit.json breaking the Markdown table."""
    return " ".join(str(text).split()).replace("|", "\\|")


def render_model_card(audit: dict[str, Any], *, audit_sha256: str | None = None) -> str:
    """The whole README.md as a string."""
    facts = derive_facts(audit, audit_sha256=audit_sha256)
    prov, trace = facts["provenance"], facts["trace"]
    model = audit.get("model") or {}
    classes = ", ".join(model.get("classes") or []) or "not recorded"
    name = _model_name(audit)
    out = ["---", *to_yaml(front_matter(audit, facts)), "---", ""]
    out += [f"# {name}", "",
            f"Four-stage Alzheimer's classifier on single axial MRI slices ({classes}), audited by alzaudit. "
            f"Audit verdict: **{facts['verdict']}** (report {trace['report_id']}).", ""]
    out += ["## Intended use", "",
            "Research and method development: studying whether a slice classifier's accuracy and its explanations "
            "hold up against controls, and auditing a model before anyone relies on it. The outputs are a stage "
            "label and class probabilities for one 2-D axial slice.", ""]
    out += ["## Out-of-scope use", "",
            "- Diagnosis, screening or any clinical decision about a person: this is not a medical device and "
            "has no clinical validation.",
            "- Whole 3-D volumes, other orientations, other scanners, protocols or populations than the "
            "evaluated data.",
            "- Reading the explanation maps as proof of what the model uses beyond what the checks below show."]
    if prov["synthetic"]:
        out.append("- Any conclusion about real MRI: **the evaluation data are synthetic**.")
    out.append("")
    out += ["## Training data", "", f"{prov['line']}", ""]
    counts = prov["images_per_split"]
    if counts:
        out += ["| split | slices | subjects |", "| --- | --- | --- |"]
        out += [f"| {s} | {fmt(n)} | {fmt(prov['subjects_per_split'].get(s))} |" for s, n in counts.items()]
        out.append("")
    out += [f"Data manifest SHA-256: `{trace['manifest_sha256']}`.", ""]
    out += ["## Evaluation", "",
            f"On the {prov['split']} split, with 95% confidence intervals from a bootstrap over subjects "
            "(as recorded in the audit).", "", "| metric | value | 95% CI |", "| --- | --- | --- |",
            *_perf_rows(audit), ""]
    out += ["Acceptance checks (the gate; *judged* is the number the rule compared with its threshold):", "",
            "| check | gate | status | judged | estimate | 95% CI | rule |", "| --- | --- | --- | --- | --- | --- | --- |"]
    out += [f"| {_md(r['title'])} | {r['gate']} | {r['status']} | {r['judged']} | {r['estimate']} | {r['ci']} | "
            f"{_md(r['rule'])} |" for r in facts["judged_checks"]]
    if facts["not_applicable"]:
        out += ["", "Not applicable: " + "; ".join(f"{', '.join(g['titles'])} ({g['reason']})"
                                                   for g in facts["not_applicable"]) + "."]
    out.append("")
    out += ["## Explanation quality against controls", "",
            "Each explanation figure is also computed for four maps that know nothing of the model (random smooth, "
            "brain-uniform, edge, centre prior). *Skill* is the model's margin over the best of them, with a 95% CI "
            "over subjects.", "",
            "| check | status | skill | 95% CI | best control | cannot detect |", "| --- | --- | --- | --- | --- | --- |"]
    for r in facts["judged_checks"]:
        comp = r["comparison"] or {}
        if r["group"] != "explanations" and not r["scope"]:
            continue
        skill = fmt(comp.get("skill"), signed=True) if comp else "—"
        ci = fmt_ci(comp.get("skill_ci"), signed=True) if comp else "—"
        best = CONTROL_LABELS.get(comp.get("best_control"), comp.get("best_control") or "—")
        blind = (r["scope"] or {}).get("cannot_detect") or "not recorded"
        out.append(f"| {_md(r['title'])} | {r['status']} | {skill} | {ci} | {_md(best)} | {_md(blind)} |")
    out.append("")
    if facts["findings"]:
        out += ["Findings:", "", *[f"- {f}" for f in facts["findings"]], ""]
    out += ["## Limitations", "", *[f"- {item}" for item in derive_limitations(audit)], ""]
    out += ["## Provenance", "",
            f"- Report ID: `{trace['report_id']}` (alzaudit {trace['version']}, audit.json schema "
            f"{trace['schema_version']})",
            f"- Command: `{trace['command']}`",
            f"- SHA-256 of the model: `{trace['model_sha256']}`",
            f"- SHA-256 of the data manifest: `{trace['manifest_sha256']}`",
            f"- SHA-256 of the thresholds file: `{trace['thresholds_sha256']}`",
            f"- SHA-256 of audit.json: `{trace['audit_sha256']}`", ""]
    return "\n".join(out)


def write_model_card(audit_json_path: Path | str, out_path: Path | str) -> Path:
    """Render the card for ``audit_json_path`` and write it atomically to ``out_path``."""
    from reports.render import audit_sha256, write_atomic

    source, out = Path(audit_json_path), Path(out_path)
    audit = load_audit(source)
    text = render_model_card(audit, audit_sha256=audit_sha256(source))
    if not out.parent.is_dir():
        raise AlzAuditError(f"{out}: --model-card: folder {out.parent} does not exist")
    write_atomic(out, text.encode("utf-8"))
    return out


__all__ = ["render_model_card", "write_model_card", "to_yaml", "sha256_bytes"]
