"""Turn an audit.json dict into the plain view-model the templates print.

All formatting decisions (number precision, ordering, what "not computed" means) live here so the
templates stay dumb and the report can't crash on a section that is missing: every section is either a
complete dict or None.
"""
from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from audit.schema_io import CONTROL_FIGURES, STABILITY_CONTROL_PREFIX
from reports import figures
from reports.assets import AssetReader, to_data_uri
from reports.facts import FAITHFULNESS_SCORE, derive_facts, fmt, fmt_p, fmt_param
from reports.limitations import absent_classes, derive_limitations

SPLIT_ORDER = ("train", "val", "validation", "test")
SUMMARY_HEAD = ["mean", "median", "p5", "p95", "n"]


def fmt_threshold(threshold: Any, direction: Any) -> str:
    if threshold is None:
        return "—"
    return {"min": "≥ ", "max": "≤ "}.get(direction, "") + fmt(threshold)


def not_estimable_text(obj: Any) -> str | None:
    """'not estimable (reason)' for an object marked ``"estimable": false`` (see docs/audit_json.md), else None."""
    if not isinstance(obj, dict) or obj.get("estimable") is not False:
        return None
    reason = " ".join(str(obj.get("reason") or "").split())
    return f"not estimable ({reason})" if reason else "not estimable"


def summary_cells(s: Any) -> list[str]:
    """mean, median, p5, p95, n of a summary dict (all 'n/a' when not computed)."""
    s = s if isinstance(s, dict) else {}
    return [fmt(s.get(k)) for k in SUMMARY_HEAD]


def _safe_figure(notes: list[str], name: str, draw: Callable[..., bytes | None], *args: Any) -> str | None:
    """Draw a figure; a malformed section costs that figure (with a note), never the whole report."""
    try:
        png = draw(*args)
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        notes.append(f"figure '{name}' not drawn: {type(exc).__name__}: {' '.join(str(exc).split())[:120]}")
        return None
    return to_data_uri(png, "image/png") if png else None


def _short(text: str, width: int = 70) -> str:
    """Keep the end of a long path (the file name is the informative part) for headers and footers."""
    return text if len(text) <= width else "…" + text[-(width - 1):]


def _duration(start: Any, end: Any) -> str | None:
    try:
        seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except (TypeError, ValueError):
        return None
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _verdict(facts: dict[str, Any]) -> dict[str, Any]:
    """Page 1: the verdict, provenance, findings, the judged checks and the N/A ones in one line."""
    counts = facts["counts"]
    verdict = facts["verdict"]
    explanation = {
        "INCOMPLETE": f"{counts['NOT_RUN']} check(s) did not run: this audit cannot accept the model",
        "FAIL": "at least one check failed or could not be computed",
        "PASS": "every expected check ran, none failed",
    }.get(verdict, "")
    return {"verdict": verdict, "fail_on_warn": facts["fail_on_warn"], "checks": facts["judged_checks"],
            "n_checks": len(facts["checks"]), "counts": counts, "explanation": explanation,
            "provenance": facts["provenance"]["line"], "findings": facts["findings"],
            "not_applicable": facts["not_applicable"], "n_not_applicable": facts["n_not_applicable"],
            "trace": facts["trace"]}


def _training_tables(training: dict[str, Any]) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """Scalars become key/value rows; lists of dicts (e.g. phases) become small tables."""
    rows, tables = [], []
    for key, value in training.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            head = list(dict.fromkeys(k for v in value for k in v))
            tables.append({"name": key, "head": head, "rows": [[fmt_param(v.get(k)) for k in head] for v in value]})
        elif isinstance(value, (dict, list)):
            rows.append((key, ", ".join(f"{k}: {fmt_param(v)}" for k, v in value.items()) if isinstance(value, dict)
                         else ", ".join(fmt_param(v) for v in value)))
        else:
            rows.append((key, fmt_param(value)))
    return rows, tables


