"""Every fact the report and the model card state, derived from audit.json in one place.

Page 1, the data section, the explanation notes and the model card all read their numbers from
``derive_facts``, so two parts of one report cannot disagree (the subject counts, the IG steps, the
localisation selection, the value a check was judged on). Numbers are formatted by ``fmt`` only.
"""
from __future__ import annotations

import hashlib
import math
import re
from typing import Any

SPLIT_ORDER = ("train", "val", "validation", "test")
CONTROL_LABELS = {"random": "random smooth", "brain_uniform": "brain-uniform", "edge": "edge (Sobel)",
                  "centre": "centre prior"}
GATED, WARN_ONLY = "gated", "warn-only"
# How the faithfulness curves are scored (audit/stages/quality.py: the class logit, each slice's curves
# scaled to the range its logit spans); the axis label and the caption both print this one string.
FAITHFULNESS_SCORE = "class logit, scaled per slice to [0, 1]"
STATUS_LABELS = {"NOT_APPLICABLE": "N/A", "NOT_RUN": "NOT RUN"}


def fmt(x: Any, *, signed: bool = False) -> str:
    """One number format for the whole report: 3 decimals below 10, never scientific notation."""
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:+,}" if signed else f"{x:,}"
    if isinstance(x, float):
        if math.isnan(x) or math.isinf(x):
            return "n/a"
        sign = "+" if signed else ""
        if x.is_integer() and abs(x) >= 10:
            return f"{x:{sign},.0f}"
        if abs(x) < 10:
            text = f"{x:{sign}.3f}"
            return text.replace("-0.000", "0.000").replace("+-", "-")
        return f"{x:{sign}.1f}" if abs(x) < 1000 else f"{x:{sign},.0f}"
    return str(x)


def fmt_param(x: Any) -> str:
    """Hyperparameters (learning rates such as 1e-05) keep two significant digits instead of 0.000."""
    if isinstance(x, float) and not isinstance(x, bool) and 0 < abs(x) < 0.001:
        return f"{x:.2g}"
    return fmt(x)


def fmt_p(p: Any) -> str:
    """A p-value: 3 decimals, or '< 0.001'."""
    if isinstance(p, (int, float)) and not isinstance(p, bool) and 0 <= p < 0.001:
        return "< 0.001"
    return fmt(p)


def fmt_ci(ci: Any, *, signed: bool = False) -> str:
    if not isinstance(ci, (list, tuple)) or len(ci) != 2 or None in ci:
        return "—"
    return f"{fmt(ci[0], signed=signed)} to {fmt(ci[1], signed=signed)}"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def report_id(audit_sha256: str | None) -> str:
    """What a signer writes down: tied to the exact audit.json bytes the report was rendered from."""
    return f"AZA-{audit_sha256[:12].upper()}" if audit_sha256 else "AZA-unknown"


def _ordered(keys: list[str], first: tuple[str, ...]) -> list[str]:
    return [k for k in first if k in keys] + [k for k in keys if k not in first]


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


# ---------------------------------------------------------------------------------------------- checks

_NEEDS = re.compile(r"needs [^:]*?:\s*(.+)$", re.S)
_NA = re.compile(r"not applicable:\s*(.+)$", re.S)


def short_text(text: str, width: int = 90) -> str:
    """A machine sentence cut to what a reader needs: no trailing parentheticals, at most ``width`` chars."""
    text = " ".join(str(text).split())
    previous = None
    while previous != text:
        previous = text
        text = _drop_trailing_parenthetical(text).rstrip(" ;,.")
    if len(text) <= width:
        return text
    text = re.sub(r"\s*\([^()]*\)", "", text)  # inner details too, once the sentence is too long
    if len(text) <= width:
        return text
    cut = max(text.rfind(sep, 0, width) for sep in (", ", "; ", ": "))
    if cut > width // 3:
        return text[:cut]
    return text[:width].rsplit(" ", 1)[0] + "…"


