"""The audit.json schema and the static HTML + PDF report: content, ordering, robustness, and confinement."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from fixtures.make_audit_fixture import CLASSES, make_audit, write_audit, write_audit_fixture
from markupsafe import escape
from pypdf import PdfReader

from audit.schema_io import load_schema, validate_audit
from model.errors import AlzAuditError
from reports import render_report
from reports.assets import AssetReader
from reports.fetcher import RefusedURL, ReportURLFetcher

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = "<script>alert(1)</script>"
IMG = '<img src="file:///etc/passwd">'
LINK = '<link rel="attachment" href="file:///etc/passwd">'
STATUS_ORDER = ["ERROR", "FAIL", "WARN", "PASS"]


def pdf_text(path: Path) -> str:
    """All page text with whitespace removed, so ids wrapped across lines still match."""
    return re.sub(r"\s+", "", "".join(page.extract_text() or "" for page in PdfReader(path).pages))


def statuses_in_table(html: str) -> list[str]:
    return re.findall(r'<span class="status \w+">(\w+)</span>', html)


@pytest.fixture(scope="module")
def realistic(tmp_path_factory):
    """A realistic audit (16 gallery rows of four 208x176 images), rendered once, timed."""
    folder = tmp_path_factory.mktemp("realistic")
    path = write_audit_fixture(folder, image_size=(208, 176), per_class=4)
    start = time.perf_counter()
    written = render_report(path)
    seconds = time.perf_counter() - start
    return {"path": path, "written": written, "seconds": seconds,
            "html": written["html"].read_text(encoding="utf-8"), "audit": json.loads(path.read_text())}


# ---- schema -------------------------------------------------------------------------------------------

def test_fixture_audit_is_schema_valid(tmp_path):
    audit = make_audit(tmp_path, failing=True)
    validate_audit(audit)  # raises on failure
    assert load_schema()["properties"]["schema_version"]["pattern"] == "^1\\.[0-9]+$"


@pytest.mark.parametrize("breakage, where", [
    (lambda a: a["checks"][3].__setitem__("status", "MAYBE"), "$.checks[3].status"),
    (lambda a: a.pop("verdict"), "verdict"),
    (lambda a: a["figures"]["performance"].__setitem__("ci_method", "jackknife"), "$.figures.performance"),
    (lambda a: a["run"]["device"].__setitem__("kind", "tpu"), "$.run.device.kind"),
    (lambda a: a.__setitem__("schema_version", "2.0"), "$.schema_version"),
])
def test_broken_audit_fails_with_one_line_error(tmp_path, breakage, where):
    audit = make_audit(tmp_path)
    breakage(audit)
    with pytest.raises(AlzAuditError) as info:
        validate_audit(audit, source="some/audit.json")
    message = str(info.value)
    assert "\n" not in message and message.startswith("some/audit.json: invalid at ")
    assert where in message


def test_unreadable_audit_json_is_a_one_line_error(tmp_path):
    bad = tmp_path / "audit.json"
    bad.write_text('{"schema_version": "1.0",\n "verdict": ', encoding="utf-8")
    with pytest.raises(AlzAuditError, match=r"audit\.json: not valid JSON \(line 2"):
        render_report(bad, pdf=False)
    with pytest.raises(AlzAuditError, match="file not found"):
        render_report(tmp_path / "missing.json", pdf=False)
    assert not (tmp_path / "report.html").exists()


# ---- the realistic report -----------------------------------------------------------------------------

def test_html_has_every_section_in_order_and_the_verdict(realistic):
    html = realistic["html"]
    headings = re.findall(r"<h2>(\d) ([^<]+)</h2>", html)
    assert [n for n, _ in headings] == list("1234567")
    for needle in ("Summary and verdict", "Model identity", "Data", "Performance", "Explanations", "Throughput and environment",
                   "Limitations and sign-off"):
        assert any(needle == title for _, title in headings), needle
    assert '<div class="banner pass">' in html and '<span class="run-verdict">PASS</span>' in html
    for text in ("Classification report", "Grad-CAM++", "Reliability diagram", "subject bootstrap, 1,000 resamples",
                 "Worst near-duplicate pairs", "Sign-off for report AZA-", "ModerateDemented has fewer than 5 subjects",
                 "The data are synthetic", realistic["audit"]["model"]["sha256"]):
        assert text in html, text


def test_html_is_self_contained(realistic):
    html = realistic["html"]
    urls = re.findall(r'\b(?:src|href)="([^"]*)"', html)
    assert len([u for u in urls if u.startswith("data:image/")]) >= 64 + 6  # gallery + figures
    assert all(u.startswith("data:") for u in urls), [u[:40] for u in urls if not u.startswith("data:")]
    assert "<link" not in html and "url(" not in html.split("</style>", 1)[1]


def test_pdf_has_verdict_and_every_check_id(realistic):
    text = pdf_text(realistic["written"]["pdf"])
    assert "verdict:PASS" in text
    for check in realistic["audit"]["checks"]:
        assert check["id"] in text, check["id"]
    assert "7Limitationsandsign-off" in text and "Sign-offforreportAZA-" in text


def test_pdf_size_and_render_time_are_bounded(realistic):
    size = realistic["written"]["pdf"].stat().st_size
    assert size < 5_000_000, size
    assert realistic["seconds"] < 30, realistic["seconds"]
    assert len(PdfReader(realistic["written"]["pdf"]).pages) >= 7
    leftovers = [p.name for p in realistic["path"].parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


# ---- ordering, missing sections -----------------------------------------------------------------------

def test_fail_audit_lists_failures_first(tmp_path):
    path = write_audit_fixture(tmp_path, failing=True)
    html = render_report(path, tmp_path / "out", pdf=False)["html"].read_text(encoding="utf-8")
    order = statuses_in_table(html)
    assert order[0] == "ERROR" and order[1] == "FAIL" and order[-1] == "PASS"
    assert order == sorted(order, key=STATUS_ORDER.index)
    assert '<div class="banner fail">' in html
    assert "The model-randomisation sanity check failed" in html
    assert "raised an error" in html and not (tmp_path / "out" / "report.pdf").exists()


def test_missing_optional_sections_still_render(tmp_path):
    audit = make_audit(tmp_path)
    for key in ("figures", "gallery", "heatmap_sample"):
        audit.pop(key)
    audit["model"] = {"path": "m.keras", "sha256": None, "classes": audit["model"]["classes"]}
    audit["data"] = {"path": "d", "split": "test", "counts": {}}
    audit["run"] = {"started": "2025-01-01T00:00:00Z", "finished": "bogus", "seed": None, "device": {"kind": "cpu"},
                    "versions": {}}
    audit["checks"] = []
    written = render_report(write_audit(tmp_path, audit))
    html = written["html"].read_text(encoding="utf-8")
    for what in ("Performance: not computed", "Gallery: not computed", "Near-duplicate and subject leakage: not computed",
                 "Throughput: not computed", "No checks were recorded", "Training configuration: not recorded"):
        assert what in html, what
    assert "verdict:PASS" in pdf_text(written["pdf"])


def test_partial_figures_render_with_nulls(tmp_path):
    audit = make_audit(tmp_path)
    figures = audit["figures"]
    figures["performance"].update(confusion=[[1, 2], [3]], roc=None, ci=None, ece=None, accuracy=None)
    figures["localization"] = None
    audit["data"]["has_masks"] = False
    figures["stability"]["0.05"]["example"]["noisy"] = None
    html = render_report(write_audit(tmp_path, audit), pdf=False)["html"].read_text(encoding="utf-8")
    assert "figure &#39;confusion&#39; not drawn" in html
    assert "Localisation: not computed (the dataset has no masks)" in html
    assert "Confidence intervals: not computed." in html


# ---- injection and confinement ------------------------------------------------------------------------

class RecordingFetcher(ReportURLFetcher):
    seen: list[str] = []

    def fetch(self, url, headers=None):
        RecordingFetcher.seen.append(url)
        return super().fetch(url, headers)


def test_injected_names_are_escaped_and_fetch_nothing(tmp_path, monkeypatch):
    import reports.pdf

    evil = [f"Non{SCRIPT}", f"Very{IMG}", f"Mild{LINK}", "Mod $x^2$ & <b>"]
    audit = make_audit(tmp_path, classes=tuple(evil))
    audit["model"]["path"] = f"model{SCRIPT}{LINK}.keras"
    audit["model"]["architecture"] = IMG
    audit["data"]["path"] = LINK
    audit["checks"][0]["title"] = SCRIPT
    audit["checks"][0]["message"] = LINK
    audit["gallery"][0]["original"] = f"{IMG}.png"
    audit["figures"]["leakage"]["pairs"][0]["query"] = LINK
    validate_audit(audit)
    RecordingFetcher.seen = []
    monkeypatch.setattr(reports.pdf, "ReportURLFetcher", RecordingFetcher)
    written = render_report(write_audit(tmp_path, audit), tmp_path / "out")

    html = written["html"].read_text(encoding="utf-8")
    for raw in (SCRIPT, IMG, LINK, "<b>"):
        assert raw not in html
        assert str(escape(raw)) in html
    assert "not shown (file not found)" in html  # the injected image path was skipped with a note
    assert RecordingFetcher.seen and all(u.startswith("data:image/") for u in RecordingFetcher.seen)

    pdf_bytes = written["pdf"].read_bytes()
    reader = PdfReader(written["pdf"])
    assert reader.attachments == {}
    assert b"/EmbeddedFile" not in pdf_bytes and b"/FileAttachment" not in pdf_bytes
    assert "alert(1)" in pdf_text(written["pdf"])  # printed as text, not run


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/x.png", "https://example.org/a.css", "ftp://x/y",
                                 "file:///etc/passwd", "file://otherhost/etc/passwd", "javascript:alert(1)"])
def test_fetcher_refuses_anything_but_data_and_assets(tmp_path, url):
    with pytest.raises(RefusedURL):
        ReportURLFetcher(tmp_path).fetch(url)


def test_fetcher_confines_files_to_the_asset_folder(tmp_path):
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "ok.css").write_text("p { color: red }")
    (tmp_path / "secret.txt").write_text("secret")
    (assets / "link.txt").symlink_to(tmp_path / "secret.txt")
    fetcher = ReportURLFetcher(assets)
    for url in (f"file://{assets}/../secret.txt", f"file://{assets}/%2e%2e/secret.txt", (assets / "link.txt").as_uri(),
                f"file://{assets}"):
        with pytest.raises(RefusedURL):
            fetcher.fetch(url)
    assert fetcher.fetch((assets / "ok.css").as_uri()).read() == b"p { color: red }"
    assert fetcher.fetch("data:text/plain;base64,aGk=").read() == b"hi"


def test_unescaped_attachment_stops_the_pdf(tmp_path):
    from reports.pdf import html_to_pdf

    for tag in (LINK, IMG, '<img src="http://127.0.0.1:9/x.png">', '<img src="../fetcher.py">'):
        with pytest.raises(AlzAuditError, match="rendering stopped") as info:
            html_to_pdf(f"<html><head>{tag}</head><body><p>x</p></body></html>", tmp_path)
        assert "\n" not in str(info.value)


def test_asset_reader_stays_inside_the_audit_folder(tmp_path):
    audit_dir = tmp_path / "audit"
    audit_dir.mkdir()
    make_audit(audit_dir)
    good = "images/gallery/00_00_original.png"
    outside = tmp_path / "outside.png"
    outside.write_bytes((audit_dir / good).read_bytes())
    (audit_dir / "escape.png").symlink_to(outside)
    (audit_dir / "fake.png").write_text("not an image")
    reader = AssetReader(audit_dir)
    assert reader.data_uri(good, "ok").startswith("data:image/")
    for rel in (str(outside), "../outside.png", "images/../../outside.png", "escape.png", "fake.png",
                "C:\\windows\\x.png", "\\\\server\\share\\x.png", ""):
        assert reader.data_uri(rel, "bad") is None, rel
    assert len(reader.notes) == 8
    assert any("'..' escapes" in n for n in reader.notes) and any("absolute path" in n for n in reader.notes)
    assert any("leads outside" in n for n in reader.notes) and any("not a readable PNG/JPEG" in n for n in reader.notes)


# ---- command line -------------------------------------------------------------------------------------

def test_cli_report_does_not_import_tensorflow(tmp_path):
    path = write_audit_fixture(tmp_path)
    code = textwrap.dedent(f"""
        import sys
        attempts = []
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tensorflow", "keras"):
                    attempts.append(name)
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        from alzaudit.cli import main
        rc = main(["report", {str(path)!r}, "--out", {str(tmp_path / "cli")!r}, "--no-pdf"])
        assert rc == 0, rc
        assert not attempts, attempts
        assert "tensorflow" not in sys.modules and "keras" not in sys.modules
        print("OK")
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "OK" in result.stdout and "report.html" in result.stdout
    assert (tmp_path / "cli" / "report.html").exists() and not (tmp_path / "cli" / "report.pdf").exists()