def _model(audit: dict[str, Any], assets: AssetReader) -> dict[str, Any]:
    m = audit.get("model") or {}
    run = audit.get("run") or {}
    shape = m.get("input_shape")
    scale = {255: "raw intensities in [0, 255]", 1: "intensities scaled to [0, 1]"}.get(m.get("input_scale"),
                                                                                     "intensity scale unknown")
    contract = (f"{' × '.join(fmt(s) for s in shape)} float32, {scale}" if shape else f"shape unknown, {scale}")
    versions = run.get("versions") or {}
    device = run.get("device") or {}
    rows = [
        ("Model file", m.get("path") or "n/a"), ("SHA-256", m.get("sha256") or "n/a"),
        ("Architecture", m.get("architecture") or "n/a"), ("Backbone", m.get("backbone") or "n/a"),
        ("Parameters", fmt(m.get("n_params"))), ("Input contract", contract),
        ("Classes (output order)", ", ".join(m.get("classes") or []) or "n/a"),
        ("Grad-CAM layer", m.get("layer") or "n/a"),
        ("Frameworks", ", ".join(f"{k} {v}" for k, v in versions.items() if v) or "n/a"),
        ("Device", f"{device.get('kind', 'n/a')}" + (f" ({device['name']})" if device.get("name") else "")),
    ]
    training = m.get("training")
    t_rows, t_tables = _training_tables(training) if isinstance(training, dict) else ([], [])
    return {"rows": rows, "summary": m.get("summary"), "training": training is not None,
            "training_rows": t_rows, "training_tables": t_tables,
            "training_curves": assets.data_uri(m.get("training_curves"), "training curves", max_px=900)}


def _ordered(keys: list[str], first: tuple[str, ...] | list[str]) -> list[str]:
    return [k for k in first if k in keys] + [k for k in keys if k not in first]


def _data(audit: dict[str, Any], assets: AssetReader, facts: dict[str, Any]) -> dict[str, Any]:
    d = audit.get("data") or {}
    classes = list((audit.get("model") or {}).get("classes") or [])
    counts = d.get("counts") or {}
    splits = _ordered(list(counts), SPLIT_ORDER)
    all_classes = _ordered(list(dict.fromkeys(c for s in counts.values() for c in (s or {}))), classes)
    subjects = d.get("subjects") or {}
    absent = absent_classes(audit)
    not_estimable = set(d.get("not_estimable") or []) | set(absent)
    table = [[c] + [fmt((counts.get(s) or {}).get(c)) for s in splits]
             + [fmt(subjects.get(c)), ("no (absent)" if c in absent else "no") if c in not_estimable else "yes"]
             for c in all_classes]
    totals = ["total"] + [fmt(sum(v for v in (counts.get(s) or {}).values() if isinstance(v, int))) for s in splits] \
        + [fmt(sum(v for v in subjects.values() if isinstance(v, int))) if subjects else "n/a", ""]
    rows = [
        ("Dataset", d.get("path") or "n/a"), ("Layout", d.get("layout") or "n/a"),
        ("Manifest SHA-256", d.get("manifest_sha256") or "n/a"), ("Evaluated split", d.get("split") or "n/a"),
        ("Subject IDs known", fmt(d.get("subjects_known"))), ("Synthetic", fmt(d.get("synthetic"))),
        ("Ground-truth masks", fmt(d.get("has_masks"))),
    ]
    skipped = d.get("skipped") or []
    return {"rows": rows, "splits": splits, "counts": table, "totals": totals, "split": d.get("split", "test"),
            "skipped": skipped[:20], "skipped_more": max(0, len(skipped) - 20), "warnings": d.get("warnings") or [],
            "not_estimable": sorted(not_estimable - set(absent)), "absent": absent,
            "leakage": _leakage(audit, assets), "split_story": split_story(audit),
            "subjects_scope": facts["provenance"]["subjects_per_class_scope"]}


HONEST_EVALUATION = Path(__file__).resolve().parent / "reference" / "honest_evaluation.json"


