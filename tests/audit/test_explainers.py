"""Explainers: hand-checkable Grad-CAM and IG values, every model shape, blank images, the CLI.

Models are tiny (8x8 hand-set nets, the small backbone at 32-48 px) and built once per module.
"""
from __future__ import annotations

import csv

import numpy as np
import pytest

import keras

from alzaudit.cli import main as cli_main  # noqa: E402
from audit.explain import (candidate_layers, class_activation_maps, default_layer, gradcam,  # noqa: E402
                           gradcam_plus_plus, inline_nested, integrated_gradients, normalise_maps, overlay,
                           predict, saliency, smoothgrad)
from audit.explain.layers import gradient_model  # noqa: E402
from audit.explain.normalise import normalise_maps_tf  # noqa: E402
from model.errors import AlzAuditError  # noqa: E402

# Hand-set weights: conv 1x1 gives A1 = relu(x), A2 = relu(200 - x); GAP; Dense(3) with these weights.
CONV_KERNEL = np.array([1.0, -1.0], np.float32).reshape(1, 1, 1, 2)
CONV_BIAS = np.array([0.0, 200.0], np.float32)
HEAD_W = np.array([[1.0, -0.5, 0.2], [0.3, 1.0, -0.7]], np.float32)
HEAD_B = np.array([0.1, -0.2, 0.0], np.float32)


def _hand_models():
    """One set of layers, four shapes: flat functional, nested backbone, Sequential (and reloaded later)."""
    conv = keras.layers.Conv2D(2, 1, activation="relu", name="conv")
    pool = keras.layers.GlobalAveragePooling2D(name="pool")
    head = keras.layers.Dense(3, activation="softmax", name="predictions")

    inputs = keras.Input((8, 8, 1), name="image")
    flat = keras.Model(inputs, head(pool(conv(inputs))), name="flat")
    inner_in = keras.Input((8, 8, 1), name="inner_in")
    backbone = keras.Model(inner_in, conv(inner_in), name="backbone")
    outer_in = keras.Input((8, 8, 1), name="image")
    nested = keras.Model(outer_in, head(pool(backbone(outer_in))), name="nested")
    sequential = keras.Sequential([keras.Input((8, 8, 1)), conv, pool, head], name="sequential")
    conv.set_weights([CONV_KERNEL, CONV_BIAS])
    head.set_weights([HEAD_W, HEAD_B])
    return flat, nested, sequential


def _hand_cam(image: np.ndarray, target: int) -> np.ndarray:
    """Grad-CAM by hand: d logit_c / d A_k(i, j) = W[k, c] / 64, so alpha_k = W[k, c] / 64."""
    a1 = np.maximum(image, 0.0)
    a2 = np.maximum(200.0 - image, 0.0)
    cam = np.maximum(HEAD_W[0, target] / 64 * a1 + HEAD_W[1, target] / 64 * a2, 0.0)
    span = cam.max() - cam.min()
    return (cam - cam.min()) / span if span > 0 else np.zeros_like(cam)


@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    from model.network import load_model

    flat, nested, sequential = _hand_models()
    path = tmp_path_factory.mktemp("hand") / "nested.keras"
    nested.save(path)
    return {"flat": flat, "nested": nested, "sequential": sequential, "reloaded": load_model(path)}


@pytest.fixture(scope="module")
def hand_images():
    return np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1)).astype(np.float32)


@pytest.fixture(scope="module")
def small():
    from model.network import build_classifier

    return build_classifier("small", None, 48, seed=1)


@pytest.fixture(scope="module")
def small_images():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:48, :48]
    blobs = [((yy - 20 - 3 * i) ** 2 + (xx - 24) ** 2 < (6 + 3 * i) ** 2) * 180.0 + 30 for i in range(4)]
    return np.clip(np.stack(blobs) + rng.normal(0, 10, (4, 48, 48)), 0, 255).astype(np.float32)[..., None]


@pytest.fixture(scope="module")
def linear():
    """Flatten -> Dense(4, softmax): its logit is w . x + b, so IG(logit) = (x - x') * w exactly."""
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(4, activation="softmax", name="predictions")], name="linear")
    rng = np.random.default_rng(2)
    model.layers[-1].set_weights([rng.normal(0, 0.01, (64, 4)).astype(np.float32), np.zeros(4, np.float32)])
    return model