# ---- absent stages and tiny splits ------------------------------------------------------------------------------

def _visible(html: str) -> str:
    """The HTML without inline images (base64 can spell anything)."""
    return re.sub(r"data:[^\"')]+", "", html)


def _audit_without(tmp_path: Path, present: list[int], *, subjects_per_class: int = 6) -> dict:
    """The fixture audit with figures.performance computed by model.evaluate on a split lacking stages."""
    import numpy as np

    from model.evaluate import Predictions, evaluate_predictions

    classes = list(CLASSES)
    rng = np.random.default_rng(0)
    y = np.repeat(present, subjects_per_class * 2)
    subjects = [f"S{i // 2}" for i in range(len(y))]
    probs = rng.dirichlet(np.ones(4), len(y))
    probs[np.arange(len(y)), y] += 0.8
    probs /= probs.sum(axis=1, keepdims=True)
    perf = evaluate_predictions(Predictions(paths=[""] * len(y), subjects=subjects, y_true=y, probs=probs),
                                n_resamples=50)
    audit = make_audit(tmp_path)
    audit["figures"]["performance"] = json.loads(json.dumps(perf, allow_nan=False))
    audit["data"]["counts"]["test"] = {c: int((y == i).sum()) for i, c in enumerate(classes)}
    audit["data"]["subjects"] = {c: len({s for s, t in zip(subjects, y) if t == i}) for i, c in enumerate(classes)}
    audit["data"]["not_estimable"] = perf["not_estimable"]
    validate_audit(audit)
    return audit


