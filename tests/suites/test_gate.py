"""The acceptance gate end to end (pytester): verdicts, audit.json, and one-line usage errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from suites import DEFAULT_THRESHOLDS, SUITES_DIR

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.slow  # runs the gate in-process many times; tox envs gate separately

FAST_AUDIT = """
[audit]
gradcam_images = 0
ig_images = 8
ig_steps = 16
stability_images = 8
stability_draws = 2
faithfulness_images = 8
faithfulness_steps = 8
randomization_images = 8
gallery_per_class = 1
batch_size = 16
"""


def thresholds_file(tmp_path: Path, extra: str = "", *, base: bool = True) -> Path:
    """The default gate with small audit samples (and optional overrides appended)."""
    text = DEFAULT_THRESHOLDS.read_text().split("[audit]")[0] if base else ""
    path = tmp_path / "thresholds.toml"
    path.write_text(text + extra + FAST_AUDIT)
    return path


def run_gate(pytester, model, data, out, thresholds, *extra):
    return pytester.runpytest_inprocess(
        str(SUITES_DIR), "--model", str(model), "--data", str(data), "--audit-out", str(out),
        "--thresholds", str(thresholds), "-p", "no:cacheprovider", "-q", "--benchmark-disable-gc", *extra)


def audit_checks(out: Path) -> dict:
    document = json.loads((out / "audit.json").read_text())
    from audit.schema_io import validate_audit

    validate_audit(document)
    return {c["id"]: c["status"] for c in document["checks"]}, document


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    from model.network import build_classifier

    path = tmp_path_factory.mktemp("untrained") / "untrained.keras"
    build_classifier("small", None, 32, seed=0).save(path)
    return path


@pytest.fixture(scope="module")
def split_csv(oasis_dir, tmp_path_factory):
    from model.manifest import index_dataset, write_manifest
    from model.splits import split_manifest

    split, _ = split_manifest(index_dataset(oasis_dir), seed=0)
    return write_manifest(split, tmp_path_factory.mktemp("split") / "split.csv")


def test_untrained_model_fails_on_accuracy_and_audit_json_is_complete(pytester, untrained, split_csv, tmp_path):
    out = tmp_path / "audit"
    result = run_gate(pytester, untrained, split_csv, out, thresholds_file(tmp_path), "-k", "performance or data")
    assert result.ret == 1
    checks, document = audit_checks(out)
    assert checks["performance.balanced_accuracy"] == "FAIL"
    assert checks["data.subject_overlap"] == "PASS"
    assert document["verdict"] == "FAIL"
    assert document["model"]["sha256"] and len(document["model"]["sha256"]) == 64
    assert document["run"]["versions"]["tensorflow"]
    assert document["data"]["manifest_sha256"]
    result.stdout.fnmatch_lines(["*performance.balanced_accuracy = *needs >= 0.8*"])
    # Traceability: the thresholds file pinned by its hash, the command as run, absolute paths.
    import hashlib

    run = document["run"]
    assert run["thresholds_sha256"] == hashlib.sha256(Path(run["thresholds_file"]).read_bytes()).hexdigest()
    assert run["command"].startswith("pytest ") and "--model" in run["command"]
    assert Path(document["model"]["path"]).is_absolute() and Path(document["data"]["path"]).is_absolute()


def test_the_command_the_user_ran_is_recorded(pytester, untrained, split_csv, tmp_path, monkeypatch):
    from suites.inprocess import invocation

    monkeypatch.setattr("sys.argv", ["/some/venv/bin/alzaudit", "audit", "--model", "my model.keras"])
    assert invocation() == "alzaudit audit --model 'my model.keras'"
    out = tmp_path / "audit"
    run_gate(pytester, untrained, split_csv, out, thresholds_file(tmp_path), "-k", "class_coverage",
             "--command-line", invocation())
    assert audit_checks(out)[1]["run"]["command"] == "alzaudit audit --model 'my model.keras'"


def test_impossible_throughput_threshold_fails(pytester, untrained, split_csv, tmp_path):
    extra = ("[throughput]\ninference = { cpu = { min = 1e9 }, gpu = { min = 1e9 }, mps = { min = 1e9 } }\n"
             "gradcam = { cpu = { min = 1 } }\n")
    text = DEFAULT_THRESHOLDS.read_text().split("[throughput]")[0] + extra
    path = tmp_path / "t.toml"
    path.write_text(text + FAST_AUDIT)
    out = tmp_path / "audit"
    result = run_gate(pytester, untrained, split_csv, out, path, "-k", "throughput")
    assert result.ret == 1
    checks, document = audit_checks(out)
    assert checks["throughput.inference.cpu"] == "FAIL"
    assert checks["throughput.gradcam.cpu"] == "PASS"
    assert document["figures"]["throughput"]["inference_images_per_s"] > 0


def test_noise_that_destroys_the_image_fails_stability(pytester, untrained, split_csv, tmp_path):
    text = DEFAULT_THRESHOLDS.read_text().replace('ssim = { "0.02" = { min = 0.70 }, "0.05" = { min = 0.50 } }',
                                                  'ssim = { "0.9" = { min = 0.95 } }')
    path = tmp_path / "t.toml"
    path.write_text(text.split("[audit]")[0] + FAST_AUDIT)
    out = tmp_path / "audit"
    result = run_gate(pytester, untrained, split_csv, out, path, "-k", "stability")
    checks, _ = audit_checks(out)
    assert checks["stability.ssim.sigma_0_9"] == "FAIL"
    assert result.ret == 1


def test_slice_level_split_fails_the_leakage_checks(pytester, untrained, oasis_dir, tmp_path):
    from model.manifest import index_dataset, write_manifest
    from model.splits import split_manifest

    leaky, _ = split_manifest(index_dataset(oasis_dir), seed=0, group="slice")
    data = write_manifest(leaky, tmp_path / "leaky.csv")
    out = tmp_path / "audit"
    run_gate(pytester, untrained, data, out, thresholds_file(tmp_path), "-k", "data")
    checks, document = audit_checks(out)
    assert checks["data.subject_overlap"] == "FAIL"


def test_a_crashing_check_is_error_and_the_file_is_still_written(pytester, untrained, split_csv, tmp_path,
                                                                  monkeypatch):
    conftest = pytester.makeconftest("""
        import audit.runner
        def boom(self):
            raise RuntimeError("leakage exploded")
        audit.runner.AuditRun.leakage = property(boom)
    """)
    out = tmp_path / "audit"
    result = pytester.runpytest_subprocess(
        str(SUITES_DIR), "-p", "conftest", "--model", str(untrained), "--data", str(split_csv),
        "--audit-out", str(out), "--thresholds", str(thresholds_file(tmp_path)), "-k", "leakage", "-q",
        "-p", "no:cacheprovider", f"--rootdir={conftest.parent}")
    checks, document = audit_checks(out)
    assert checks["data.leakage_rate"] == "ERROR"
    assert document["verdict"] == "FAIL"
    assert result.ret == 1


# ------------------------------------------------------------------------------ usage errors
@pytest.mark.parametrize("case", ["no-model", "missing-model", "corrupt-model", "unknown-key", "wrong-type",
                                  "missing-data", "class-mismatch"])
def test_usage_errors_are_one_clear_line(pytester, untrained, split_csv, tmp_path, case):
    model, data, thresholds = str(untrained), str(split_csv), str(DEFAULT_THRESHOLDS)
    args = []
    expect = ""
    if case == "no-model":
        model, expect = None, "--model is required"
    elif case == "missing-model":
        model, expect = str(tmp_path / "nope.keras"), "model file not found"
    elif case == "corrupt-model":
        bad = tmp_path / "bad.keras"
        bad.write_bytes(b"PK\x03\x04 definitely not a zip")
        model, expect = str(bad), "bad.keras"
    elif case == "unknown-key":
        path = tmp_path / "t.toml"
        path.write_text("[performance]\naccuracyy = { min = 0.5 }\n")
        thresholds, expect = str(path), "unknown key 'performance.accuracyy'"
    elif case == "wrong-type":
        path = tmp_path / "t.toml"
        path.write_text("[performance]\naccuracy = { min = \"high\" }\n")
        thresholds, expect = str(path), "must be a number"
    elif case == "missing-data":
        data, expect = str(tmp_path / "nodata"), "dataset folder not found"
    elif case == "class-mismatch":
        args, expect = ["--classes", "Non Demented,Mild Dementia"], "--classes"
    cmd = [str(SUITES_DIR), "--data", data, "--thresholds", thresholds, "--audit-out", str(tmp_path / "a"),
           "-p", "no:cacheprovider", *args]
    if model:
        cmd += ["--model", model]
    result = pytester.runpytest_inprocess(*cmd)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.startswith("ERROR:")]
    assert len(errors) == 1 and expect in errors[0], result.stderr.lines
    assert "Traceback" not in result.stderr.str()
    assert not (tmp_path / "a" / "audit.json").exists()


def test_thresholds_file_loads_and_names_every_check():
    from suites.catalog import describe
    from suites.thresholds import load_thresholds

    thresholds = load_thresholds()
    assert thresholds.sigmas == [0.02, 0.05]
    for check_id, rule in thresholds.rules.items():
        title, group, meaning, cites = describe(check_id)
        assert title and meaning and group in ("data", "performance", "explanations", "stability", "throughput",
                                               "drift", "change")
        assert rule.direction in ("min", "max")
