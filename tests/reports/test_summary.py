"""Issue #25: page 1 as an executive summary, facts from one place, the defects a signer tripped over,
traceability and the model card. Assertions are on the rendered HTML text (and PDF where it matters)."""
from __future__ import annotations

import hashlib
import html as htmllib
import re

import pytest
from fixtures.make_audit_fixture import make_audit, write_audit
from pypdf import PdfReader

from reports import figures, render_report
from reports.facts import check_row, derive_facts, fmt
from reports.model_card import render_model_card

CONTROLS = {"random": 0.10, "brain_uniform": 0.20, "edge": 0.30, "centre": 0.25}


def _skill_check(cid, title, skill, ci, severity="warn", status=None, best="edge", threshold=0.0):
    status = status or ("PASS" if ci[0] >= threshold else ("FAIL" if severity == "fail" else "WARN"))
    comp = {"value": 0.3 + skill, "controls": CONTROLS, "best_control": best, "skill": skill, "skill_ci": ci,
            "ci_unit": "subject", "n_images": 64, "n_units": 31, "higher_is_better": True}
    return {"id": cid, "title": title, "group": "explanations", "value": skill, "threshold": threshold,
            "direction": "min", "severity": severity, "status": status, "basis": "skill", "comparison": comp,
            "message": (f"{cid}: skill over the best control ({best}) = {skill:+.3f} [95% CI {ci[0]:.3f} to "
                        f"{ci[1]:.3f}, by subject, n=31], needs lower bound >= {threshold}: Spearman correlation of "
                        "the Grad-CAM and IG maps inside the brain (28x28 grid), beside what each control map "
                        "scores against IG; low = the methods disagree on the evidence (64 images); model -0.149, "
                        "controls: random -0.0375, brain_uniform -0.0652, edge 0.136 (best), centre -0.111"),
            "cites": [], "scope": {"detects": "maps that disagree", "cannot_detect": "two methods wrong alike"}}


def demo_like(tmp_path):
    """The fixture made to look like today's demo audit: skill checks, N/A change checks, adaptive IG."""
    audit = make_audit(tmp_path)
    audit["schema_version"] = "1.3"
    audit["checks"] += [
        _skill_check("explanations.agreement_spearman", "Grad-CAM / IG agreement", -0.285, [-0.531, -0.045]),
        _skill_check("explanations.faithfulness_deletion_gain", "Faithfulness (deletion)", 0.0107, [-0.008, 0.028]),
        _skill_check("explanations.localization_auprc", "Localization (AUPRC)", 3.914e-05, [-0.0088, 0.0085]),
        _skill_check("explanations.faithfulness_score", "Faithfulness score", 0.038, [0.018, 0.058], "fail"),
    ]
    for name in ("accuracy", "ece"):
        audit["checks"].append({"id": f"change.{name}", "title": f"Change vs baseline: {name}", "group": "change",
                                "value": None, "threshold": -0.02, "direction": "min", "severity": "fail",
                                "status": "NOT_APPLICABLE", "basis": "delta", "cites": [],
                                "message": "candidate minus baseline, paired subject bootstrap: share of slices; "
                                           "not applicable: no --baseline model given"})
    stab = {"value": 0.987, "controls": {**CONTROLS, "centre": 1.0}, "best_control": "centre", "skill": -0.013,
            "skill_ci": [-0.0154, -0.0105], "ci_unit": "subject", "n_images": 64, "n_units": 32,
            "higher_is_better": True}
    audit["checks"].append({"id": "stability.ssim.sigma_0_02", "title": "Stability under noise (SSIM)",
                            "group": "stability", "value": 0.987, "threshold": 0.7, "direction": "min",
                            "severity": "fail", "status": "PASS", "basis": "value", "comparison": stab,
                            "message": "stability.ssim.sigma_0_02 = 0.987, needs >= 0.7: mean SSIM", "cites": []})
    audit["figures"]["controls"] = {
        "agreement_spearman": audit["checks"][-7]["comparison"], "stability_ssim_0.02": stab}
    audit["figures"]["convergence"].update({"steps": 128, "steps_used_mean": 25.56, "steps_used_max": 64})
    audit["data"]["subjects"] = {c: 25 for c in audit["model"]["classes"]}  # 100 = 60 + 20 + 20
    audit["run"]["thresholds_sha256"] = "b" * 64
    audit["figures"]["randomization"]["stages"] = [
        {"layer": n, "spearman": 0.3, "spearman_signed": 0.2, "ssim": 0.2, "hog": 0.1} for n in
        ("predictions", "small_resnet/block4", "small_resnet/block3", "small_resnet/block2")]
    return audit


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    folder = tmp_path_factory.mktemp("summary")
    audit = demo_like(folder)
    path = write_audit(folder, audit)
    written = render_report(path)
    raw = written["html"].read_text(encoding="utf-8")
    text = htmllib.unescape(" ".join(re.sub(r"<[^>]+>", " ", raw).split()))
    page1 = PdfReader(written["pdf"]).pages[0].extract_text()
    return {"audit": audit, "path": path, "raw": raw, "text": text, "page1": " ".join(page1.split()),
            "pdf": written["pdf"]}