@pytest.mark.parametrize("present", [[0, 1, 2], [0, 1]], ids=["one stage absent", "two stages absent"])
def test_report_of_a_split_without_a_stage_says_it_is_absent(tmp_path, present):
    audit = _audit_without(tmp_path, present)
    absent = [c for i, c in enumerate(CLASSES) if i not in present]
    written = render_report(write_audit(tmp_path, audit), pdf=len(present) == 3)
    html = _visible(written["html"].read_text(encoding="utf-8"))
    assert not re.search(r"\bNone\b|\bnan\b|\bNaN\b", html)
    assert f"Absent from the test split: {', '.join(absent)}." in html
    for c in absent:
        assert f"not estimable (no {c} images in the evaluated split)" in html
        assert f"Class {c} is absent from the test split" in html
        assert f"Class {c} has fewer than 5 subjects" not in html
    assert f"average over the {len(present)} stages present" in html
    assert "ROC curves not drawn: " + "; ".join(f"{c}: not estimable (no {c} images in the evaluated split)"
                                                for c in absent) in html
    assert "figure &#39;" not in html  # every figure drew
    if len(present) == 3:  # one PDF is enough (a few seconds)
        text = pdf_text(written["pdf"])
        assert f"Absentfromthetestsplit:{','.join(absent)}" in text and "notestimable" in text


