"""IG quadrature schemes: Clenshaw–Curtis weights against independent references, nesting (every gradient
computed once), adaptive = fixed at the steps used, non-convergence flagged, and bad names refused.

Models are tiny (a 4x4 tanh net whose IG integrand is known in closed form); nothing touches the network.
"""
from __future__ import annotations

import numpy as np
import pytest

from audit.explain import integrated_gradients
from audit.explain import ig as ig_module
from audit.explain.ig import SCHEMES, clenshaw_curtis_rule, graded_rule, trapezoid_rule
from model.errors import AlzAuditError


def constant_images(values) -> np.ndarray:
    return np.broadcast_to(np.asarray(values, np.float32)[:, None, None, None], (len(values), 4, 4, 1)).copy()


def moment_weights(nodes: np.ndarray) -> np.ndarray:
    """Interpolatory weights on [0, 1] for these nodes, from the moments of Legendre polynomials (an
    independent route: a linear solve, no cosine series): sum_j w_j P_k(2 a_j - 1) = [k == 0]."""
    vander = np.polynomial.legendre.legvander(2 * nodes - 1, len(nodes) - 1).T
    moments = np.zeros(len(nodes))
    moments[0] = 1.0
    return np.linalg.solve(vander, moments)


# ------------------------------------------------------------------------------------------- the rules
def test_clenshaw_curtis_known_small_rules():
    # m = 2 is Simpson's rule; m = 4 is (1, 8, 12, 8, 1) / 15 on [-1, 1] (Davis & Rabinowitz), halved.
    np.testing.assert_allclose(clenshaw_curtis_rule(2)[1], [1 / 6, 2 / 3, 1 / 6], rtol=1e-14)
    np.testing.assert_allclose(clenshaw_curtis_rule(4)[1], np.array([1, 8, 12, 8, 1]) / 30, rtol=1e-14)
    np.testing.assert_allclose(clenshaw_curtis_rule(4)[0], [0, (2 - 2 ** 0.5) / 4, 0.5, (2 + 2 ** 0.5) / 4, 1],
                               atol=1e-15)
    np.testing.assert_array_equal(clenshaw_curtis_rule(1)[1], [0.5, 0.5])


@pytest.mark.parametrize("m", [1, 2, 3, 5, 8, 13, 16, 32])
def test_clenshaw_curtis_weights_match_the_moment_solution_and_integrate_degree_m_exactly(m):
    nodes, weights = clenshaw_curtis_rule(m)
    assert len(nodes) == len(weights) == m + 1 and nodes[0] == 0.0 and nodes[-1] == 1.0
    assert (np.diff(nodes) > 0).all() and (weights > 0).all()
    np.testing.assert_allclose(weights, moment_weights(nodes), rtol=1e-11, atol=1e-15)
    assert weights.sum() == pytest.approx(1.0, abs=1e-14)
    for degree in range(m + 1):
        assert weights @ nodes ** degree == pytest.approx(1 / (degree + 1), rel=1e-12), degree
    if 2 <= m <= 8:  # and no higher (symmetric rules are exact one degree more for even m); the miss
        beyond = m + 2 if m % 2 == 0 else m + 1  # shrinks fast with m (3.5e-8 at m = 8), so small m only
        assert abs(weights @ nodes ** beyond - 1 / (beyond + 1)) > 1e-8


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@pytest.mark.parametrize("m", [1, 3, 8, 16, 64])
def test_every_scheme_is_nested_bit_for_bit_under_doubling(scheme, m):
    (coarse, coarse_w), (fine, fine_w) = SCHEMES[scheme].rule(m), SCHEMES[scheme].rule(2 * m)
    np.testing.assert_array_equal(fine[::2], coarse)  # exact equality: the adaptive rounds reuse them
    assert np.intersect1d(fine[1::2], coarse).size == 0
    assert coarse_w.sum() == pytest.approx(1.0, abs=1e-14) and (coarse_w >= 0).all()
    # ``shared`` (one running sum for every level) holds only if doubling halves the old nodes' weights.
    assert np.allclose(fine_w[::2], coarse_w / 2, rtol=1e-13, atol=0) == SCHEMES[scheme].shared or m == 1