def _reference_experiment() -> dict[str, Any] | None:
    """The recorded slice- vs subject-split experiment (benchmarks/honest_evaluation.py --record)."""
    try:
        record = json.loads(HONEST_EVALUATION.read_text(encoding="utf-8"))
        rows = {(r["labels"], r["split"]): r for r in record["rows"]}
        return {"record": record, "leaky": rows[("true", "slice")], "honest": rows[("true", "subject")],
                "random_leaky": rows.get(("random", "slice")), "random_honest": rows.get(("random", "subject"))}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _score_text(score: dict[str, Any] | None) -> str:
    if not score or score.get("balanced_accuracy") is None:
        return "n/a"
    ci = score.get("ci")
    return fmt(score["balanced_accuracy"]) + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "")


def split_story(audit: dict[str, Any]) -> dict[str, Any]:
    """"How this split was made and what a leaky split would have scored", for the data section.

    The first half comes from this audit (where the split came from, subjects per split, subjects shared);
    the second from the recorded reference experiment, never from re-training in the audit.
    """
    d = audit.get("data") or {}
    grouping = d.get("split_grouping") or {}
    source = (d.get("split_source") or {}).get("description") or "not recorded"
    per_split = grouping.get("subjects_per_split") or {}
    shared = {k: v for k, v in (grouping.get("shared_subjects") or {}).items() if v}
    if not grouping or not grouping.get("subjects_known", d.get("subjects_known")):
        how = ("Subject IDs are unknown, so the split cannot keep each subject's slices together: slices of one "
               "brain may sit in training and in this test split, and the scores below may be inflated.")
        kind = "unknown"
    elif shared:
        how = ("Slice-level (leaky): subjects appear in more than one split ("
               + ", ".join(f"{pair}: {n}" for pair, n in shared.items()) + " subjects).")
        kind = "leaky"
    else:
        how = ("Subject-level: every subject's slices are in one split only ("
               + ", ".join(f"{fmt(per_split[name])} {name}" for name in _ordered(list(per_split), SPLIT_ORDER))
            + " subjects; none shared).")
        kind = "subject"
    ref = _reference_experiment()
    reference = None
    if ref is not None:
        record, leaky, honest = ref["record"], ref["leaky"], ref["honest"]
        recipe = record.get("recipe") or {}
        cohort = record.get("cohort") or {}
        reference = {
            "synthetic": bool(d.get("synthetic")),
            "leaky": _score_text(leaky.get("reported")), "honest": _score_text(honest.get("reported")),
            "leaky_new": _score_text(leaky.get("new_subjects")), "honest_new": _score_text(honest.get("new_subjects")),
            "inflation": (f"{record['inflation_points']:+.1f}" if isinstance(record.get("inflation_points"), (int, float))
                          else "n/a"),
            "random_leaky": _score_text((ref["random_leaky"] or {}).get("reported")),
            "random_honest": _score_text((ref["random_honest"] or {}).get("reported")),
            "new_subjects": fmt(cohort.get("new_subjects")),
            "setup": (f"{fmt(cohort.get('subjects'))} subjects x {fmt(cohort.get('slices_per_subject'))} slices, "
                      f"small backbone at {fmt(recipe.get('input_size'))} px, {fmt(recipe.get('epochs'))} epochs"),
            "source": f"{record.get('experiment', '?')}, recorded {record.get('date', '?')}",
        }
    return {"source": source, "how": how, "kind": kind, "reference": reference}


def _leakage(audit: dict[str, Any], assets: AssetReader) -> dict[str, Any] | None:
    lk = ((audit.get("figures") or {}).get("leakage"))
    if not lk:
        return None
    pairs = sorted(lk.get("pairs") or [], key=lambda p: (p.get("distance") is None, p.get("distance") or 0))
    return {
        "rates": [(k, fmt(v)) for k, v in (lk.get("rate") or {}).items()],
        "by_class": [(k, fmt(v)) for k, v in (lk.get("rate_by_class") or {}).items()],
        "max_rate": fmt(lk.get("max_rate")), "subject_overlap": fmt(lk.get("subject_overlap")),
        "subjects_known": fmt(lk.get("subjects_known")),
        "pairs": [{"query": p.get("query", ""), "match": p.get("match", ""), "splits": p.get("splits") or "",
                   "distance": fmt(p.get("distance")), "transform": p.get("transform") or ""} for p in pairs[:12]],
        "grid": assets.data_uri(lk.get("grid_png"), "near-duplicate grid", max_px=1000),
    }


