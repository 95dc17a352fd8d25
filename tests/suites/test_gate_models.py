"""The gate on trained models: a good small model passes the default gate; a model that learned a
shortcut marker fails localization, and localizes clearly worse than the same model trained without it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.recipe import DEMO_RATIOS
from suites import DEFAULT_THRESHOLDS, SUITES_DIR
from test_gate import FAST_AUDIT

# Faithfulness and localisation are judged on a CI: enough images that a real margin can be seen.
# The flip rate too: on the harder cohort a few test slices sit near a stage boundary, and 8 images x 2 draws
# (a 1/16 granularity) measured 0.25 where 64 x 5 measured 0.04 on the same model; the default is 96 x 2.
AUDIT = FAST_AUDIT.replace("faithfulness_images = 8", "faithfulness_images = 64").replace(
    "faithfulness_steps = 8", "faithfulness_steps = 10").replace("ig_steps = 16", "ig_steps = 32").replace(
    "stability_images = 8", "stability_images = 96")

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.slow

SUBJECTS, SLICES, SIZE, EPOCHS = 80, 4, 64, 25
# The clean model trains at the demo's 128²: at 64² Grad-CAM's 8x8 grid cannot localise better than a
# brain-uniform map (skill +0.02 [-0.01, +0.04], measured), so a 64² model does not earn a PASS.
# It is the demo model's recipe (model/recipe.py: 120 subjects x 8 slices, 60/10/30, batch 32, weights
# averaged, precise BatchNormalization) at 20 epochs instead of 30 to save test time: a test split of 36
# subjects lets the skill CIs resolve a real margin. A smaller recipe (100 x 5, batch 16) gave a faithfulness
# skill of +0.016 [-0.094, +0.024]: not demonstrably better than its controls.
CLEAN = dict(size=128, epochs=20, subjects=120, slices=8, ratios=DEMO_RATIOS, seed=0, batch_size=32, recipe=True)


def rejects(check: dict) -> bool:
    """The check's figure missed its threshold: FAIL, or WARN only because the committed reference bank
    found the check too weak to fail a model (docs/gate_characteristic.md)."""
    demoted = bool((check.get("bank") or {}).get("demoted"))
    return check["status"] == "FAIL" or (check["status"] == "WARN" and demoted)


def train_on_cohort(root: Path, shortcut: float, size: int = SIZE, epochs: int = EPOCHS, subjects: int = SUBJECTS,
                    slices: int = SLICES, ratios=(0.7, 0.15, 0.15), seed: int = 3,
                    batch_size: int = 16, recipe: bool = False) -> tuple[Path, Path]:
    """The shortcut model trains without flips: the marker's corner encodes the class, and flips would
    scramble that code (with them the model ignores the marker and learns the atrophy instead)."""
    from model.manifest import load_dataset, write_manifest
    from model.splits import split_manifest
    from model.synth import synthesize_cohort
    from model.train import TrainConfig, train

    synthesize_cohort(root / "data", subjects=subjects, slices_per_subject=slices, seed=seed,
                      shortcut_marker=shortcut, progress=False)
    split, _ = split_manifest(load_dataset(root / "data" / "manifest.csv"), ratios, seed=seed)
    data = write_manifest(split, root / "data" / "split_manifest.csv")
    if recipe:
        from model.recipe import demo_train_config

        config = demo_train_config(data, root / "run", seed=seed, epochs=epochs, input_size=size, batch_size=batch_size)
    else:
        config = TrainConfig(data=str(data), out=str(root / "run"), backbone="small", input_size=size,
                             batch_size=batch_size, epochs_phase2=epochs, lr_phase2=1e-3, patience=epochs,
                             lr_schedule="cosine", augment_noise=0.05, augment=not shortcut, seed=seed)
    model = train(config)
    return model, data


@pytest.fixture(scope="module")
def clean_model(tmp_path_factory):
    return train_on_cohort(tmp_path_factory.mktemp("clean"), 0.0, **CLEAN)


@pytest.fixture(scope="module")
def shortcut_model(tmp_path_factory):
    return train_on_cohort(tmp_path_factory.mktemp("shortcut"), 1.0)


def gate(pytester, model, data, out: Path, select: str | None = None):
    thresholds = out.parent / "thresholds.toml"
    thresholds.write_text(DEFAULT_THRESHOLDS.read_text().split("[audit]")[0] + AUDIT)
    result = pytester.runpytest_inprocess(str(SUITES_DIR), "--model", str(model), "--data", str(data),
                                          "--audit-out", str(out), "--thresholds", str(thresholds),
                                          "-p", "no:cacheprovider", "-q", *(["-k", select] if select else []))
    document = json.loads((out / "audit.json").read_text())
    return result, document, {c["id"]: c for c in document["checks"]}


_CLEAN_GATE: dict = {}


def clean_gate(pytester, clean_model, tmp_path_factory):
    """The clean model's gate, run once for the module (a gate on the demo recipe costs ~1.5 minutes): the
    first test to ask runs it, the other reuses it, whichever order they run in."""
    if "result" not in _CLEAN_GATE:
        _CLEAN_GATE["result"] = gate(pytester, *clean_model, tmp_path_factory.mktemp("clean_gate") / "audit")
    return _CLEAN_GATE["result"]


def test_a_good_small_model_passes_the_default_gate(pytester, clean_model, tmp_path_factory):
    result, document, checks = clean_gate(pytester, clean_model, tmp_path_factory)
    failing = {k: (c["value"], c["threshold"]) for k, c in checks.items() if c["status"] in ("FAIL", "ERROR")}
    assert document["verdict"] == "PASS", failing
    assert result.ret == 0
    for check in ("explanations.localization_energy", "explanations.faithfulness_score",
                  "explanations.randomization_max_similarity"):
        assert checks[check]["status"] == "PASS", (check, checks[check]["message"])
    assert checks["explanations.localization_energy"]["comparison"]["skill_ci"][0] >= 0.03


def test_a_shortcut_model_fails_localization(pytester, clean_model, shortcut_model, tmp_path, tmp_path_factory):
    _, _, clean = clean_gate(pytester, clean_model, tmp_path_factory)
    # Only the two checks this test reads: the unselected checks are NOT_RUN, which
    # cannot turn a FAIL into anything else.
    result, document, cheat = gate(pytester, *shortcut_model, tmp_path / "cheat",
                                   select="point_at_the_atrophy or stay_inside_the_brain")
    assert document["verdict"] == "FAIL" and result.ret == 1
    assert rejects(cheat["explanations.outside_brain_mass"])
    assert rejects(cheat["explanations.localization_energy"])
    assert clean["explanations.outside_brain_mass"]["status"] == "PASS"
    # Much of the Grad-CAM mass sits outside the brain, on the marker (at 64 px ~0.44; 0.60 at the demo's
    # 128 px, docs/measurements.md); the clean model localizes clearly better.
    outside = "explanations.outside_brain_mass"
    assert cheat[outside]["value"] > 0.35 and cheat[outside]["value"] > 2 * clean[outside]["value"]
    assert clean["explanations.localization_energy"]["value"] > 1.5 * cheat["explanations.localization_energy"]["value"]


# ------------------------------------------------------------------ change thresholds against a baseline
def gate_with_baseline(pytester, model, baseline, data, out: Path, select: str):
    thresholds = out.parent / f"{out.name}.toml"
    thresholds.write_text(DEFAULT_THRESHOLDS.read_text().split("[audit]")[0] + FAST_AUDIT)
    result = pytester.runpytest_inprocess(str(SUITES_DIR), "--model", str(model), "--baseline", str(baseline),
                                          "--data", str(data), "--audit-out", str(out), "--thresholds",
                                          str(thresholds), "-p", "no:cacheprovider", "-q", "-k", select)
    document = json.loads((out / "audit.json").read_text())
    from audit.schema_io import validate_audit

    validate_audit(document)
    return result, document, {c["id"]: c for c in document["checks"]}


def test_a_model_against_itself_changes_nothing(pytester, clean_model, tmp_path):
    model, data = clean_model
    _, document, checks = gate_with_baseline(pytester, model, model, data, tmp_path / "self",
                                             "not_worse and (accuracy or ece or per_class or localization_energy)")
    changed = {k: c for k, c in checks.items() if k.startswith("change.") and c["status"] != "NOT_RUN"}
    assert set(changed) == {"change.accuracy", "change.balanced_accuracy", "change.per_class_recall", "change.ece",
                            "change.localization_energy"}
    for check_id, c in changed.items():
        assert c["status"] == "PASS" and c["value"] == 0 and c["change"]["delta_ci"] == [0.0, 0.0], check_id
    assert document["figures"]["change"]["n_changed_predictions"] == 0


def test_a_degraded_copy_fails_the_change_checks(pytester, clean_model, tmp_path):
    """The clean model with its head and last backbone stage re-initialised, gated against the clean one."""
    import numpy as np

    from audit.quality.randomization import backbone_stages, randomization_groups, reinitialize
    from model.network import load_model
    from reports import render_report

    model, data = clean_model
    degraded = load_model(model)
    stages, n_head = backbone_stages(randomization_groups(degraded))
    reinitialize([layer for stage in stages[:n_head + 1] for g in stage for layer in g.layers],
                 np.random.default_rng(0))
    degraded_path = tmp_path / "degraded.keras"
    degraded.save(degraded_path)
    result, document, checks = gate_with_baseline(pytester, degraded_path, model, data, tmp_path / "degraded",
                                                  "not_worse and (accuracy or localization_energy)")
    assert result.ret == 1 and document["verdict"] == "FAIL"
    for check_id in ("change.accuracy", "change.balanced_accuracy"):
        c = checks[check_id]
        assert c["status"] == "FAIL" and c["change"]["delta_ci"][1] < 0, (check_id, c["message"])
    change = document["figures"]["change"]
    assert change["mcnemar"]["baseline_only_correct"] > change["mcnemar"]["candidate_only_correct"]
    assert change["n_changed_predictions"] > 0 and change["examples"]
    html = Path(render_report(tmp_path / "degraded" / "audit.json", tmp_path / "degraded", pdf=False)["html"])
    assert "Compared with the baseline" in html.read_text()


# --------------------------------------------------------------- the data users have: no masks at all
def gate_without_masks(pytester, model, data, out: Path, select: str | None = None, explainer: str | None = None):
    """The gate on the same split with its mask and brain-mask columns removed (Kaggle and OASIS slices
    carry neither); ``explainer`` swaps Grad-CAM for a reference map that ignores the model."""
    from model.manifest import load_dataset, write_manifest

    out.parent.mkdir(parents=True, exist_ok=True)
    bare = write_manifest(load_dataset(data).without_masks(), out.parent / f"{out.name}_no_masks.csv")
    thresholds = out.parent / f"{out.name}.toml"
    thresholds.write_text(DEFAULT_THRESHOLDS.read_text().split("[audit]")[0] + AUDIT
                          + (f'explainer = "{explainer}"\n' if explainer else ""))
    result = pytester.runpytest_inprocess(str(SUITES_DIR), "--model", str(model), "--data", str(bare),
                                          "--audit-out", str(out), "--thresholds", str(thresholds),
                                          "-p", "no:cacheprovider", "-q", *(["-k", select] if select else []))
    document = json.loads((out / "audit.json").read_text())
    return result, document, {c["id"]: c for c in document["checks"]}


MASK_FREE = "point_where or stay_inside"  # the two explanation checks that need no masks and read the anatomy


def test_without_masks_the_good_model_passes(pytester, clean_model, tmp_path):
    result, document, checks = gate_without_masks(pytester, *clean_model, tmp_path / "bare")
    failing = {k: c["message"] for k, c in checks.items() if c["status"] in ("FAIL", "ERROR")}
    assert document["verdict"] == "PASS" and result.ret == 0, failing
    assert checks["explanations.localization_energy"]["status"] == "NOT_APPLICABLE"
    prior = checks["explanations.prior_localization"]
    assert prior["status"] == "PASS" and prior["severity"] == "fail", prior["message"]  # it gates here
    outside = checks["explanations.outside_brain_mass"]
    assert outside["status"] == "PASS" and "MNI152" in outside["message"]
    registration = document["figures"]["prior_localization"]["registration"]
    assert registration["n_registered"] >= 0.9 * registration["n_images"]


@pytest.mark.parametrize("probe", ["untrained", "foreground", "edge", "centre", "shortcut"])
def test_without_masks_every_bad_model_fails_an_explanation_check(pytester, clean_model, shortcut_model, probe,
                                                                  tmp_path):
    """Negative controls on a manifest without masks: each must FAIL a gating explanations.* check."""
    from audit.probes import foreground_model, save_probe, untrained_model

    model, data = shortcut_model if probe == "shortcut" else clean_model
    explainer = probe if probe in ("edge", "centre") else None
    if probe == "untrained":
        model = save_probe(untrained_model(128, seed=1), tmp_path / "untrained.keras")
    elif probe == "foreground":
        model = save_probe(foreground_model(128), tmp_path / "foreground.keras")
    _, document, checks = gate_without_masks(pytester, model, data, tmp_path / probe, MASK_FREE, explainer)
    failed = [k for k, c in checks.items() if k.startswith("explanations.") and c["status"] == "FAIL"
              and c["severity"] == "fail"]
    assert failed and document["verdict"] == "FAIL", {k: c["message"] for k, c in checks.items()
                                                      if k.startswith("explanations.")}