def test_report_of_a_one_subject_split_has_no_interval(tmp_path):
    audit = _audit_without(tmp_path, [0], subjects_per_class=1)
    assert audit["figures"]["performance"]["ci"]["estimable"] is False
    html = _visible(render_report(write_audit(tmp_path, audit), pdf=False)["html"].read_text(encoding="utf-8"))
    assert not re.search(r"\bNone\b|\bnan\b|\bNaN\b", html)
    assert ("Confidence intervals: not estimable (1 subject in the evaluated split; a bootstrap interval needs "
            "at least 2).") in html
    assert "ROC curves not drawn: NonDemented: not estimable (every image of the evaluated split is NonDemented" in html


# ---- how the split was made -----------------------------------------------------------------------------------

def _reference(tmp_path, monkeypatch, leaky=0.97, honest=0.82):
    """A recorded honest-evaluation experiment with known figures, in place of the packaged one."""
    from reports import context

    def row(labels, split, value, ci, new=None):
        out = {"labels": labels, "split": split, "reported": {"balanced_accuracy": value, "ci": ci}}
        return out if new is None else {**out, "new_subjects": {"balanced_accuracy": new, "ci": [new - 0.05, new + 0.05]}}

    record = {"experiment": "benchmarks/honest_evaluation.py", "date": "2026-12-02", "inflation_points": 15.0,
              "recipe": {"input_size": 128, "epochs": 15},
              "cohort": {"subjects": 100, "slices_per_subject": 8, "new_subjects": 60},
              "rows": [row("true", "slice", leaky, [0.95, 0.99], 0.8), row("true", "subject", honest, [0.70, 0.93], 0.82),
                       row("random", "slice", 0.61, [0.55, 0.66]), row("random", "subject", 0.24, [0.1, 0.4])]}
    path = tmp_path / "honest_evaluation.json"
    path.write_text(json.dumps(record))
    monkeypatch.setattr(context, "HONEST_EVALUATION", path)


