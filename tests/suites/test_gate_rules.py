"""Threshold rules on skill: parsing, judging the CI's lower bound, and what lands in the check record."""
from __future__ import annotations

import pytest

from model.errors import AlzAuditError
from suites.gate import Gate
from suites.thresholds import load_thresholds


def _thresholds(tmp_path, text: str):
    path = tmp_path / "t.toml"
    path.write_text(text)
    return load_thresholds(path)


def _comparison(skill, lo, hi, best="brain_uniform"):
    return {"value": 0.4, "controls": {"random": 0.15, "brain_uniform": 0.4 - skill}, "best_control": best,
            "skill": skill, "skill_ci": [lo, hi], "ci_unit": "subject", "n_images": 120, "n_units": 15,
            "higher_is_better": True}


def test_skill_min_parses_and_is_refused_where_no_controls_exist(tmp_path):
    t = _thresholds(tmp_path, "[explanations]\nlocalization_energy = { skill_min = 0.05 }\n")
    rule = t.rule("explanations.localization_energy")
    assert rule.basis == "skill" and rule.direction == "min" and rule.threshold == 0.05
    with pytest.raises(AlzAuditError, match="no controls to measure skill against"):
        _thresholds(tmp_path, "[performance]\naccuracy = { skill_min = 0.1 }\n")
    with pytest.raises(AlzAuditError, match="exactly one of min/max/skill_min"):
        _thresholds(tmp_path, "[explanations]\nlocalization_energy = { skill_min = 0.1, min = 0.2 }\n")


def test_default_thresholds_gate_localisation_and_faithfulness_on_skill():
    t = load_thresholds()
    for check in ("explanations.localization_energy", "explanations.faithfulness_score",
                  "explanations.agreement_spearman"):
        assert t.rule(check).basis == "skill", check
    assert t.rule("explanations.localization_energy").severity == "fail"
    assert t.rule("explanations.faithfulness_score").severity == "fail"


@pytest.mark.parametrize("lo,expected", [(0.08, "PASS"), (0.049, "FAIL"), (-0.02, "FAIL")])
def test_a_skill_rule_judges_the_lower_ci_bound(tmp_path, lo, expected):
    gate = Gate(_thresholds(tmp_path, "[explanations]\nlocalization_energy = { skill_min = 0.05 }\n"))
    comparison = _comparison(0.1, lo, 0.12)  # the same point estimate, different certainty
    if expected == "PASS":
        gate.check("explanations.localization_energy", 0.4, comparison=comparison)
    else:
        with pytest.raises(pytest.fail.Exception, match="skill over the best control"):
            gate.check("explanations.localization_energy", 0.4, comparison=comparison)
    record = gate.checks["explanations.localization_energy"]
    assert record["status"] == expected and record["basis"] == "skill"
    assert record["value"] == pytest.approx(0.1) and record["comparison"]["best_control"] == "brain_uniform"
    assert "brain_uniform" in record["message"] and "95% CI" in record["message"]


def test_a_skill_rule_without_an_estimable_interval_is_an_error_not_a_pass(tmp_path):
    gate = Gate(_thresholds(tmp_path, "[explanations]\nlocalization_energy = { skill_min = 0.05 }\n"))
    with pytest.raises(pytest.fail.Exception, match="not estimable"):
        gate.check("explanations.localization_energy", 0.4, comparison=_comparison(0.1, None, None))
    assert gate.checks["explanations.localization_energy"]["status"] == "ERROR"
    with pytest.raises(pytest.fail.Exception, match="no controls"):
        gate.check("explanations.localization_energy", 0.4, comparison=None)


def test_a_value_rule_still_judges_the_value_and_keeps_the_controls_beside_it(tmp_path):
    gate = Gate(_thresholds(tmp_path, "[explanations]\noutside_brain_mass = { max = 0.25 }\n"))
    gate.check("explanations.outside_brain_mass", 0.07, comparison=_comparison(-0.07, -0.08, -0.06))
    record = gate.checks["explanations.outside_brain_mass"]
    assert record["status"] == "PASS" and record["basis"] == "value" and record["value"] == 0.07
    assert "controls:" in record["message"]


def equal_steps_cost(config, costs) -> float:
    """The faithfulness stage's planned seconds at the 20 equal steps used before 2026-12-03."""
    from dataclasses import replace

    from audit.plan import plan_stages

    plans = plan_stages(160, replace(config, faithfulness_steps=20), costs, n_sigmas=2)
    return next(p.seconds for p in plans if p.stage == "faithfulness")