def section(raw: str, sid: str) -> str:
    return raw.split(f'<section id="{sid}">', 1)[1].split("</section>", 1)[0]


# ---- item 1: page 1 ------------------------------------------------------------------------------------

def test_page_one_says_synthetic_split_and_subjects_per_split(rendered):
    page1 = rendered["page1"]
    assert "Synthetic data" in page1 and "60 train, 20 val, 20 test subjects" in page1
    assert "PASS" in page1 and "Findings" in page1


def test_skill_checks_show_the_judged_ci_bound_beside_estimate(rendered):
    v = section(rendered["raw"], "verdict")
    row = v.split("explanations.faithfulness_deletion_gain", 1)[1].split("</tr>", 1)[0]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
    assert "<strong>-0.008</strong>" in cells[0] and "+0.011" in cells[1] and "-0.008 to +0.028" in cells[2]
    assert "95% CI includes 0.000: not shown to beat the edge (Sobel) control map" in row


def test_one_number_format_and_short_reasons(rendered):
    v = section(rendered["raw"], "verdict")
    assert not re.search(r"\d\.?\d*e-\d", v)  # no 3.9e-05 on page 1
    assert "+0.000" in v  # the tiny skill in the common format
    why = re.findall(r'<td class="why">(.*?)</td>', v, re.S)
    assert why and max(len(re.sub(r"<[^>]+>", "", w)) for w in why) < 260
    assert "controls: random -0.0375" not in v  # the machine tail is cut


def test_gated_and_warn_only_column(rendered):
    v = section(rendered["raw"], "verdict")
    assert v.count('<td class="gate">gated</td>') == sum(
        c["severity"] == "fail" and c["status"] != "NOT_APPLICABLE" for c in rendered["audit"]["checks"])
    assert '<td class="gate">warn-only</td>' in v


def test_firm_negative_is_a_finding_not_one_warn_among_others(rendered):
    findings = section(rendered["raw"], "verdict").split('<ol class="findings">', 1)[1].split("</ol>", 1)[0]
    items = re.findall(r"<li>(.*?)</li>", findings, re.S)
    assert 3 <= len(items) <= 5
    firm = [i for i in items if "firm negative" in i]
    assert firm and "Grad-CAM / IG agreement" in firm[0] and "-0.531 to -0.045" in firm[0]


def test_not_applicable_rows_collapse_into_one_line(rendered):
    v = section(rendered["raw"], "verdict")
    assert "N/A</span>" not in v and "NOT_APPLICABLE</span>" not in v
    line = v.split('<p class="na-line">', 1)[1].split("</p>", 1)[0]
    assert "Not applicable (2)" in line and "no --baseline model given" in line and line.count("no --baseline") == 1


# ---- item 2: controls ----------------------------------------------------------------------------------

def test_controls_are_coloured_by_the_rule_not_the_sign(rendered):
    table = rendered["raw"].split('<table class="num small controls">', 1)[1].split("</table>", 1)[0]
    stab = table.split("Stability SSIM, σ = 0.02", 1)[1].split("</tr>", 1)[0]
    assert '<td class="bad">' not in stab  # negative skill, but the check passes on its value
    assert '<td class="ok"><strong>0.987</strong>' in stab
    agree = table.split("Agreement with IG", 1)[1].split("</tr>", 1)[0] if "Agreement with IG" in table else \
        table.split("agreement", 1)[1].split("</tr>", 1)[0]
    assert '<td class="warn">-0.285</td>' in agree


def test_controls_chart_legend_lies_inside_the_figure(rendered):
    block = rendered["audit"]["figures"]["controls"]
    fig = figures.controls_figure.__wrapped__(block, {k: k for k in block},
                                              {"agreement_spearman": {"basis": "skill", "threshold": 0.0,
                                                                      "status": "WARN"}})
    fig.canvas = __import__("matplotlib.backends.backend_agg", fromlist=["x"]).FigureCanvasAgg(fig)
    renderer = fig.canvas.get_renderer()
    box = fig.legends[0].get_window_extent(renderer)
    assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert any("higher is better" in t for t in titles)