def test_report_says_how_a_subject_level_split_was_made_and_what_a_leaky_one_scored(tmp_path, monkeypatch):
    _reference(tmp_path, monkeypatch)
    audit = make_audit(tmp_path)
    audit["data"]["split_source"] = {"kind": "run", "description": "the model's own run split (run/split_manifest.csv)",
                                     "run_manifest": "run/split_manifest.csv", "warnings": []}
    html = render_report(write_audit(tmp_path, audit), pdf=False)["html"].read_text(encoding="utf-8")
    assert "Source: the model&#39;s own run split (run/split_manifest.csv)." in html
    assert "Subject-level: every subject&#39;s slices are in one split only (60 train, 20 val, 20 test subjects" in html
    text = " ".join(html.split())
    assert "reported a balanced accuracy of 0.970 [0.950, 0.990]; on 60 subjects it had never seen it scored " \
           "0.800 [0.750, 0.850]" in text
    assert "it scored 0.820 [0.770, 0.870] on those new subjects (0.820 [0.700, 0.930] on its own test split): " \
           "+15.0 points of inflation" in text
    assert "still reported 0.610 [0.550, 0.660]" in text and "on this synthetic cohort" in text


def test_report_warns_about_a_split_that_shares_subjects_or_has_no_ids(tmp_path, monkeypatch):
    _reference(tmp_path, monkeypatch)
    audit = make_audit(tmp_path)
    audit["data"]["synthetic"] = False
    audit["data"]["split_grouping"] = {"subjects_known": True, "subjects_per_split": {"train": 90, "test": 85},
                                       "shared_subjects": {"train-test": 80}, "subject_level": False}
    html = render_report(write_audit(tmp_path, audit), pdf=False)["html"].read_text(encoding="utf-8")
    assert 'class="warn-note">Source: not recorded. Slice-level (leaky): subjects appear in more than one split ' \
           "(train-test: 80 subjects)." in html
    assert "on the synthetic reference cohort (not this dataset)" in " ".join(html.split())
    audit["data"]["split_grouping"] = {"subjects_known": False, "subjects_per_split": {}, "shared_subjects": {},
                                       "subject_level": False}
    html = render_report(write_audit(tmp_path, audit), pdf=False)["html"].read_text(encoding="utf-8")
    assert "Subject IDs are unknown, so the split cannot keep each subject&#39;s slices together" in html