# ------------------------------------------------------------------------------------------ Grad-CAM
@pytest.mark.parametrize("shape", ["flat", "nested", "sequential", "reloaded"])
def test_gradcam_equals_hand_computed_map_for_every_class(hand, hand_images, shape):
    model = hand[shape]
    for target in range(3):
        maps = gradcam(model, hand_images, np.full(3, target))
        expected = np.stack([_hand_cam(im[..., 0], target) for im in hand_images])
        np.testing.assert_allclose(maps, expected, atol=2e-5)


def test_gradcam_uses_the_logit_not_the_saturated_probability(hand, hand_images):
    # Logits here are ~100 apart, so softmax gradients are ~e^-100: a probability-based map would be 0.
    probs = predict(hand["nested"], hand_images)
    assert probs.max(axis=1).min() > 0.999999
    maps = gradcam(hand["nested"], hand_images, 1)
    assert (maps.max(axis=(1, 2)) == 1.0).all()


def test_default_target_is_the_predicted_class(hand, hand_images):
    predicted = predict(hand["flat"], hand_images).argmax(axis=1)
    maps, explained = class_activation_maps(hand["flat"], hand_images)
    np.testing.assert_array_equal(explained, predicted)
    np.testing.assert_allclose(maps, gradcam(hand["flat"], hand_images, predicted), atol=1e-6)


def test_gradcam_plus_plus_same_across_model_shapes_and_differs_from_gradcam(hand, hand_images):
    maps = {name: gradcam_plus_plus(model, hand_images, 2) for name, model in hand.items()}
    for name in ("nested", "sequential", "reloaded"):
        np.testing.assert_allclose(maps[name], maps["flat"], atol=1e-6)
    # Class 2 has one negative channel weight: Grad-CAM keeps it, Grad-CAM++ drops it (ReLU on gradients).
    assert np.abs(maps["flat"] - gradcam(hand["flat"], hand_images, 2)).max() > 0.05
    assert maps["flat"].min() >= 0 and maps["flat"].max() == 1.0


def test_gradcam_plus_plus_matches_its_formula_by_hand(hand, hand_images):
    # For a linear-in-A score the gradient g_k = W[k, c] / 64 is constant per channel, so
    # alpha_k = g^2 / (2 g^2 + sum(A_k) g^3) and w_k = relu(g_k) * sum_ij alpha_k.
    target, image = 0, hand_images[0, ..., 0]
    acts = [np.maximum(image, 0), np.maximum(200 - image, 0)]
    weights = []
    for k in range(2):
        g = HEAD_W[k, target] / 64
        alpha = g * g / (2 * g * g + acts[k].sum() * g ** 3)
        weights.append(max(g, 0) * alpha * 64)
    cam = np.maximum(weights[0] * acts[0] + weights[1] * acts[1], 0)
    expected = (cam - cam.min()) / (cam.max() - cam.min())
    np.testing.assert_allclose(gradcam_plus_plus(hand["nested"], hand_images[:1], target)[0], expected, atol=2e-5)


def test_small_backbone_default_layer_is_found_inside_the_nested_model(small):
    assert default_layer(small) == "small_resnet/block4_out"
    flat = inline_nested(small)
    assert default_layer(flat) == "block4_out"
    assert "small_resnet/block2_out" in candidate_layers(small)


def test_flat_and_nested_small_backbone_give_identical_maps(small, small_images):
    flat = inline_nested(small)
    for explain in (gradcam, gradcam_plus_plus):
        nested_maps = explain(small, small_images, layer="small_resnet/block3_out")
        np.testing.assert_allclose(explain(flat, small_images, layer="block3_out"), nested_maps, atol=1e-5)
    maps = gradcam(small, small_images)
    assert maps.shape == (4, 48, 48) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() == 1.0


def test_gradient_model_is_built_once_per_model_and_layer(small):
    first, path = gradient_model(small)
    again, _ = gradient_model(small, path)
    assert first is again
    other, _ = gradient_model(small, "small_resnet/block3_out")
    assert other is not first


def test_frozen_backbone_still_gets_gradients(hand_images):
    flat, nested, _ = _hand_models()
    nested.get_layer("backbone").trainable = False
    np.testing.assert_allclose(gradcam(nested, hand_images, 0),
                               np.stack([_hand_cam(im[..., 0], 0) for im in hand_images]), atol=2e-5)