def _performance(audit: dict[str, Any], notes: list[str]) -> dict[str, Any] | None:
    p = (audit.get("figures") or {}).get("performance")
    if not p:
        return None
    classes = list((audit.get("model") or {}).get("classes") or [])
    ci = p.get("ci") if isinstance(p.get("ci"), dict) else {}
    ci_missing = not_estimable_text(ci)
    headline = []
    for key, name in (("accuracy", "Accuracy"), ("balanced_accuracy", "Balanced accuracy"),
                      ("macro_f1", "Macro F1"), ("ece", "Expected calibration error"),
                      ("subject_accuracy", "Subject-level accuracy (majority vote)")):
        interval = ci.get(key)
        if isinstance(interval, list) and len(interval) == 2 and None not in interval:
            shown = f"{fmt(interval[0])} – {fmt(interval[1])}"
        else:
            shown = "not estimable" if ci_missing and key in ci else "—"
        headline.append((name, fmt(p.get(key)), shown))
    level = p.get("ci_level")
    ci_note = None
    if ci_missing:
        ci_note = ci_missing
    elif ci:
        ci_note = (f"{fmt(round(level * 100)) if isinstance(level, (int, float)) else '95'} % intervals by "
                   f"{p.get('ci_method') or 'an unstated method'}"
                   + (f", {fmt(p.get('n_resamples'))} resamples" if p.get("n_resamples") else ""))
    roc = p.get("roc") if isinstance(p.get("roc"), dict) else {}
    per_class = p.get("per_class") if isinstance(p.get("per_class"), dict) else {}
    absent = absent_classes(audit)
    table = []
    for c in _ordered(list(per_class), classes):
        row = per_class.get(c) if isinstance(per_class.get(c), dict) else {}
        why = not_estimable_text(row)
        if why is None and c in absent:  # files written before reasons existed
            why = "not estimable (absent from the evaluated split)"

        def cell(value: Any) -> str:
            return "—" if value is None and why else fmt(value)

        curve = roc.get(c) if isinstance(roc.get(c), dict) else {}
        auc = "—" if curve.get("auc") is None and (why or not_estimable_text(curve)) else fmt(curve.get("auc"))
        table.append({"cells": [c, cell(row.get("precision")), cell(row.get("recall")), cell(row.get("f1")),
                                fmt(row.get("support")), auc, why or "yes"], "warn": why is not None})
    # Curves that cannot be drawn are listed in words, not passed to the figure.
    drawable = {c: v for c, v in roc.items() if isinstance(v, dict) and v.get("estimable") is not False
                and v.get("fpr") and v.get("tpr")}
    roc_notes = [f"{c}: {not_estimable_text(v) or 'not computed'}" for c, v in roc.items() if c not in drawable]
    reliability = p.get("reliability")
    reliability_note = not_estimable_text(reliability)
    macro_note = None
    if absent and per_class:
        present = [c for c in _ordered(list(per_class), classes) if c not in absent]
        macro_note = (f"Absent from the evaluated split: {', '.join(absent)}. Balanced accuracy and macro F1 "
                      f"average over the {len(present)} stage{'s' if len(present) != 1 else ''} present"
                      + (f" ({', '.join(present)})." if present else "."))
    return {
        "headline": headline, "ci_note": ci_note, "per_class": table, "macro_note": macro_note,
        "confusion": _safe_figure(notes, "confusion", figures.confusion_figure, p.get("confusion"), classes),
        "roc": _safe_figure(notes, "roc", figures.roc_figure, drawable), "roc_notes": roc_notes,
        "reliability": None if reliability_note else _safe_figure(
            notes, "reliability", figures.reliability_figure, reliability, p.get("ece")),
        "reliability_note": reliability_note,
    }