def test_the_plan_scales_with_the_work_and_a_budget_shrinks_the_sampled_stages():
    from audit.plan import BUDGET_HEADROOM, MIN_IMAGES, UnitCosts, fit_budget, plan_stages
    from audit.runner import AuditConfig

    costs = UnitCosts(forward=0.01, gradcam=0.012, ig_row=0.03)
    config = AuditConfig()
    plans = {p.stage: p for p in plan_stages(160, config, costs, n_sigmas=2)}
    # a CAM over every image: the predictions are its forward pass
    assert "predictions" not in plans and plans["predictions + Grad-CAM"].seconds == pytest.approx(160 * 0.012)
    # 4 inner points (config.faithfulness_points) per order and curve; the shared curve ends once
    assert plans["faithfulness"].seconds == pytest.approx(64 * (5 * 2 * 4 + 2) * 0.01)
    # the noisy copies' predictions come from the CAM's own pass; a reference explainer pays a pass more
    noisy = config.stability_images * 2 * config.stability_draws
    assert plans["stability"].seconds == pytest.approx(noisy * 0.012)
    edge = {p.stage: p for p in plan_stages(160, AuditConfig(explainer="edge"), costs, n_sigmas=2)}
    assert edge["stability"].seconds == pytest.approx(noisy * (0.012 + 0.01))
    assert edge["predictions"].seconds == pytest.approx(1.6) and edge["Grad-CAM"].seconds == pytest.approx(1.92)
    # the gallery pays IG only for the examples outside the IG sample
    reused = {p.stage: p for p in plan_stages(160, config, costs, n_sigmas=2, gallery=(16, 3))}
    assert reused["gallery"].seconds == pytest.approx(16 * 0.012 + 3 * 32 * 0.03)
    assert equal_steps_cost(config, costs) > 4 * plans["faithfulness"].seconds
    total = sum(p.seconds for p in plans.values())
    fitted = fit_budget(160, config, costs, 2, minutes=total / 60 / 3)
    new_total = sum(p.seconds for p in plan_stages(160, fitted, costs, 2))
    assert new_total <= BUDGET_HEADROOM * total / 3 + 1e-6 or min(fitted.ig_images, fitted.faithfulness_images) == MIN_IMAGES
    assert fitted.faithfulness_images < config.faithfulness_images and fitted.gradcam_images == 0
    tiny = fit_budget(160, config, costs, 2, minutes=0.001)
    assert tiny.ig_images == tiny.faithfulness_images == tiny.stability_images == MIN_IMAGES
    assert fit_budget(160, config, costs, 2, minutes=1e6) is config


def test_a_check_without_a_threshold_is_not_run_and_makes_the_verdict_incomplete(tmp_path):
    gate = Gate(_thresholds(tmp_path, "[explanations]\noutside_brain_mass = { max = 0.25 }\n"),
                expected=["explanations.outside_brain_mass", "explanations.localization_energy"])
    gate.check("explanations.outside_brain_mass", 0.07)
    with pytest.raises(pytest.skip.Exception, match="no threshold configured"):
        gate.check("explanations.localization_energy", 0.4)
    assert gate.checks["explanations.localization_energy"]["status"] == "NOT_RUN"
    assert gate.verdict() == "INCOMPLETE"
    with pytest.raises(pytest.skip.Exception):
        gate.check_change("change.accuracy", {"delta": 0.0})
    assert gate.checks["change.accuracy"]["status"] == "NOT_RUN"


def _bank(auroc: float, n_good: int, n_bad: int) -> dict:
    row = {"good_passed": n_good - 1, "good_n": n_good, "bad_rejected": 2, "bad_n": n_bad, "auroc": auroc}
    return {"n_good": n_good, "n_bad": n_bad, "checks": {"without_masks": {"explanations.faithfulness_score": row}}}


def test_a_check_the_reference_bank_found_weak_can_only_warn(tmp_path):
    """AUROC < 0.8 between the banks' good and bad models: a miss is a WARN that says why, not a FAIL."""
    t = _thresholds(tmp_path, "[explanations]\nfaithfulness_score = { skill_min = 0.0 }\n")
    gate = Gate(t, bank=_bank(0.62, 6, 7), condition="without_masks")
    with pytest.warns(UserWarning, match="AUROC 0.62 < 0.8"):
        gate.check("explanations.faithfulness_score", 0.1, comparison=_comparison(-0.05, -0.1, 0.0))
    check = gate.checks["explanations.faithfulness_score"]
    assert check["status"] == "WARN" and check["severity"] == "warn"
    assert check["bank"] == {"condition": "without_masks", "bad_rejected": 2, "bad_n": 7, "good_passed": 5,
                             "good_n": 6, "auroc": 0.62, "demoted": True}


@pytest.mark.parametrize("auroc, n_good, n_bad", [(0.62, 2, 3), (0.95, 6, 7)])
def test_a_strong_check_or_a_small_bank_leaves_the_rule_failing(tmp_path, auroc, n_good, n_bad):
    t = _thresholds(tmp_path, "[explanations]\nfaithfulness_score = { skill_min = 0.0 }\n")
    gate = Gate(t, bank=_bank(auroc, n_good, n_bad), condition="without_masks")
    with pytest.raises(pytest.fail.Exception):
        gate.check("explanations.faithfulness_score", 0.1, comparison=_comparison(-0.05, -0.1, 0.0))
    assert gate.checks["explanations.faithfulness_score"]["status"] == "FAIL"
    assert gate.checks["explanations.faithfulness_score"]["bank"]["demoted"] is False


def test_faithfulness_points_are_read_checked_and_equal_steps_still_win_when_set(tmp_path):
    from audit.runner import AuditConfig
    from suites.thresholds import load_thresholds

    default = AuditConfig.from_settings(load_thresholds().settings)
    assert default.faithfulness_fractions() == (0.0, 0.1, 0.2, 0.4, 0.7, 1.0) == AuditConfig().faithfulness_fractions()
    path = tmp_path / "t.toml"
    path.write_text("[audit]\nfaithfulness_points = [0.1, 0.5]\n")
    assert AuditConfig.from_settings(load_thresholds(path).settings).faithfulness_fractions() == (0.0, 0.1, 0.5, 1.0)
    path.write_text("[audit]\nfaithfulness_steps = 4\nfaithfulness_points = [0.1, 0.5]\n")
    assert AuditConfig.from_settings(load_thresholds(path).settings).faithfulness_fractions() == (0, 0.25, 0.5, 0.75, 1)
    for text in ("faithfulness_points = [0.5, 0.1]", "faithfulness_points = [0.0, 0.5]", "faithfulness_points = []",
                 "faithfulness_points = 0.5", 'faithfulness_points = ["0.5"]', "faithfulness_points = [0.5, 1.0]"):
        path.write_text(f"[audit]\n{text}\n")
        with pytest.raises(AlzAuditError, match="'audit.faithfulness_points' must be increasing fractions") as info:
            load_thresholds(path)
        assert "\n" not in str(info.value)