def test_wrong_layer_path_lists_candidates(small):
    with pytest.raises(AlzAuditError, match="no layer 'conv5_block3_out'.*small_resnet/block4_out"):
        gradcam(small, np.zeros((1, 48, 48, 1), np.float32), layer="small_resnet/conv5_block3_out")
    with pytest.raises(AlzAuditError, match="4-D"):
        gradcam(small, np.zeros((1, 48, 48, 1), np.float32), layer="avg_pool")
    with pytest.raises(AlzAuditError, match="not a nested model"):
        gradcam(small, np.zeros((1, 48, 48, 1), np.float32), layer="avg_pool/x")


def test_model_without_conv_layer_is_a_one_line_error(linear):
    with pytest.raises(AlzAuditError, match="no convolutional layer") as info:
        gradcam(linear, np.zeros((1, 8, 8, 1), np.float32))
    assert "\n" not in str(info.value) and "flatten" in str(info.value)


def test_bad_images_and_targets_are_user_errors(small):
    with pytest.raises(AlzAuditError, match="does not match the model input"):
        gradcam(small, np.zeros((1, 32, 32, 1), np.float32))
    with pytest.raises(AlzAuditError, match="class indices"):
        gradcam(small, np.zeros((2, 48, 48, 1), np.float32), targets=[0, 4])
    with pytest.raises(AlzAuditError, match="NaN"):
        gradcam(small, np.full((1, 48, 48, 1), np.nan, np.float32))


def test_sigmoid_head_falls_back_to_the_output_with_a_warning(hand_images):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 1, activation="relu", name="c")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="sigmoid")(x), name="multilabel")
    with pytest.warns(UserWarning, match="not a softmax"):
        maps = gradcam(model, hand_images)
    assert maps.shape == (3, 8, 8) and np.isfinite(maps).all()


def test_mixed_float16_model_matches_float32(small, small_images):
    from model.network import build_classifier

    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        half = build_classifier("small", None, 48, seed=1)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    half.set_weights(small.get_weights())
    assert half.get_layer("small_resnet").get_layer("block4_out").compute_dtype == "float16"
    for explain in (gradcam, gradcam_plus_plus):
        reference, maps = explain(small, small_images), explain(half, small_images)
        assert maps.dtype == np.float32 and np.isfinite(maps).all()
        assert np.abs(maps - reference).mean() < 0.02
    result = integrated_gradients(half, small_images[:1], steps=16, output="logit")
    assert np.isfinite(result.attributions).all()


# ------------------------------------------------------------------------------------------ blank images
def test_blank_image_gives_zeros_never_nan(small, hand):
    blank = np.zeros((2, 48, 48, 1), np.float32)
    for maps in (gradcam(small, blank), gradcam_plus_plus(small, blank),
                 integrated_gradients(small, blank, steps=4).heatmaps, saliency(small, blank),
                 smoothgrad(small, blank, n_samples=2)):
        assert maps.shape == (2, 48, 48) and not np.isnan(maps).any()
    assert (gradcam(small, blank) == 0).all()  # all activations are 0 -> constant map
    # The hand model on a blank image: A1 = 0, A2 = 200 everywhere -> a constant map -> zeros.
    assert (gradcam(hand["nested"], np.zeros((1, 8, 8, 1), np.float32), 1) == 0).all()


def test_normalise_maps_constant_nan_and_range():
    maps = np.stack([np.full((4, 4), 7.0), np.arange(16.0).reshape(4, 4), np.full((4, 4), np.nan)])
    maps[1, 0, 0] = np.inf
    out = normalise_maps(maps)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert (out[0] == 0).all() and (out[2] == 0).all()
    assert out[1].max() == 1.0 and out[1, 0, 0] == 0.0  # inf -> 0, then min-max over 0..15
    np.testing.assert_allclose(out[1, 0, 1], 1 / 15, rtol=1e-6)
    np.testing.assert_allclose(normalise_maps(np.array([[1.0, 3.0]])), [[0.0, 1.0]])
    assert (normalise_maps(np.full((3, 3), 1e9) + np.eye(3) * 1e-9) == 0).all()  # constant up to rounding
    # The in-graph twin used by the compiled Grad-CAM step agrees with it.
    np.testing.assert_allclose(normalise_maps_tf(maps.astype(np.float32)).numpy(), out, atol=1e-6)