def _gallery(audit: dict[str, Any], assets: AssetReader) -> list[dict[str, Any]] | None:
    """Per true class, its slices two to a row (label + four small images each): compact enough for one page."""
    items = audit.get("gallery")
    if not items:
        return None
    classes = list((audit.get("model") or {}).get("classes") or [])
    groups: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        groups.setdefault(str(item.get("class", "?")), []).append(item)
    out = []
    for cls in _ordered(list(groups), classes):
        cells = []
        for item in sorted(groups[cls], key=lambda it: not it.get("correct")):
            images = [assets.data_uri(item.get(k), f"gallery {cls} {k}", max_px=160) for k in
                      ("original", "gradcam", "gradcam_pp", "ig")]
            cells.append({"correct": bool(item.get("correct")), "true": item.get("true", "?"),
                          "predicted": item.get("predicted", "?"), "probability": fmt(item.get("probability")),
                          "images": images})
        out.append({"name": cls, "rows": [cells[i:i + 2] for i in range(0, len(cells), 2)]})
    return out


def _stability(fig: dict[str, Any], assets: AssetReader, notes: list[str]) -> dict[str, Any] | None:
    st = fig.get("stability")
    if not st:
        return None

    def sigma(key: str) -> float:
        try:
            return float(key)
        except ValueError:
            return math.inf

    rows, example = [], None
    for key in sorted(st, key=sigma):
        entry = st[key] or {}
        rows.append([key] + summary_cells(entry.get("ssim")) + [fmt(entry.get("flip_rate"))])
        if example is None and entry.get("example"):
            ex = entry["example"]
            example = {"sigma": key, "images": [
                (name, assets.data_uri(ex.get(k), f"stability example {k}"))
                for k, name in (("clean", "clean"), ("noisy", f"noisy (σ={key})"),
                                ("clean_map", "Grad-CAM, clean"), ("noisy_map", "Grad-CAM, noisy"))]}
    return {"rows": rows, "example": example,
            "figure": _safe_figure(notes, "stability", figures.stability_figure, st)}