# ---- item 3: defects -----------------------------------------------------------------------------------

def test_randomisation_ticks_are_distinct_and_legend_has_words():
    stages = [{"layer": n, "spearman": 0.3, "spearman_signed": 0.2, "ssim": 0.2, "hog": 0.1}
              for n in ("predictions", "small_resnet/block4", "small_resnet/block3")]
    fig = figures.randomization_figure.__wrapped__(stages)
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == ["predictions", "block4", "block3"]
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "spearman_signed" not in legend and "hog" not in legend and "HOG-feature similarity" in legend


def test_faithfulness_axis_and_caption_name_the_same_score(rendered):
    from reports.facts import FAITHFULNESS_SCORE

    curves = rendered["audit"]["figures"]["faithfulness"]["curves"]
    fig = figures.faithfulness_figure.__wrapped__(curves, FAITHFULNESS_SCORE)
    assert fig.axes[0].get_ylabel() == FAITHFULNESS_SCORE
    assert f"Score ({FAITHFULNESS_SCORE})" in rendered["text"] and "probability of the class" not in rendered["text"]


def test_gallery_has_a_colour_scale_and_is_compact(rendered):
    ex = section(rendered["raw"], "explanations")
    assert 'alt="colour scale of the overlays"' in ex
    n = len(rendered["audit"]["gallery"])
    assert ex.count('<tr class="gitem">') <= (n + 1) // 2 + len(rendered["audit"]["model"]["classes"])


def test_keras_summary_is_monospaced_in_html_and_pdf(rendered):
    css = rendered["raw"].split("<style>", 1)[1].split("</style>", 1)[0]
    assert re.search(r"pre, pre\.summary[^{]*\{[^}]*\"DejaVu Sans Mono\"", css)
    fonts = set()
    for page in PdfReader(rendered["pdf"]).pages[:4]:
        for f in ((page.get("/Resources") or {}).get("/Font") or {}).values():
            fonts.add(str(f.get_object().get("/BaseFont")))
    assert any("Mono" in f for f in fonts), fonts


def test_subject_counts_agree(rendered):
    data = section(rendered["raw"], "data")
    assert "subjects (all splits)" in data and "subjects (test)" not in data
    assert "60 train, 20 val, 20 test subjects" in rendered["text"]


def test_ig_note_reports_the_steps_used():
    audit = {"figures": {"convergence": {"steps": 128, "steps_used_mean": 25.56, "steps_used_max": 64}}}
    text = derive_facts(audit)["ig_steps"]["text"]
    assert "26 steps per image on average, at most 64 (cap 128)" == text.split(": ", 1)[1]


def test_ig_note_in_the_report(rendered):
    assert "128 integration steps" not in rendered["text"]
    assert "26 steps per image on average, at most 64" in rendered["text"]


def test_localisation_selection_adds_up():
    sel = {"n_explained": 288, "n_correct": 240, "n_nontrivial_mask": 216, "n_evaluated": 196,
           "n_reference_excluded": 72, "reference_class": "NonDemented", "min_mask_share": 0.01, "fallback": None}
    facts = derive_facts({"figures": {"localization": {"n_evaluated": 196, "n_empty_masks": 16,
                                                       "selection": sel}}})["localization_selection"]
    assert facts["adds_up"] and "16 of the 288 have an empty mask (all among the 72 NonDemented slices)" in facts["text"]
    old = derive_facts({"figures": {"localization": {"n_evaluated": 196, "n_empty_masks": 16,
                                                     "outside_brain": {"n": 288}}}})["localization_selection"]
    assert old["text"].startswith("196 of the 288") and "the other 92" in old["text"] and "the 16 with" in old["text"]


def test_number_format_never_scientific():
    assert fmt(3.914e-05) == "0.000" and fmt(3.914e-05, signed=True) == "+0.000" and fmt(-0.0004) == "0.000"
    assert fmt(149.65) == "149.7" and fmt(0.8333) == "0.833"


# ---- item 4: traceability ------------------------------------------------------------------------------

def test_traceability_hashes_and_report_id(rendered):
    sha = hashlib.sha256(rendered["path"].read_bytes()).hexdigest()
    page1 = rendered["page1"].replace(" ", "")
    assert f"AZA-{sha[:12].upper()}" in page1
    v = section(rendered["raw"], "verdict")
    for value in (sha, rendered["audit"]["model"]["sha256"], "a" * 64, "b" * 64,
                  rendered["audit"]["run"]["command"], "alzaudit 0.1.0"):
        assert value in v, value