# ------------------------------------------------------------------------------------------ IG
@pytest.mark.parametrize("baseline", ["black", "array"])
def test_ig_on_a_linear_model_is_exactly_input_delta_times_weight(linear, hand_images, baseline):
    kernel = linear.layers[-1].get_weights()[0]
    base = np.full((8, 8), 37.0, np.float32) if baseline == "array" else "black"
    base_array = np.zeros((8, 8, 1)) if baseline == "black" else np.full((8, 8, 1), 37.0)
    result = integrated_gradients(linear, hand_images, [0, 1, 3], baseline=base, steps=8, output="logit")
    for i, target in enumerate([0, 1, 3]):
        expected = (hand_images[i] - base_array) * kernel[:, target].reshape(8, 8, 1)
        np.testing.assert_allclose(result.attributions[i], expected, rtol=1e-5, atol=1e-6)
    assert result.completeness_error.max() < 1e-4
    assert result.attributions.shape == (3, 8, 8, 1) and result.heatmaps.shape == (3, 8, 8)
    np.testing.assert_array_equal(result.targets, [0, 1, 3])


def test_ig_completeness_on_the_small_cnn_at_default_steps(small, small_images):
    result = integrated_gradients(small, small_images, batch_size=48)  # 65 rows per image: batches span images
    assert result.steps == 64 and result.output == "logit" and result.gradient_evaluations == 4 * 65
    assert (result.steps_used == 64).all() and result.estimable.all() and result.converged.all()
    np.testing.assert_allclose(result.attributions.reshape(4, -1).sum(axis=1), result.delta,
                               atol=0.05 * np.abs(result.delta).max())
    assert (result.completeness_error < 0.05).all(), result.completeness_error
    np.testing.assert_array_equal(result.targets, predict(small, small_images).argmax(axis=1))


def test_ig_batching_does_not_change_the_result(small, small_images):
    one = integrated_gradients(small, small_images[:2], steps=8, batch_size=3, baseline="blur")
    many = integrated_gradients(small, small_images[:2], steps=8, batch_size=64, baseline="blur")
    np.testing.assert_allclose(one.attributions, many.attributions, rtol=1e-4, atol=1e-9)
    with pytest.raises(AlzAuditError, match="baseline"):
        integrated_gradients(small, small_images[:1], baseline="white")


def test_ig_default_output_is_the_logit_grad_cam_differentiates(small, small_images, linear, hand_images):
    # Linear model: IG of the logit w . x + b is exactly x * w, whatever the softmax does.
    kernel = linear.layers[-1].get_weights()[0]
    result = integrated_gradients(linear, hand_images, [0, 1, 3], steps=4)
    assert result.output == "logit"
    for i, target in enumerate([0, 1, 3]):
        np.testing.assert_allclose(result.attributions[i], hand_images[i] * kernel[:, target].reshape(8, 8, 1),
                                   rtol=1e-5, atol=1e-6)
    # Small CNN: delta is the logit from the head's own input, by hand, not the probability.
    features = keras.Model(small.input, small.get_layer("predictions").input)
    w, b = small.get_layer("predictions").get_weights()
    logits = lambda x: np.asarray(features(x, training=False), np.float64) @ w + b  # noqa: E731
    targets = np.array([0, 1, 2, 3])
    expected = (logits(small_images) - logits(np.zeros_like(small_images)))[np.arange(4), targets]
    default = integrated_gradients(small, small_images, targets, steps=8)
    np.testing.assert_allclose(default.delta, expected, rtol=1e-4, atol=1e-5)
    probability = integrated_gradients(small, small_images, targets, steps=8, output="probability")
    assert probability.output == "probability" and not np.allclose(probability.delta, expected)


# Trapezoid relative errors of the integral of U sech^2(U alpha) at 16/32/64/128 intervals:
# U=4: 1e-5 ..; U=20: 1e-2, 9e-6 ..; U=50: 0.59, 0.046, 1.7e-4 ..; U=200: 5.3, 2.1, 0.59, 0.046.
DIFFICULTY = np.array([4.0, 20.0, 50.0, 200.0])