def _explanations(audit: dict[str, Any], assets: AssetReader, notes: list[str],
                  facts: dict[str, Any]) -> dict[str, Any]:
    fig = audit.get("figures") or {}
    ag = fig.get("agreement")
    agreement = None
    if ag:
        agreement = {"between": " vs ".join(ag.get("between") or []) or None,
                     "rows": [[name] + summary_cells(ag.get(key)) for key, name in
                              (("spearman", "Spearman rank correlation"), ("iou_top20", "IoU of top-20 % pixels"),
                               ("ssim", "SSIM"))]}
    fa = fig.get("faithfulness")
    faithfulness = None
    if fa:
        faithfulness = {"rows": [[name] + summary_cells(fa.get(key)) for key, name in (
            ("deletion_auc", "Deletion AUC (lower is better)"), ("random_deletion_auc", "Deletion AUC, random order"),
            ("deletion_gain", "Deletion gain over random"), ("insertion_auc", "Insertion AUC (higher is better)"),
            ("random_insertion_auc", "Insertion AUC, random order"), ("insertion_gain", "Insertion gain over random"))],
            "score": FAITHFULNESS_SCORE,
            "figure": _safe_figure(notes, "faithfulness", figures.faithfulness_figure, fa.get("curves"),
                                   FAITHFULNESS_SCORE)}
    ra = fig.get("randomization")
    randomization = None
    if ra:
        passed = ra.get("passed")
        randomization = {"passed": passed, "result": {True: "PASSED", False: "FAILED"}.get(passed, "not decided"),
                         "max_similarity": fmt(ra.get("max_similarity")),
                         "final_similarity": fmt(ra.get("final_similarity")),
                         "gate_stage": ra.get("gate_stage") or "n/a",
                         "gate_similarity": fmt(ra.get("gate_similarity")),
                         "edge_similarity": fmt(((ra.get("control_gate_similarity") or {}).get("edge") or {})
                                                .get("spearman")),
                         "stages": [[s.get("layer", "?") + (" ◀ judged from here" if s.get("layer") == ra.get(
                             "gate_stage") else ""), fmt(s.get("spearman")), fmt(s.get("spearman_signed")),
                                     fmt(s.get("ssim")), fmt(s.get("hog")),
                                     fmt(((s.get("controls") or {}).get("edge") or {}).get("spearman"))]
                                    for s in ra.get("stages") or []],
                         "figure": _safe_figure(notes, "randomization", figures.randomization_figure, ra.get("stages"))}
    lo = fig.get("localization")
    localization = None
    if lo:
        localization = {"rows": [[name] + summary_cells(lo.get(key)) for key, name in (
            ("energy_pointing", "Energy inside mask"), ("hit_rate", "Hit rate (peak inside mask)"),
            ("auprc", "AUPRC against mask"), ("outside_brain", "Energy outside the brain"))],
            "selection": (facts["localization_selection"] or {}).get("text")}
    controls = _controls(fig.get("controls"), notes, facts["checks"])
    pr = fig.get("prior_localization")
    prior = None
    if pr:
        reg = pr.get("registration") or {}
        refused = "; ".join(f"{n} × {why}" for why, n in (reg.get("refused") or {}).items()) or "none"
        prior = {"applicable": pr.get("applicable"), "reason": pr.get("reason"),
                 "registered": f"{fmt(reg.get('n_registered'))} of {fmt(reg.get('n_images'))}",
                 "quality": f"median {fmt(reg.get('quality_median'))}, lowest {fmt(reg.get('quality_min'))}",
                 "levels": " to ".join(f"{fmt(z)} mm" for z in reg.get("levels_mm") or []) or "n/a",
                 "refused": refused, "area": fmt(pr.get("prior_area_share")),
                 "regions": [[name.replace("_", " "), fmt(r.get("map_energy")), fmt(r.get("area_share"))]
                             for name, r in (pr.get("regions") or {}).items()]}
    scope = [{"title": c.get("title"), "status": c.get("status"), **c["scope"]}
             for c in audit.get("checks") or [] if c.get("scope")]
    co = fig.get("convergence")
    convergence = None
    if co:
        convergence = {"row": ["IG completeness error"] + summary_cells(co.get("completeness_error")),
                       "steps": (facts["ig_steps"] or {}).get("text")}
    return {"gallery": _gallery(audit, assets), "agreement": agreement,
            "colour_scale": _safe_figure(notes, "colour scale", figures.colour_scale),
            "stability": _stability(fig, assets, notes), "faithfulness": faithfulness,
            "randomization": randomization, "localization": localization, "convergence": convergence,
            "controls": controls, "prior": prior, "scope": sorted(scope, key=lambda c: c["title"] or ""),
            "has_masks": bool((audit.get("data") or {}).get("has_masks")),
            "layer": (audit.get("model") or {}).get("layer") or "n/a",
            "heatmap_sample": audit.get("heatmap_sample")}


# Titles of audit.json's "controls" keys, in report order (the stability keys for the default noise levels).
CONTROL_TITLES = {**{key: title for key, (title, _, _) in CONTROL_FIGURES.items()},
                  **{f"{STABILITY_CONTROL_PREFIX}{s}": f"Stability SSIM, σ = {s}" for s in ("0.02", "0.05")}}


def _control_title(key: str) -> str:
    if key.startswith(STABILITY_CONTROL_PREFIX):
        return f"Stability SSIM, σ = {key[len(STABILITY_CONTROL_PREFIX):]}"
    return key.replace("_", " ")


STATUS_CSS = {"PASS": "ok", "WARN": "warn", "FAIL": "bad", "ERROR": "bad"}