def test_thresholds_hash_absent_says_not_recorded(tmp_path):
    audit = make_audit(tmp_path)
    html = render_report(write_audit(tmp_path, audit), pdf=False)["html"].read_text("utf-8")
    assert "SHA-256 thresholds</th><td class=\"mono\">not recorded" in html


def test_signoff_has_roles_and_accept_with_conditions(rendered):
    lim = section(rendered["raw"], "limitations")
    for role in ("Technical reviewer", "Clinical reviewer"):
        assert role in lim
    assert lim.count("accept with conditions") >= 2 and lim.count("Conditions / comments") >= 2


# ---- item 5: model card --------------------------------------------------------------------------------

def parse_yaml_subset(text: str):
    """The card's front matter parsed by PyYAML (a test dependency): what model hubs read."""
    import yaml

    return yaml.safe_load(text)


def test_model_card_front_matter_is_valid_model_index(rendered):
    card = render_model_card(rendered["audit"], audit_sha256="c" * 64)
    assert card.startswith("---\n")
    front, body = card[4:].split("\n---\n", 1)
    meta = parse_yaml_subset(front)
    assert meta["pipeline_tag"] == "image-classification"
    result = meta["model-index"][0]["results"][0]
    assert result["task"]["type"] == "image-classification" and result["dataset"]["split"] == "test"
    metrics = {m["type"]: m["value"] for m in result["metrics"]}
    perf = rendered["audit"]["figures"]["performance"]
    assert metrics["balanced_accuracy"] == pytest.approx(perf["balanced_accuracy"], abs=1e-4)
    for heading in ("## Intended use", "## Out-of-scope use", "## Training data", "## Evaluation",
                    "## Limitations", "## Explanation quality against controls"):
        assert heading in body, heading
    assert "-0.531 to -0.045" in body and "two methods wrong alike" in body and "AZA-CCCCCCCCCCCC" in body
    assert "the evaluation data are synthetic" in body


def test_model_card_quotes_hostile_names(tmp_path):
    audit = demo_like(tmp_path)
    audit["data"]["synthetic"] = False
    audit["data"]["path"] = 'data/evil: "x"\n- y'
    front = render_model_card(audit)[4:].split("\n---\n", 1)[0]
    assert parse_yaml_subset(front)["model-index"][0]["results"][0]["dataset"]["name"].startswith("evil")


def test_cli_writes_the_model_card(tmp_path, rendered):
    import subprocess
    import sys

    out = tmp_path / "README.md"
    proc = subprocess.run([sys.executable, "-m", "alzaudit", "report", str(rendered["path"]), "--model-card",
                           str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text("utf-8").startswith("---\n") and "model card" in proc.stdout


def test_check_row_delta_judges_the_ci_bound():
    audit = {"figures": {"change": {"accuracy": {"delta": 0.01, "delta_ci": [-0.03, 0.05]}}}}
    row = check_row(audit, {"id": "change.accuracy", "title": "x", "value": 0.01, "threshold": -0.02,
                            "direction": "min", "severity": "fail", "status": "FAIL", "basis": "delta",
                            "message": ""})
    assert row["judged"] == "-0.030" and row["estimate"] == "+0.010" and row["outcome"] == "not shown"


def test_the_check_table_quotes_the_reference_bank(tmp_path):
    """Every gating check shows how the reference bank's known-bad and known-good models fared on it."""
    from fixtures.make_audit_fixture import make_audit, write_audit

    from reports import render_report

    audit = make_audit(tmp_path)
    check = next(c for c in audit["checks"] if c["status"] == "PASS" and c["severity"] == "fail")
    check["bank"] = {"condition": "without_masks", "bad_rejected": 5, "bad_n": 7, "good_passed": 6, "good_n": 6,
                     "auroc": 0.93, "demoted": False}
    html = " ".join(render_report(write_audit(tmp_path, audit), pdf=False)["html"].read_text("utf-8").split())
    assert "reference bank: rejected 5/7 known-bad, passed 6/6 known-good, AUROC 0.93" in html


def test_a_reason_never_ends_in_a_cut_parenthesis():
    """Nested parentheses at the end of a machine sentence go as a whole, not as a dangling fragment."""
    from reports.facts import short_text

    text = ("median relative completeness error of Integrated Gradients (adaptive graded to 0.05: 26 intervals "
            "per image on average, at most 128; 64 images with an estimable F(x) - F(x'))")
    assert short_text(text) == "median relative completeness error of Integrated Gradients"
    assert short_text("a value (unbalanced") == "a value (unbalanced"