def test_adaptive_ig_spends_steps_per_image_and_equals_fixed_ig_at_the_steps_used(tanh_model):
    images = np.broadcast_to(DIFFICULTY[:, None, None, None], (4, 4, 4, 1)).astype(np.float32)
    result = integrated_gradients(tanh_model, images, tolerance=1e-3, batch_size=7)
    np.testing.assert_array_equal(result.steps_used, [16, 32, 64, 128])
    np.testing.assert_array_equal(result.converged, [True, True, True, False])
    assert result.completeness_error[3] > 1e-3 and (result.completeness_error[:3] <= 1e-3).all()
    assert result.steps == 128 and result.tolerance == 1e-3 and result.estimable.all()
    assert result.gradient_evaluations == (result.steps_used + 1).sum()  # every gradient reused
    for i, used in enumerate(result.steps_used):
        fixed = integrated_gradients(tanh_model, images[i:i + 1], steps=int(used), batch_size=64)
        np.testing.assert_allclose(result.attributions[i], fixed.attributions[0], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(result.completeness_error[i], fixed.completeness_error[0], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(result.delta[i], fixed.delta[0], rtol=1e-6)
        np.testing.assert_allclose(result.heatmaps[i], fixed.heatmaps[0], atol=1e-6)


def test_adaptive_ig_costs_less_than_fixed_steps_where_images_converge_early(tanh_model):
    images = np.broadcast_to(DIFFICULTY[:2, None, None, None], (2, 4, 4, 1)).astype(np.float32)
    adaptive = integrated_gradients(tanh_model, images, tolerance=1e-3)
    fixed = integrated_gradients(tanh_model, images, steps=64)
    assert adaptive.gradient_evaluations == 17 + 33 < fixed.gradient_evaluations == 2 * 65
    assert adaptive.converged.all() and fixed.converged.all()  # no tolerance: converged = estimable


def test_adaptive_ig_never_exceeds_max_steps(tanh_model):
    images = np.full((2, 4, 4, 1), 200.0, np.float32)
    capped = integrated_gradients(tanh_model, images, tolerance=1e-3, min_steps=8, max_steps=100)
    assert capped.steps == 64 and (capped.steps_used == 64).all() and not capped.converged.any()
    assert capped.gradient_evaluations == 2 * 65
    assert (integrated_gradients(tanh_model, images, tolerance=1e-3, min_steps=4, max_steps=4).steps_used == 4).all()


def test_not_estimable_completeness_is_nan_and_never_loops(linear, hand_images):
    from audit.quality import convergence

    inputs = keras.Input((8, 8, 1))
    blind = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", kernel_initializer="zeros",
                                                   bias_initializer="ones")(keras.layers.Flatten()(inputs)))
    for result in (integrated_gradients(blind, hand_images, tolerance=0.01),  # logit ignores the input
                   integrated_gradients(blind, hand_images, steps=8),
                   integrated_gradients(linear, hand_images, baseline=hand_images, tolerance=0.01)):  # x == x'
        assert np.isnan(result.completeness_error).all() and not result.estimable.any()
        assert not result.converged.any() and (result.delta == 0).all()
        assert np.isfinite(result.attributions).all() and (result.heatmaps == 0).all()
    assert (result.steps_used == 16).all() and result.gradient_evaluations == 3 * 17
    # One estimable image beside them: only it enters the summary; the rest are counted apart.
    mixed = integrated_gradients(linear, hand_images, baseline=np.stack([hand_images[0], 0 * hand_images[0],
                                                                         hand_images[2]]), steps=8)
    np.testing.assert_array_equal(mixed.estimable, [False, True, False])
    summary = convergence(mixed.completeness_error).summary
    assert summary["n"] == 1 and summary["n_not_estimable"] == 2 and summary["median"] < 1e-4


@pytest.mark.parametrize("kwargs,message", [
    ({"tolerance": 0.0}, "tolerance: must be a positive number"),
    ({"tolerance": "tight"}, "tolerance: must be a positive number"),
    ({"tolerance": 0.01, "min_steps": 32, "max_steps": 16}, "max_steps: must be at least min_steps"),
    ({"tolerance": 0.01, "min_steps": 0}, "min_steps: must be at least 1"),
    ({"steps": 0}, "^steps: must be at least 1"),  # the parameter, not a CLI flag
    ({"output": "softmax"}, "unknown IG output"),
])
def test_ig_option_errors_are_one_line(linear, hand_images, kwargs, message):
    with pytest.raises(AlzAuditError, match=message) as info:
        integrated_gradients(linear, hand_images, **kwargs)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------ SmoothGrad