def _judging_check(entry: dict[str, Any], checks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The check whose comparison is this controls entry (same value and skill), if one judged it."""
    for c in checks:
        comp = c.get("comparison") or {}
        try:
            if abs(comp["skill"] - entry["skill"]) < 1e-9 and abs(comp["value"] - entry["value"]) < 1e-9:
                return c
        except (KeyError, TypeError):
            continue
    return None


def _controls(block: dict[str, Any] | None, notes: list[str], checks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Every explanation figure beside its control maps, coloured by the rule that judged it (not by sign).

    A skill-judged check colours its skill; a value-judged one (stability: a constant map is perfectly
    stable by construction, so its skill is negative by design) colours its value; an unjudged row stays grey.
    """
    if not block:
        return None
    titles = dict(CONTROL_TITLES)
    titles.update({k: _control_title(k) for k in block if k not in titles})
    rows, judged = [], {}
    for key, title in titles.items():
        c = block.get(key)
        if not c:
            continue
        ctrl = c.get("controls") or {}
        lo, hi = (c.get("skill_ci") or [None, None]) + [None, None][len(c.get("skill_ci") or []):]
        ci = "not estimable" if lo is None else f"{fmt(lo, signed=True)} to {fmt(hi, signed=True)}"
        check = _judging_check(c, checks)
        css = STATUS_CSS.get(check["status"], "") if check else ""
        basis = check["basis"] if check else None
        if check:
            judged[key] = {"basis": basis, "threshold": check["threshold"], "status": check["status"]}
        rows.append({"title": title, "value": fmt(c.get("value")),
                     "direction": "higher is better" if c.get("higher_is_better", True) else "lower is better",
                     "controls": [fmt(ctrl.get(name)) for name in figures.CONTROL_ORDER],
                     "best": figures.CONTROL_LABELS.get(c.get("best_control"), c.get("best_control") or "n/a"),
                     "skill": fmt(c.get("skill"), signed=True), "ci": ci,
                     "skill_css": css if basis == "skill" else "", "value_css": css if basis == "value" else "",
                     "rule": (f"{check['status_label']}: {check['rule']}" + (" (value)" if basis == "value" else ""))
                     if check else "not judged",
                     "unit": f"{fmt(c.get('n_units'))} {c.get('ci_unit', 'unit')}s"})
    return {"rows": rows, "headers": [figures.CONTROL_LABELS[c] for c in figures.CONTROL_ORDER],
            "figure": _safe_figure(notes, "controls", figures.controls_figure, block, titles, judged)}


def _change(audit: dict[str, Any], assets: AssetReader) -> dict[str, Any] | None:
    """The candidate against its baseline: deltas with CIs, McNemar, changed predictions, differing maps."""
    ch = (audit.get("figures") or {}).get("change")
    if not ch:
        return None
    statuses = {c.get("id"): c.get("status") for c in audit.get("checks") or []}
    rows, unit, n = [], "subject", None
    for name, entry in ch.items():
        if not isinstance(entry, dict) or "delta" not in entry:
            continue
        unit, n = entry.get("ci_unit", unit), entry.get("n_units", n)
        ci = entry.get("delta_ci") or [None, None]
        better = entry.get("delta") is not None and (entry["delta"] > 0) == bool(entry.get("higher_is_better"))
        rows.append({"title": name.replace("_", " "), "baseline": fmt(entry.get("baseline")),
                     "candidate": fmt(entry.get("candidate")), "delta": fmt(entry.get("delta")),
                     "ci": "not estimable" if ci[0] is None else f"{fmt(ci[0])} to {fmt(ci[1])}",
                     "css": "" if not entry.get("delta") else ("ok" if better else "bad"),
                     "status": statuses.get(f"change.{name}", "n/a")})
    m = ch.get("mcnemar") or {}
    mcnemar = (f"{m.get('candidate_only_correct', 0)} slices only the candidate gets right, "
               f"{m.get('baseline_only_correct', 0)} only the baseline; p = {fmt_p(m.get('p_value'))}") if m else "n/a"
    examples = [{**e, "ssim": fmt(e.get("ssim")),
                 **{k: assets.data_uri(e.get(k), f"change example {k}") for k in ("original", "baseline_map",
                                                                                  "candidate_map")}}
                for e in ch.get("examples") or []]
    base = ch.get("baseline_model") or {}
    return {"rows": rows, "mcnemar": mcnemar, "changed": (ch.get("changed_predictions") or [])[:40],
            "n_changed": fmt(ch.get("n_changed_predictions")), "examples": examples, "unit": unit,
            "n_units": fmt(n),
            "baseline_path": base.get("path") or "n/a", "baseline_sha": (base.get("sha256") or "")[:12] or "n/a"}


def _environment(audit: dict[str, Any]) -> dict[str, Any]:
    run = audit.get("run") or {}
    tp = (audit.get("figures") or {}).get("throughput")
    throughput = None
    if tp:
        throughput = [("Device kind", tp.get("device_kind") or "n/a"), ("Batch size", fmt(tp.get("batch_size"))),
                      ("Inference (images/s)", fmt(tp.get("inference_images_per_s"))),
                      ("Grad-CAM (images/s)", fmt(tp.get("gradcam_images_per_s")))]
    device = run.get("device") or {}
    rows = [("Started", run.get("started") or "n/a"), ("Finished", run.get("finished") or "n/a"),
            ("Duration", _duration(run.get("started"), run.get("finished")) or "n/a"),
            ("Seed", fmt(run.get("seed"))),
            ("Device", f"{device.get('kind', 'n/a')}" + (f" ({device['name']})" if device.get("name") else ""))]
    rows += [(f"{k} version", v or "n/a") for k, v in (run.get("versions") or {}).items()]
    rows += [("Git commit", run.get("git_commit") or "n/a"), ("Thresholds file", run.get("thresholds_file") or "n/a"),
             ("Command", run.get("command") or "n/a")]
    plan = run.get("plan") or {}
    timings = run.get("timings") or {}
    actual = {"predictions": "probs", "Grad-CAM": "gradcam", "predictions + Grad-CAM": "probs_gradcam",
              "registration": "registration", "Integrated Gradients": "ig", "faithfulness": "faithfulness",
              "stability": "stability", "randomization": "randomization", "gallery": "gallery"}
    stages = [[p.get("stage", "?"), fmt(p.get("images")), p.get("work", ""), fmt(p.get("seconds")),
               fmt(timings.get(actual.get(p.get("stage"), ""), None))] for p in plan.get("stages") or []]
    budget = plan.get("budget_minutes")
    return {"throughput": throughput, "rows": rows, "plan": stages,
            "budget": f"{fmt(budget)} min" if budget else "none (the [audit] sample sizes as set)"}


def build_context(audit: dict[str, Any], assets: AssetReader, *, source_name: str, generated: str,
                  audit_sha256: str | None = None) -> dict[str, Any]:
    """Everything the templates need, in the order the report prints it; facts from reports.facts only."""
    notes: list[str] = []
    facts = derive_facts(audit, audit_sha256=audit_sha256)
    ctx = {
        "source_name": source_name, "generated": generated,
        "schema_version": audit.get("schema_version", "?"),
        "model_name": _short((audit.get("model") or {}).get("path") or "model"),
        "sha_short": ((audit.get("model") or {}).get("sha256") or "")[:12],
        "report_id": facts["trace"]["report_id"],
        "verdict": _verdict(facts),
        "model": _model(audit, assets),
        "data": _data(audit, assets, facts),
        "performance": _performance(audit, notes),
        "explanations": _explanations(audit, assets, notes, facts),
        "change": _change(audit, assets),
        "environment": _environment(audit),
        "limitations": derive_limitations(audit),
        "signoff_roles": SIGNOFF_ROLES,
    }
    ctx["notes"] = notes + assets.notes
    return ctx


SIGNOFF_ROLES = ("Technical reviewer (ML)", "Clinical reviewer", "Quality / regulatory")