def _drop_trailing_parenthetical(text: str) -> str:
    """'a (b (c) d)' -> 'a': the whole balanced group at the end, nested parentheses included."""
    text = text.rstrip()
    if not text.endswith(")"):
        return text
    depth = 0
    for i in range(len(text) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(text[i], 0)
        if depth == 0:
            return text[:i].rstrip()
    return text  # unbalanced: leave it


def _meaning(check: dict[str, Any]) -> str:
    message = str(check.get("message") or "")
    m = _NEEDS.search(message)
    meaning = m.group(1) if m else message
    meaning = re.split(r";\s*(?:model |not applicable:)", meaning)[0]
    return short_text(meaning)


def _delta_ci(audit: dict[str, Any], check: dict[str, Any]) -> list | None:
    name = str(check.get("id", "")).split(".", 1)[-1]
    entry = ((audit.get("figures") or {}).get("change") or {}).get(name)
    ci = entry.get("delta_ci") if isinstance(entry, dict) else None
    return ci if isinstance(ci, list) and len(ci) == 2 and None not in ci else None


def _value_ci(audit: dict[str, Any], check: dict[str, Any]) -> list | None:
    """The CI printed beside a value-judged performance figure (figures.performance.ci), if any."""
    group, _, name = str(check.get("id", "")).partition(".")
    if group != "performance":
        return None
    ci = (((audit.get("figures") or {}).get("performance") or {}).get("ci") or {})
    ci = ci.get(name) if isinstance(ci, dict) else None
    return ci if isinstance(ci, list) and len(ci) == 2 and None not in ci else None


def check_row(audit: dict[str, Any], check: dict[str, Any]) -> dict[str, Any]:
    """One check as page 1 prints it: the number the rule judged, beside the estimate and its CI."""
    status = check.get("status", "ERROR")
    basis = check.get("basis") or "value"
    direction = check.get("direction")
    threshold = _num(check.get("threshold"))
    comparison = check.get("comparison") if isinstance(check.get("comparison"), dict) else {}
    estimate = _num(check.get("value"))
    ci, judged, judged_on = None, estimate, "value"
    if basis == "skill" and comparison:
        estimate = _num(comparison.get("skill", check.get("value")))
        ci = comparison.get("skill_ci") if isinstance(comparison.get("skill_ci"), list) else None
        judged_on = "CI upper bound" if direction == "max" else "CI lower bound"
    elif basis == "delta":
        ci = _delta_ci(audit, check)
        judged_on = "CI upper bound" if direction == "max" else "CI lower bound"
    else:
        ci = _value_ci(audit, check)
    if ci is not None and len(ci) == 2 and None not in ci and judged_on != "value":
        judged = _num(ci[1] if direction == "max" else ci[0])
    elif judged_on != "value":
        judged = None
    lo, hi = (_num(ci[0]), _num(ci[1])) if ci and len(ci) == 2 else (None, None)
    outcome = None
    if status not in ("NOT_APPLICABLE", "NOT_RUN", "ERROR") and threshold is not None and lo is not None \
            and judged_on != "value":
        worse = hi < threshold if direction != "max" else lo > threshold
        better = lo >= threshold if direction != "max" else hi <= threshold
        outcome = "firm negative" if worse else ("shown" if better else "not shown")
    best = CONTROL_LABELS.get(comparison.get("best_control"), comparison.get("best_control"))
    signed = basis in ("skill", "delta")
    rule = ({"min": "≥ ", "max": "≤ "}.get(direction, "") + fmt(threshold, signed=False)) if threshold is not None \
        else "—"
    if judged_on != "value":
        rule += f" on the {judged_on}"
    if status == "NOT_APPLICABLE":
        m = _NA.search(str(check.get("message") or ""))
        why = short_text(m.group(1) if m else check.get("message") or "", 120)
    elif status == "ERROR":
        why = short_text(check.get("message") or "error", 120)
    elif outcome == "firm negative":
        why = (f"whole 95% CI {'below' if direction != 'max' else 'above'} {fmt(threshold)}: a firm negative "
               f"result" + (f", worse than the {best} control map" if best and basis == "skill" else ""))
    elif outcome == "not shown":
        why = f"95% CI includes {fmt(threshold)}: not shown" + (
            f" to beat the {best} control map" if best and basis == "skill" else "")
    elif outcome == "shown":
        why = f"95% CI clear of {fmt(threshold)}" + (": beats every control map" if basis == "skill" else "")
    else:
        why = ""
    return {
        "id": check.get("id", "?"), "title": check.get("title", ""), "group": check.get("group", ""),
        "status": status, "status_label": STATUS_LABELS.get(status, status),
        "gate": GATED if check.get("severity") == "fail" else WARN_ONLY, "basis": basis,
        "judged": fmt(judged, signed=signed), "judged_on": judged_on, "judged_raw": judged,
        "estimate": fmt(estimate, signed=signed), "estimate_raw": estimate,
        "ci": fmt_ci(ci, signed=signed), "ci_raw": [lo, hi] if lo is not None else None,
        "rule": rule, "threshold": threshold, "direction": direction, "outcome": outcome,
        "best_control": best, "why": why, "meaning": _meaning(check), "message": check.get("message", ""),
        "cites": check.get("cites") or [], "scope": check.get("scope") if isinstance(check.get("scope"), dict)
        else None, "comparison": comparison or None,
        # The bank's record for gating checks (and for any it demoted to warn-only): how often it is wrong.
        "bank": bank_text(check.get("bank")) if check.get("severity") == "fail" or (check.get("bank") or {}).get(
            "demoted") else None,
    }


def bank_text(bank: Any) -> str | None:
    """'rejected 5/7 known-bad, passed 6/6 known-good' from the reference bank's record (audit.json ``bank``)."""
    if not isinstance(bank, dict) or not (bank.get("bad_n") or bank.get("good_n")):
        return None
    text = (f"reference bank: rejected {bank.get('bad_rejected', 0)}/{bank.get('bad_n', 0)} known-bad, passed "
            f"{bank.get('good_passed', 0)}/{bank.get('good_n', 0)} known-good")
    if _num(bank.get("auroc")) is not None:
        text += f", AUROC {float(bank['auroc']):.2f}"
    if bank.get("demoted"):
        text += "; too weak a separation to fail a model, so it can only warn"
    return text


# ---------------------------------------------------------------------------------------------- data

def provenance(audit: dict[str, Any]) -> dict[str, Any]:
    """Synthetic or real, where the split came from, subjects per split: page 1's one line."""
    d = audit.get("data") or {}
    synthetic = d.get("synthetic")
    grouping = d.get("split_grouping") or {}
    per_split = grouping.get("subjects_per_split") or {}
    per_split = {k: per_split[k] for k in _ordered(list(per_split), SPLIT_ORDER)}
    counts = d.get("counts") or {}
    images = {s: sum(v for v in (counts.get(s) or {}).values() if isinstance(v, int))
              for s in _ordered(list(counts), SPLIT_ORDER)}
    split = d.get("split") or "test"
    kind = {True: "synthetic data", False: "real data"}.get(synthetic, "data of unrecorded origin")
    source = (d.get("split_source") or {}).get("description") or "split source not recorded"
    if per_split:
        subjects = ", ".join(f"{fmt(n)} {name}" for name, n in per_split.items()) + " subjects"
    elif d.get("subjects_known") is False:
        subjects = "subject IDs unknown"
    else:
        subjects = "subjects per split not recorded"
    line = f"{kind.capitalize()}; {source}; {subjects}; evaluated on the {split} split"
    if images.get(split):
        line += f" ({fmt(images[split])} slices)"
    return {"synthetic": synthetic, "kind": kind, "source": source, "subjects_per_split": per_split,
            "images_per_split": images, "split": split, "line": line + ".",
            "evaluated_subjects": per_split.get(split),
            "subjects_per_class": d.get("subjects") or {},
            "subjects_per_class_scope": ("all splits" if per_split and sum(per_split.values()) == sum(
                v for v in (d.get("subjects") or {}).values() if isinstance(v, int)) else "in the dataset")}


def ig_steps(audit: dict[str, Any]) -> dict[str, Any] | None:
    """The IG steps the run used: adaptive runs record mean/max beside the cap (``steps``)."""
    co = (audit.get("figures") or {}).get("convergence")
    if not isinstance(co, dict):
        return None
    cap, mean, top = co.get("steps"), _num(co.get("steps_used_mean")), co.get("steps_used_max")
    if mean is not None:
        text = (f"adaptive integration: {mean:.0f} steps per image on average, at most {fmt(top)}"
                + (f" (cap {fmt(cap)})" if cap is not None else ""))
    elif cap is not None:
        text = f"{fmt(cap)} integration steps per image"
    else:
        text = "integration steps not recorded"
    return {"text": text, "mean": mean, "max": top, "cap": cap, "n_images": co.get("n_images")}


def localization_selection(audit: dict[str, Any]) -> dict[str, Any] | None:
    """Which slices the mask-based localisation asked, as parts that add up to the slices explained."""
    lo = (audit.get("figures") or {}).get("localization")
    if not isinstance(lo, dict):
        return None
    empty = lo.get("n_empty_masks")
    evaluated = lo.get("n_evaluated")
    explained = ((lo.get("outside_brain") or {}).get("n") if isinstance(lo.get("outside_brain"), dict) else None)
    sel = lo.get("selection") if isinstance(lo.get("selection"), dict) else None
    if sel and all(isinstance(sel.get(k), int) for k in ("n_explained", "n_nontrivial_mask", "n_evaluated")):
        n, ref, nontrivial = sel["n_explained"], sel.get("n_reference_excluded") or 0, sel["n_nontrivial_mask"]
        evaluated = sel["n_evaluated"]
        small = max(n - ref - nontrivial, 0)
        wrong = max(nontrivial - evaluated, 0) if not sel.get("fallback") else 0
        parts = [(f"evaluated (correctly classified, mask ≥ {100 * (sel.get('min_mask_share') or 0):.0f}% "
                  "of the brain)", evaluated)]
        if wrong:
            parts.append(("misclassified, not asked", wrong))
        if small:
            parts.append(("mask empty or too small", small))
        if ref:
            parts.append((f"{sel.get('reference_class') or 'reference'} (evidence is the absence of atrophy; "
                          "not asked)", ref))
        text = f"Of {fmt(n)} slices explained: " + "; ".join(f"{fmt(v)} {k}" for k, v in parts) + "."
        if isinstance(empty, int) and empty:
            where = (f"all among the {fmt(ref)} {sel.get('reference_class') or 'reference'} slices" if small == 0
                     and empty <= ref else "counted above")
            text += f" {fmt(empty)} of the {fmt(n)} have an empty mask ({where})."
        if sel.get("fallback"):
            text += f" Note: {sel['fallback']}."
        return {"text": text, "parts": parts, "explained": n, "evaluated": evaluated, "empty": empty,
                "adds_up": sum(v for _, v in parts) == n}
    text = f"{fmt(evaluated)} slices evaluated"
    if isinstance(explained, int) and isinstance(evaluated, int):
        text = (f"{fmt(evaluated)} of the {fmt(explained)} slices explained were evaluated; the other "
                f"{fmt(explained - evaluated)} were not asked")
        if isinstance(empty, int):
            text += f", among them the {fmt(empty)} with an empty mask"
    elif isinstance(empty, int):
        text += f"; {fmt(empty)} slices with an empty mask were not asked"
    return {"text": text + ".", "parts": None, "explained": explained, "evaluated": evaluated, "empty": empty,
            "adds_up": None}


# ---------------------------------------------------------------------------------------------- findings

def _titles(rows: list[dict[str, Any]]) -> str:
    names = [r["title"] or r["id"] for r in rows]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def findings(audit: dict[str, Any], rows: list[dict[str, Any]], prov: dict[str, Any]) -> list[str]:
    """Three to five plain sentences: what passed, what is weak and why it matters."""
    out: list[str] = []
    judged = [r for r in rows if r["status"] not in ("NOT_APPLICABLE",)]
    gated = [r for r in judged if r["gate"] == GATED]
    bad_gated = [r for r in gated if r["status"] in ("FAIL", "ERROR", "NOT_RUN")]
    warned = [r for r in judged if r["status"] == "WARN"]
    if bad_gated:
        out.append(f"{len(bad_gated)} of {len(gated)} gated checks did not pass: {_titles(bad_gated)}. "
                   "The model is not accepted as it stands.")
    elif gated:
        out.append(f"All {len(gated)} gated checks pass" + (
            f"; {len(warned)} warn-only check{'s' if len(warned) != 1 else ''} warn{'s' if len(warned) == 1 else ''}"
            " (they cannot fail the gate, but they say where the evidence is weak)." if warned else "."))
    for r in [r for r in rows if r["outcome"] == "firm negative"][:2]:
        ci = r["ci_raw"]
        out.append(f"{r['title']} is a firm negative result, not noise: "
                   f"{'skill' if r['basis'] == 'skill' else 'change'} {r['estimate']} with its whole 95% CI "
                   f"({fmt(ci[0], signed=True)} to {fmt(ci[1], signed=True)}) on the wrong side of {fmt(r['threshold'])}"
                   + (f": the model does worse here than the {r['best_control']} control map, which knows "
                      "nothing of the model" if r["best_control"] and r["basis"] == "skill" else "")
                   + (". It is warn-only, so the verdict stands, but do not rely on this property."
                      if r["gate"] == WARN_ONLY else "."))
    perf = (audit.get("figures") or {}).get("performance") or {}
    if _num(perf.get("balanced_accuracy")) is not None:
        ci = (perf.get("ci") or {}).get("balanced_accuracy") if isinstance(perf.get("ci"), dict) else None
        subjects = prov.get("evaluated_subjects")
        text = (f"Balanced accuracy {fmt(perf['balanced_accuracy'])}"
                + (f" (95% CI {fmt_ci(ci)})" if isinstance(ci, list) and None not in ci else "")
                + (f" over {fmt(subjects)} {prov['split']} subjects" if subjects else ""))
        per_class = perf.get("per_class") or {}
        recalls = {c: _num(v.get("recall")) for c, v in per_class.items() if isinstance(v, dict)
                   and v.get("support") and _num(v.get("recall")) is not None}
        if recalls:
            worst = min(recalls, key=recalls.get)
            text += f"; the weakest stage is {worst} (recall {fmt(recalls[worst])})"
        if prov.get("synthetic"):
            text += ", on synthetic slices: this says nothing yet about real MRI"
        out.append(text + ".")
    unclear = [r for r in rows if r["outcome"] == "not shown"]
    if unclear:
        out.append(f"Not shown either way: {_titles(unclear)} — the 95% CI includes the threshold, so on this "
                   "sample the maps are no better than the best control map there.")
    shown = [r for r in rows if r["outcome"] == "shown" and r["basis"] == "skill"]
    if shown and len(out) < 5:
        out.append(f"Shown with confidence: {_titles(shown)} — the whole 95% CI of the skill over the best "
                   "control map clears the rule.")
    return out[:5]


# ---------------------------------------------------------------------------------------------- all

def derive_facts(audit: dict[str, Any], *, audit_sha256: str | None = None) -> dict[str, Any]:
    """The single source of every fact the report and the model card print."""
    from audit.schema_io import STATUS_ORDER

    rows = [check_row(audit, c) for c in audit.get("checks") or []]
    rows.sort(key=lambda r: STATUS_ORDER.get(r["status"], 0))  # stable: gate order within a status
    prov = provenance(audit)
    run, model, data = audit.get("run") or {}, audit.get("model") or {}, audit.get("data") or {}
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in STATUS_ORDER}
    not_applicable = [r for r in rows if r["status"] == "NOT_APPLICABLE"]
    reasons: dict[str, list[str]] = {}
    for r in not_applicable:
        reasons.setdefault(r["why"] or "no reason recorded", []).append(r["title"] or r["id"])
    trace = {
        "command": run.get("command") or "not recorded",
        "model_sha256": model.get("sha256") or "not recorded",
        "manifest_sha256": data.get("manifest_sha256") or "not recorded",
        "thresholds_sha256": run.get("thresholds_sha256") or "not recorded",
        "thresholds_file": run.get("thresholds_file") or "not recorded",
        "audit_sha256": audit_sha256 or "not computed",
        "report_id": report_id(audit_sha256),
        "version": (run.get("versions") or {}).get("alzaudit") or "not recorded",
        "git_commit": run.get("git_commit") or "not recorded",
        "schema_version": audit.get("schema_version", "?"),
        "finished": run.get("finished") or run.get("started") or "not recorded",
    }
    return {
        "verdict": audit.get("verdict", "FAIL"), "fail_on_warn": bool(audit.get("fail_on_warn")),
        "checks": rows, "judged_checks": [r for r in rows if r["status"] != "NOT_APPLICABLE"],
        "not_applicable": [{"reason": k, "titles": v} for k, v in reasons.items()],
        "n_not_applicable": len(not_applicable), "counts": counts,
        "provenance": prov, "findings": findings(audit, rows, prov), "trace": trace,
        "ig_steps": ig_steps(audit), "localization_selection": localization_selection(audit),
        "faithfulness_score": FAITHFULNESS_SCORE,
    }