def test_report_without_a_recorded_experiment_still_says_how_the_split_was_made(tmp_path, monkeypatch):
    from reports import context

    monkeypatch.setattr(context, "HONEST_EVALUATION", tmp_path / "missing.json")
    html = render_report(write_audit(tmp_path, make_audit(tmp_path)), pdf=False)["html"].read_text("utf-8")
    assert "Subject-level: every subject" in html and "What a leaky split would have scored" not in html


def test_recorded_honest_evaluation_shows_the_inflation_on_true_labels():
    """The packaged record the report quotes: >= 8 points, CIs apart, random labels above chance on slices."""
    from reports.context import _reference_experiment

    ref = _reference_experiment()
    assert ref is not None, "reports/reference/honest_evaluation.json is missing or malformed"
    leaky, honest = ref["leaky"]["reported"], ref["honest"]["new_subjects"]
    assert leaky["balanced_accuracy"] - honest["balanced_accuracy"] >= 0.08
    assert leaky["ci"][0] > honest["ci"][1]
    # Random stages: the leaky split reports more than the subject-level one, which sits near chance.
    assert ref["random_leaky"]["reported"]["balanced_accuracy"] > ref["random_honest"]["reported"]["balanced_accuracy"]


def test_report_says_what_each_explanation_check_can_and_cannot_detect(tmp_path):
    """The scope the gate records with each explanation check, and the mask-free prior with its registration."""
    from suites.catalog import SCOPE

    audit = make_audit(tmp_path)
    detects, blind = SCOPE["explanations.prior_localization"]
    audit["checks"].append({"id": "explanations.prior_localization", "title": "Localization without masks",
                            "group": "explanations", "value": 0.146, "threshold": 0.03, "direction": "min",
                            "severity": "fail", "status": "PASS", "message": "skill +0.146", "cites": [],
                            "basis": "skill", "scope": {"detects": detects, "cannot_detect": blind}})
    audit["figures"]["prior_localization"] = {
        "applicable": True, "reason": None, "energy": {"mean": 0.6, "median": 0.6, "p5": 0.4, "p95": 0.8, "n": 27},
        "prior_area_share": 0.45, "selection": {"n_evaluated": 27},
        "regions": {"periventricular": {"map_energy": 0.598, "area_share": 0.452},
                    "cortical_ribbon": {"map_energy": 0.069, "area_share": 0.219}},
        "registration": {"n_images": 288, "n_registered": 285, "refused": {"low registration quality": 3},
                         "quality_median": 0.7, "quality_min": 0.5, "levels_mm": [2.0, 28.0], "n_skull": 0}}
    html = " ".join(render_report(write_audit(tmp_path, audit), pdf=False)["html"].read_text("utf-8").split())
    assert "What each explanation check can and cannot detect" in html
    assert "atrophy from other causes in the same places" in html
    assert "285 of 288" in html and "3 × low registration quality" in html and "cortical ribbon" in html