def test_smoothgrad_without_noise_is_the_wrapped_explainer(hand, hand_images):
    wrapped = smoothgrad(hand["nested"], hand_images, [0, 1, 2], explainer=gradcam, noise_level=0.0, n_samples=3)
    np.testing.assert_allclose(wrapped, gradcam(hand["nested"], hand_images, [0, 1, 2]), atol=1e-6)


def test_smoothgrad_is_seeded_and_smooths(small, small_images):
    a = smoothgrad(small, small_images[:2], n_samples=4, seed=3)
    b = smoothgrad(small, small_images[:2], n_samples=4, seed=3)
    np.testing.assert_array_equal(a, b)
    raw = saliency(small, small_images[:2])
    # Averaging noisy gradients lowers pixel-to-pixel variation.
    assert np.abs(np.diff(a, axis=2)).mean() < np.abs(np.diff(raw, axis=2)).mean()


# ------------------------------------------------------------------------------------------ overlay
def test_overlay_blends_the_colormap_over_gray():
    image = np.tile(np.linspace(0, 255, 20, dtype=np.float32), (10, 1))
    heat = np.zeros((5, 10), np.float32)
    heat[:, 5:] = 1.0
    out = overlay(image, heat, alpha=0.0)
    assert out.shape == (10, 20, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], np.round(image).astype(np.uint8))
    full = overlay(image, heat, alpha=1.0)
    np.testing.assert_array_equal(full[0, 0], [0, 0, 128])  # jet at 0 is dark blue, in RGB order
    np.testing.assert_array_equal(full[0, -1], [128, 0, 0])  # jet at 1 is dark red
    assert (overlay(image, np.full((10, 20), np.nan)) >= 0).all()
    with pytest.raises(AlzAuditError, match="colormap"):
        overlay(image, heat, colormap="rainbowz")


# ------------------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def cli_files(tmp_path_factory, small, linear, small_images):
    import cv2

    root = tmp_path_factory.mktemp("explain_cli")
    small.save(root / "small.keras")
    linear.save(root / "linear.keras")
    for i, image in enumerate(small_images[:2]):
        cv2.imwrite(str(root / f"slice{i}.png"), cv2.resize(image[..., 0], (60, 52)).astype(np.uint8))
    (root / "corrupt.png").write_bytes(b"not a png")
    return root


@pytest.mark.parametrize("method,tag", [("gradcam", "gradcam"), ("gradcam++", "gradcampp"), ("ig", "ig")])
def test_explain_cli_writes_labelled_overlays_and_csv(cli_files, method, tag):
    import cv2

    out = cli_files / f"out_{tag}"
    images = [str(cli_files / "slice0.png"), str(cli_files / "slice1.png")]
    rc = cli_main(["explain", "--model", str(cli_files / "small.keras"), "--images", *images,
                   "--method", method, "--out", str(out), "--steps", "8"])
    assert rc == 0
    rows = list(csv.DictReader((out / "explanations.csv").open()))
    assert [row["overlay"] for row in rows] == [f"slice0_{tag}.png", f"slice1_{tag}.png"]
    assert all(row["predicted"] == row["explained"] and 0 < float(row["probability"]) <= 1 for row in rows)
    assert (rows[0]["completeness_error"] != "") == (method == "ig")
    written = cv2.imread(str(out / f"slice0_{tag}.png"))
    assert written.shape == (52, 60, 3)


def test_explain_cli_errors_are_one_line(cli_files, capsys):
    model = str(cli_files / "small.keras")
    cases = [
        (["--model", model, "--images", str(cli_files / "corrupt.png")], "corrupt"),
        (["--model", model, "--images", str(cli_files / "slice0.png"), "--method", "lime"], "unknown method"),
        (["--model", str(cli_files / "linear.keras"), "--images", str(cli_files / "slice0.png")],
         "no convolutional layer"),
        (["--model", model, "--images", str(cli_files / "slice0.png"), "--target", "Healthy"], "unknown class"),
    ]
    for argv, message in cases:
        assert cli_main(["explain", *argv, "--out", str(cli_files / "err")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and "Traceback" not in err