def test_trapezoid_rule_is_the_equal_interval_rule_and_graded_is_it_after_alpha_equals_t_squared():
    nodes, weights = trapezoid_rule(4)
    np.testing.assert_array_equal(nodes, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(weights, [0.125, 0.25, 0.25, 0.25, 0.125])
    # int_0^1 s(a) da = int_0^1 s(t^2) 2t dt: the trapezoid in t, weights times d alpha / dt = 2t.
    graded_nodes, graded_weights = graded_rule(4)
    np.testing.assert_array_equal(graded_nodes, nodes ** 2)
    np.testing.assert_allclose(graded_weights, weights * 2 * nodes, rtol=1e-15)
    # Second order, like the trapezoid: the error for s = a^2 shrinks as 1 / m^2.
    for m in (4, 8, 16):
        a, w = graded_rule(m)
        miss = abs(w @ a ** 2 - 1 / 3)
        assert 0 < miss < 1.1 / m ** 2 and miss > 0.2 / m ** 2


# ------------------------------------------------------------------------------------- the explainer
def _reference_quadrature(scheme: str, values: np.ndarray) -> np.ndarray:
    """sum_j w_j sech^2(U a_j) over 8 intervals, computed without audit.explain.ig's rules."""
    if scheme == "clenshaw-curtis":
        nodes = (1 - np.cos(np.pi * np.arange(9) / 8)) / 2
        return moment_weights(nodes) @ (1 / np.cosh(np.outer(nodes, values)) ** 2)
    t = np.linspace(0, 1, 9)[:, None]  # graded: numpy's trapezoid in t of sech^2(U t^2) * 2t
    return np.trapezoid(2 * t / np.cosh(values * t ** 2) ** 2, t, axis=0)


@pytest.mark.parametrize("scheme", ["clenshaw-curtis", "graded"])
def test_fixed_steps_ig_is_the_quadrature_at_the_schemes_nodes(tanh_model, scheme):
    """Attribution per pixel = U / 16 * sum_j w_j sech^2(U a_j), with independently computed weights."""
    values = np.array([4.0, 20.0, 50.0])
    result = integrated_gradients(tanh_model, constant_images(values), [0, 0, 0], steps=8,
                                  scheme=scheme, batch_size=5)
    expected = values / 16 * _reference_quadrature(scheme, values)
    np.testing.assert_allclose(result.attributions[..., 0], np.broadcast_to(expected[:, None, None], (3, 4, 4)),
                               rtol=2e-5)
    np.testing.assert_allclose(result.delta, np.tanh(values), rtol=1e-5)
    assert result.scheme == scheme and (result.steps_used == 8).all()
    assert result.gradient_evaluations == 3 * 9
    trapezoid = integrated_gradients(tanh_model, constant_images(values), [0, 0, 0], steps=8)
    # Where the integrand is steep near the baseline (U = 20, 50) both sample it better than equal steps.
    assert (result.completeness_error[1:] < trapezoid.completeness_error[1:] / 3).all()


def _counting(monkeypatch):
    """Record every (image value, alpha) row the compiled gradient function is asked for."""
    rows: list[tuple[float, float]] = []
    real = ig_module.ig_function

    def counted(model, output="logit"):
        step = real(model, output)

        def run(images, baselines, alphas, targets):
            rows.extend(zip(images[:, 0, 0, 0].tolist(), alphas.tolist()))
            return step(images, baselines, alphas, targets)

        return run

    monkeypatch.setattr(ig_module, "ig_function", counted)
    return rows


# Relative errors of the integral of U sech^2(U alpha) at 8/16/32 intervals, per scheme:
#   trapezoid:       U=4 5.5e-5; U=20 0.32, 1.2e-2; U=50 2.1, 0.59, 4.6e-2; U=200 12, 5.3, 2.1
#   graded:          U=4 1.1e-2; U=20 5.4e-2, 1.3e-2; U=50 8.1e-2, 3.2e-2, 8.1e-3; U=200 0.95, 8.1e-2, 3.2e-2
#   clenshaw-curtis: U=4 1.4e-5; U=20 5.0e-2, 1.6e-5; U=50 0.29, 9.0e-3, 1.6e-6; U=200 0.59, 0.30, 9.1e-3
# so each tolerance below ends the four images at 8, 16, 32 and (out of reach at the cap) 32 intervals.
@pytest.mark.parametrize("scheme,tolerance", [("trapezoid", 0.05), ("graded", 0.02), ("clenshaw-curtis", 1e-3)])
def test_adaptive_ig_computes_each_node_once_and_equals_fixed_ig_at_the_steps_used(tanh_model, monkeypatch,
                                                                                  scheme, tolerance):
    images = constant_images([4.0, 20.0, 50.0, 200.0])
    rows = _counting(monkeypatch)
    result = integrated_gradients(tanh_model, images, [0, 0, 0, 0], tolerance=tolerance, min_steps=8,
                                  max_steps=32, scheme=scheme, batch_size=7)
    np.testing.assert_array_equal(result.steps_used, [8, 16, 32, 32])
    np.testing.assert_array_equal(result.converged, [True, True, True, False])  # U=200 stops short at the cap
    assert result.completeness_error[3] > tolerance and (result.completeness_error[:3] <= tolerance).all()
    assert result.steps == 32 and result.scheme == scheme
    # Every row computed was a distinct (image, node), and their count is gradient_evaluations.
    assert len(rows) == len(set(rows)) == result.gradient_evaluations == (result.steps_used + 1).sum()
    for i, used in enumerate(result.steps_used):
        nodes = np.float32(SCHEMES[scheme].rule(int(used))[0])
        assert sorted(a for v, a in rows if v == images[i, 0, 0, 0]) == sorted(nodes.tolist())
    monkeypatch.undo()
    for i, used in enumerate(result.steps_used):
        fixed = integrated_gradients(tanh_model, images[i:i + 1], [0], steps=int(used), scheme=scheme)
        np.testing.assert_allclose(result.attributions[i], fixed.attributions[0], rtol=1e-6)
        np.testing.assert_allclose(result.completeness_error[i], fixed.completeness_error[0], rtol=1e-5)
        np.testing.assert_allclose(result.heatmaps[i], fixed.heatmaps[0], atol=1e-6)


def test_adaptive_trapezoid_from_8_still_equals_fixed_trapezoid(tanh_model):
    images = constant_images([4.0, 50.0])
    result = integrated_gradients(tanh_model, images, [0, 0], tolerance=1e-3, min_steps=8, max_steps=64)
    np.testing.assert_array_equal(result.steps_used, [8, 64])
    assert result.gradient_evaluations == 9 + 65 and result.converged.all()
    for i, used in enumerate(result.steps_used):
        fixed = integrated_gradients(tanh_model, images[i:i + 1], [0], steps=int(used))
        np.testing.assert_allclose(result.attributions[i], fixed.attributions[0], rtol=1e-6)


def test_a_tolerance_out_of_reach_is_flagged_not_converged(tanh_model):
    result = integrated_gradients(tanh_model, constant_images([200.0, 200.0]), tolerance=1e-3, min_steps=8,
                                  max_steps=16, scheme="clenshaw-curtis")
    assert (result.steps_used == 16).all() and not result.converged.any() and result.estimable.all()
    assert (result.completeness_error > 1e-3).all() and result.gradient_evaluations == 2 * 17


@pytest.mark.parametrize("scheme", ["simpson", "Clenshaw-Curtis", "", None])
def test_an_unknown_scheme_is_a_one_line_error(tanh_model, scheme):
    with pytest.raises(AlzAuditError, match="unknown IG quadrature scheme") as info:
        integrated_gradients(tanh_model, constant_images([4.0]), scheme=scheme)
    assert "\n" not in str(info.value) and "clenshaw-curtis" in str(info.value)


# ------------------------------------------------------------------------------------------- the gate
def test_the_gate_reads_its_ig_scheme_from_the_thresholds_and_refuses_unknown_ones(tmp_path):
    from audit.runner import AuditConfig
    from suites.thresholds import load_thresholds

    default = AuditConfig.from_settings(load_thresholds().settings)
    assert default.ig_scheme in SCHEMES and default.ig_scheme == AuditConfig().ig_scheme
    path = tmp_path / "t.toml"
    path.write_text('[audit]\nig_scheme = "clenshaw-curtis"\nig_min_steps = 8\nig_panels = 1\n')
    config = AuditConfig.from_settings(load_thresholds(path).settings)
    assert config.ig_scheme == "clenshaw-curtis" and config.ig_min_steps == 8 and config.ig_panels == 1
    for text, message in (('ig_scheme = "simpson"', "'audit.ig_scheme' must be one of trapezoid, graded"),
                          ("ig_scheme = 2", "'audit.ig_scheme' must be one of"),
                          ('ig_min_steps = "8"', "'audit.ig_min_steps' must be int"),
                          ("ig_panels = 1.5", "'audit.ig_panels' must be int"),
                          ('ig_schema = "graded"', "unknown key 'audit.ig_schema'")):
        path.write_text(f"[audit]\n{text}\n")
        with pytest.raises(AlzAuditError, match=message) as info:
            load_thresholds(path)
        assert "\n" not in str(info.value)


def test_the_explain_cli_offers_every_scheme():
    import argparse

    from alzaudit.commands import explain

    top = argparse.ArgumentParser().add_subparsers()
    explain.register(top, None)
    parser = top.choices["explain"]
    option = next(a for a in parser._actions if "--ig-scheme" in a.option_strings)
    assert list(option.choices) == list(SCHEMES) and option.default == "trapezoid"


# ------------------------------------------------------------------------------------------ panels
def _composite_reference(scheme: str, values, panel_steps, n_panels: int) -> np.ndarray:
    """U / 16 * the integral of sech^2(U alpha) by numpy's trapezoid, panel by panel in t (alpha = t or
    t^2), each panel with its own number of intervals: the attribution per pixel the panels should give."""
    out = []
    for value, steps in zip(values, panel_steps):
        total = 0.0
        for panel, k in enumerate(steps):
            t = np.linspace(panel / n_panels, (panel + 1) / n_panels, k + 1)
            if scheme == "graded":
                total += np.trapezoid(2 * t / np.cosh(value * t * t) ** 2, t)
            else:
                total += np.trapezoid(1 / np.cosh(value * t) ** 2, t)
        out.append(value / 16 * total)
    return np.array(out)


@pytest.mark.parametrize("scheme,tolerance,expected,whole", [
    # Two panels: the sharp start (alpha < 1/4 graded, < 1/2 trapezoid) refines, the flat rest does not.
    ("graded", 0.02, [[4, 4], [8, 4], [16, 4], [32, 4]], [8, 16, 32, 64]),
    ("trapezoid", 1e-3, [[4, 4], [16, 4], [32, 4], [32, 32]], [8, 32, 64, 64]),
])
def test_panels_refine_only_where_their_own_error_is_and_equal_the_composite_rule(
        tanh_model, monkeypatch, scheme, tolerance, expected, whole):
    values = [4.0, 20.0, 50.0, 200.0]
    images = constant_images(values)
    rows = _counting(monkeypatch)
    result = integrated_gradients(tanh_model, images, [0] * 4, tolerance=tolerance, min_steps=8, max_steps=64,
                                  scheme=scheme, panels=2, batch_size=6)
    np.testing.assert_array_equal(result.panel_steps, expected)
    np.testing.assert_array_equal(result.steps_used, np.sum(expected, axis=1))
    assert len(rows) == len(set(rows)) == result.gradient_evaluations == (result.steps_used + 1).sum()
    monkeypatch.undo()
    reference = _composite_reference(scheme, values, result.panel_steps, 2)
    np.testing.assert_allclose(result.attributions[..., 0].mean(axis=(1, 2)), reference, rtol=2e-5)
    one_panel = integrated_gradients(tanh_model, images, [0] * 4, tolerance=tolerance, min_steps=8, max_steps=64,
                                     scheme=scheme)
    np.testing.assert_array_equal(one_panel.steps_used, whole)
    np.testing.assert_array_equal(result.converged, one_panel.converged)  # same verdicts ...
    assert result.gradient_evaluations < one_panel.gradient_evaluations   # ... for fewer gradients
    # Where both panels end level, the result is the one-panel rule at that count.
    level = [i for i, steps in enumerate(expected) if steps[0] == steps[1]]
    for i in level:
        fixed = integrated_gradients(tanh_model, images[i:i + 1], [0], steps=int(result.steps_used[i]), scheme=scheme)
        np.testing.assert_allclose(result.attributions[i], fixed.attributions[0], rtol=1e-6)


@pytest.mark.parametrize("kwargs,message", [
    ({"panels": 0}, "panels: must be a positive integer"),
    ({"panels": 2.0}, "panels: must be a positive integer"),
    ({"panels": 3}, r"panels: 3 panels must divide min_steps \(16\)"),
    ({"panels": 2, "scheme": "clenshaw-curtis"}, "needs a scheme whose weights halve under doubling"),
])
def test_bad_panels_are_one_line_errors(tanh_model, kwargs, message):
    with pytest.raises(AlzAuditError, match=message) as info:
        integrated_gradients(tanh_model, constant_images([4.0]), tolerance=0.01, **kwargs)
    assert "\n" not in str(info.value)


def test_panels_only_shape_the_adaptive_rounds(tanh_model):
    images = constant_images([20.0, 50.0])
    fixed = integrated_gradients(tanh_model, images, [0, 0], steps=12, scheme="graded", panels=5)
    plain = integrated_gradients(tanh_model, images, [0, 0], steps=12, scheme="graded")
    np.testing.assert_array_equal(fixed.attributions, plain.attributions)
    assert fixed.panel_steps.shape == (2, 1) and (fixed.steps_used == 12).all()


def test_the_plan_prices_ig_by_the_gates_scheme():
    from dataclasses import replace

    from audit.plan import IG_ROWS_PER_IMAGE, UnitCosts, plan_stages
    from audit.runner import AuditConfig

    costs = UnitCosts(forward=0.01, gradcam=0.01, ig_row=0.1)

    def ig_seconds(**changes) -> float:
        plans = plan_stages(200, replace(AuditConfig(), **changes), costs, n_sigmas=2)
        return next(p.seconds for p in plans if p.stage == "Integrated Gradients")

    assert set(IG_ROWS_PER_IMAGE) == set(SCHEMES)
    assert ig_seconds() == pytest.approx(64 * IG_ROWS_PER_IMAGE["graded"] * 0.1)
    assert ig_seconds(ig_scheme="trapezoid") == pytest.approx(64 * IG_ROWS_PER_IMAGE["trapezoid"] * 0.1)
    assert ig_seconds(ig_tolerance=0.0) == pytest.approx(64 * 129 * 0.1)            # fixed: steps + 1
    assert ig_seconds(ig_steps=16) == pytest.approx(64 * 17 * 0.1)                  # never above fixed
    assert IG_ROWS_PER_IMAGE["graded"] <= 32.5 < IG_ROWS_PER_IMAGE["trapezoid"]


def test_joined_results_equal_one_run_over_all_images(tanh_model):
    """The gate's plan explains a few IG images to learn IG's cost; the IG stage adds the rest and joins
    them: the same result, in the sample's order, as one run over every image."""
    from audit.explain.ig import join_results

    images = constant_images([4.0, 50.0, 120.0, 9.0, 30.0])
    settings = dict(tolerance=1e-3, min_steps=8, max_steps=64, scheme="graded", panels=2)
    whole = integrated_gradients(tanh_model, images, [0] * 5, **settings)
    probe, rest = [3, 1], [0, 2, 4]
    parts = [integrated_gradients(tanh_model, images[probe], [0, 0], **settings),
             integrated_gradients(tanh_model, images[rest], [0, 0, 0], **settings)]
    position = {j: i for i, j in enumerate(probe + rest)}
    joined = join_results(parts, np.array([position[j] for j in range(5)]))
    np.testing.assert_allclose(joined.attributions, whole.attributions, rtol=1e-6)
    np.testing.assert_array_equal(joined.steps_used, whole.steps_used)
    np.testing.assert_array_equal(joined.panel_steps, whole.panel_steps)
    assert joined.gradient_evaluations == whole.gradient_evaluations and joined.scheme == "graded"
