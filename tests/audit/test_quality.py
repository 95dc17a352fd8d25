"""Proof tests of the explanation-quality metrics (audit/quality/), with tiny models and test-local explainers."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.ndimage import sobel

from audit.quality import (MetricResult, agreement, cascading_randomization, convergence, faithfulness,
                           independent_randomization, localization, passes_sanity, stability, to_jsonable)
from audit.quality.agreement import to_grid, top_region
from audit.quality.base import normalize_maps, spearman_rows, ssim_pairs
from audit.quality.faithfulness import blurred_baseline
from audit.quality.randomization import randomization_groups
from model.errors import AlzAuditError

SIZE = 32


# ---------------------------------------------------------------------------------------------- helpers

def _all_finite(obj) -> bool:
    """Every MetricResult / array / number inside ``obj`` is finite, and the JSON form has no NaN."""
    json.dumps(to_jsonable(obj), allow_nan=False)
    if isinstance(obj, MetricResult):
        return bool(np.isfinite(obj.per_sample).all())
    if isinstance(obj, dict):
        return all(_all_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_all_finite(v) for v in obj)
    if isinstance(obj, np.ndarray) and obj.dtype.kind == "f":
        return bool(np.isfinite(obj).all())
    if isinstance(obj, float):
        return bool(np.isfinite(obj))
    return True


def _blob_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise images with a bright square top-left (class 0) or bottom-right (class 1)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 60, (n, SIZE, SIZE, 1)).astype(np.float32)
    y = np.arange(n) % 2
    for i in range(n):
        r, c = (rng.integers(2, 8), rng.integers(2, 8)) if y[i] == 0 else \
            (rng.integers(18, 24), rng.integers(18, 24))
        x[i, r:r + 8, c:c + 8] = rng.uniform(180, 255)
    return x, y


def grad_explainer(model, images, targets=None, *, batch_size=32):
    """|d score_target / d input|, batched: a minimal gradient explainer owned by these tests."""
    import tensorflow as tf

    images = np.asarray(images, np.float32)
    out = []
    for s in range(0, len(images), batch_size):
        xb = tf.convert_to_tensor(images[s:s + batch_size])
        with tf.GradientTape() as tape:
            tape.watch(xb)
            p = model(xb, training=False)
            t = tf.argmax(p, axis=1) if targets is None else tf.constant(np.asarray(targets)[s:s + batch_size])
            score = tf.gather(p, tf.cast(t, tf.int32), axis=1, batch_dims=1)
        out.append(np.abs(tape.gradient(score, xb).numpy()[..., 0]))
    return np.concatenate(out).astype(np.float32)


def grad_x_input_explainer(model, images, targets=None, *, batch_size=32):
    return grad_explainer(model, images, targets, batch_size=batch_size) * np.asarray(images)[..., 0]


def sobel_explainer(model, images, targets=None, *, batch_size=32):
    """Model-independent edge map: the kind of 'explanation' the sanity check must catch."""
    x = np.asarray(images, np.float32)[..., 0]
    return np.hypot(sobel(x, axis=1), sobel(x, axis=2)).astype(np.float32)


def random_explainer(model, images, targets=None, *, batch_size=32):
    return np.random.default_rng(len(images)).random(np.asarray(images).shape[:3]).astype(np.float32)


# --------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def keras():
    import keras as k
    k.utils.set_random_seed(0)
    return k


@pytest.fixture(scope="module")
def data():
    return _blob_images(64, seed=1)


@pytest.fixture(scope="module")
def trained(keras, data):
    """A small flat functional CNN trained a few epochs to tell the two blob positions apart."""
    L = keras.layers
    inp = keras.Input((SIZE, SIZE, 1))
    x = L.Rescaling(1 / 255.0)(inp)
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv_a")(x)
    x = L.MaxPooling2D()(x)
    x = L.Conv2D(16, 3, padding="same", name="conv_b")(x)
    x = L.BatchNormalization(name="bn_b")(x)
    x = L.Activation("relu")(x)
    x = L.MaxPooling2D()(x)
    x = L.Flatten()(x)
    out = L.Dense(2, activation="softmax", name="head")(x)
    model = keras.Model(inp, out)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    xs, ys = _blob_images(256, seed=2)
    model.fit(xs, ys, epochs=6, batch_size=32, verbose=0)
    x_test, y_test = data
    assert (model.predict(x_test, verbose=0).argmax(1) == y_test).mean() > 0.9
    return model


@pytest.fixture(scope="module")
def constant_model(keras):
    """Ignores its input: the output is a function of a zeroed tensor only."""
    L = keras.layers
    inp = keras.Input((SIZE, SIZE, 1))
    x = L.Lambda(lambda t: t * 0.0)(inp)
    x = L.GlobalAveragePooling2D()(x)
    out = L.Dense(2, activation="softmax", bias_initializer=keras.initializers.Constant([0.3, -0.3]))(x)
    return keras.Model(inp, out)


# -------------------------------------------------------------------------------------------- base

def test_metric_result_summary_and_json_have_no_nan():
    r = MetricResult("m", np.array([1.0, np.nan, 3.0, 2.0]), True, ["paper"])
    assert r.summary["n"] == 3 and r.summary["mean"] == pytest.approx(2.0) and r.summary["median"] == 2.0
    d = r.to_dict()
    assert d["per_sample"][1] is None and d["higher_is_better"] is True and d["cites"] == ["paper"]
    json.dumps(d, allow_nan=False)
    empty = MetricResult("e", np.array([np.nan]), False, []).to_dict()
    assert empty["summary"] == {"mean": None, "median": None, "p5": None, "p95": None, "n": 0}


def test_normalize_constant_map_is_zero_and_ssim_of_zero_maps_is_one():
    maps = np.stack([np.full((16, 16), 7.0), np.zeros((16, 16)), np.arange(256.0).reshape(16, 16)])
    norm = normalize_maps(maps)
    assert np.all(norm[:2] == 0) and norm[2].min() == 0 and norm[2].max() == 1
    assert ssim_pairs(norm[:1], norm[1:2])[0] == pytest.approx(1.0)
    assert spearman_rows(norm[:1], norm[1:2])[0] == 1.0 and spearman_rows(norm[:1], norm[2:])[0] == 0.0


# -------------------------------------------------------------------------------------------- agreement

def test_agreement_with_itself_is_one():
    maps = np.random.default_rng(0).random((8, 64, 64)).astype(np.float32)
    res = agreement(maps, maps)
    assert set(res) == {"spearman", "iou_top20", "ssim"}
    for r in res.values():
        assert np.allclose(r.per_sample, 1.0) and r.higher_is_better and r.cites


def test_agreement_with_unrelated_maps_is_chance():
    rng = np.random.default_rng(1)
    a, b = rng.random((64, 64, 64)), rng.random((64, 64, 64))
    res = agreement(a, b)
    assert abs(res["spearman"].mean) < 0.05
    assert abs(res["ssim"].mean) < 0.05
    assert res["iou_top20"].mean == pytest.approx(0.2 / 1.8, abs=0.03)  # chance level f/(2-f)
    assert res["spearman"].summary["p5"] < res["spearman"].summary["median"]


def test_agreement_grid_and_top_region():
    maps = np.zeros((2, 56, 56), np.float32)
    maps[0, :28, :28] = 1.0
    grid = to_grid(maps, grid=28, sigma=0.0)
    assert grid.shape == (2, 28, 28) and grid[0, :14, :14].min() == 1.0 and grid[0, 14:, 14:].max() == 0
    region = top_region(grid, 0.2)
    assert region[0].sum() == 14 * 14  # ties at the floor are not added to the top region
    assert region[1].sum() == 0  # a constant map has no top region
    assert agreement(maps, maps, top_fraction=0.1).keys() == {"spearman", "iou_top10", "ssim"}

    class Result:  # an explainer result object (like IG's) is read through its .heatmaps
        heatmaps = maps
    assert np.allclose(agreement(Result(), maps)["ssim"].per_sample, 1.0)


def test_agreement_of_constant_and_zero_maps_is_finite():
    zeros = np.zeros((3, 32, 32), np.float32)
    const = np.full((3, 32, 32), 5.0, np.float32)
    rand = np.random.default_rng(2).random((3, 32, 32)).astype(np.float32)
    for a, b in [(zeros, zeros), (zeros, rand), (const, rand), (const, zeros)]:
        assert _all_finite(agreement(a, b))
    same = agreement(zeros, const)
    assert all(np.allclose(r.per_sample, 1.0) for r in same.values())


# -------------------------------------------------------------------------------------------- stability

def test_stability_sigma_zero_is_perfectly_stable(trained, data):
    x = data[0][:8]
    calls = []

    def counting(model, images, targets=None, *, batch_size=32):
        calls.append(len(images))
        return grad_explainer(model, images, targets)

    res = stability(trained, counting, x, sigmas=(0.0, 0.05), draws=3)
    assert calls == [8, 2 * 3 * 8]  # the clean maps, then every noisy copy in one call
    assert np.allclose(res["ssim"]["0"].per_sample, 1.0, atol=1e-6)
    assert np.all(res["flip_rate"]["0"].per_sample == 0)
    assert res["ssim"]["0.05"].mean < 1.0 and not res["flip_rate"]["0.05"].higher_is_better
    ex = res["examples"]["0.05"]
    assert ex["image"].shape == ex["noisy_map"].shape == (SIZE, SIZE)
    assert ex["noisy_image"].min() >= 0 and ex["noisy_image"].max() <= 255
    assert not np.array_equal(ex["image"], ex["noisy_image"])
    assert _all_finite({k: res[k] for k in ("ssim", "flip_rate")})


def test_stability_of_a_model_that_ignores_its_input_is_one(constant_model, data):
    x = data[0][:6]
    maps = grad_x_input_explainer(constant_model, x)
    assert np.all(maps == 0)
    res = stability(constant_model, grad_x_input_explainer, x, sigmas=(0.02, 0.05), draws=2)
    for key in ("0.02", "0.05"):
        assert np.all(res["ssim"][key].per_sample == 1.0)
        assert np.all(res["flip_rate"][key].per_sample == 0.0)
    assert _all_finite({k: res[k] for k in ("ssim", "flip_rate")})


def test_stability_detects_an_unstable_explainer(trained, data):
    res = stability(trained, random_explainer, data[0][:6], sigmas=(0.02,), draws=2, clean_maps=None)
    assert res["ssim"]["0.02"].mean < 0.3


def test_stability_counts_prediction_flips():
    """A decision on a knife edge (mean intensity vs. 127.5) flips under noise; the map here cannot change."""
    x = np.full((10, SIZE, SIZE, 1), 127.5, np.float32)
    x[:, 0, 0, 0] += np.linspace(-0.3, 0.3, 10)

    def predict(batch):
        p = (np.asarray(batch).mean(axis=(1, 2, 3)) > 127.5).astype(np.float32)
        return np.stack([1 - p, p], axis=1)

    res = stability(None, sobel_explainer, x, sigmas=(0.0, 0.05), draws=4, predict_fn=predict)
    assert res["flip_rate"]["0"].mean == 0.0
    assert 0.2 < res["flip_rate"]["0.05"].mean < 0.8
    again = stability(None, sobel_explainer, x, sigmas=(0.0, 0.05), draws=4, predict_fn=predict)
    assert np.array_equal(again["ssim"]["0.05"].per_sample, res["ssim"]["0.05"].per_sample)  # seeded


def test_stability_takes_the_noisy_predictions_from_the_explainers_own_pass():
    """With ``explain_and_predict`` the noisy copies go through the model once (maps and predictions
    together) and the clean predictions are the ones given: the same figures as the two-pass path."""
    x = np.full((10, SIZE, SIZE, 1), 127.5, np.float32)
    x[:, 0, 0, 0] += np.linspace(-0.3, 0.3, 10)
    calls = []

    def predict(batch):
        calls.append(len(batch))
        p = (np.asarray(batch).mean(axis=(1, 2, 3)) > 127.5).astype(np.float32)
        return np.stack([1 - p, p], axis=1)

    def explain_and_predict(model, batch, targets):
        return sobel_explainer(model, batch, targets), (np.asarray(batch).mean(axis=(1, 2, 3)) > 127.5).astype(int)

    two_pass = stability(None, sobel_explainer, x, sigmas=(0.05,), draws=4, predict_fn=predict)
    assert sum(calls) == 10 + 40
    calls.clear()
    clean = predict(x).argmax(axis=1)
    calls.clear()
    one_pass = stability(None, sobel_explainer, x, sigmas=(0.05,), draws=4, predict_fn=predict,
                         clean_predictions=clean, explain_and_predict=explain_and_predict)
    assert calls == []  # no prediction pass at all
    assert np.array_equal(one_pass["flip_rate"]["0.05"].per_sample, two_pass["flip_rate"]["0.05"].per_sample)
    assert np.array_equal(one_pass["ssim"]["0.05"].per_sample, two_pass["ssim"]["0.05"].per_sample)
    assert one_pass["flip_rate"]["0.05"].mean > 0  # the knife-edge decision does flip


def test_cam_maps_and_predictions_come_from_one_pass(trained, data):
    from audit.explain import gradcam
    from audit.explain.gradcam import maps_and_predictions

    x = data[0][:8]
    maps, predicted = maps_and_predictions(trained, x, np.zeros(8, dtype=int))
    assert np.allclose(maps, gradcam(trained, x, np.zeros(8, dtype=int)), atol=1e-6)
    assert np.array_equal(predicted, trained.predict(x, verbose=0).argmax(axis=1))


# ---------------------------------------------------------------------------------------- faithfulness

REGION = (slice(4, 12), slice(4, 12))


def region_model(images: np.ndarray) -> np.ndarray:
    """Class-1 probability rises with the mean brightness of one known 8x8 region, and nothing else."""
    mean = np.asarray(images)[:, REGION[0], REGION[1], 0].mean(axis=(1, 2)) / 255.0
    p = 1.0 / (1.0 + np.exp(-20.0 * (mean - 0.5)))
    return np.stack([1 - p, p], axis=1)


@pytest.fixture(scope="module")
def region_data():
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 40, (6, SIZE, SIZE, 1)).astype(np.float32)
    x[:, REGION[0], REGION[1]] = 250.0
    right = np.zeros((6, SIZE, SIZE), np.float32)
    right[:, REGION[0], REGION[1]] = 1.0
    wrong = np.zeros((6, SIZE, SIZE), np.float32)
    wrong[:, 20:28, 20:28] = 1.0
    return x, right, wrong, np.ones(6, dtype=int)


def test_faithfulness_rewards_the_right_region(region_data):
    x, right, wrong, targets = region_data
    seen = []

    def predict(batch):
        seen.append(len(batch))
        return region_model(batch)

    good = faithfulness(predict, x, right, targets, steps=16, blur_sigma=6.0, batch_size=40)
    # every inner step of heat + random, del + ins; the curves' shared ends (image, baseline) once per image
    assert max(seen) <= 40 and sum(seen) == 6 * (4 * 15 + 2)
    assert good["deletion_gain"].mean > 0.1 and good["insertion_gain"].mean > 0.1
    assert good["deletion_auc"].mean < good["deletion_auc_random"].mean
    bad = faithfulness(region_model, x, wrong, targets, steps=16, blur_sigma=6.0)
    assert bad["deletion_gain"].mean <= 0.02 and bad["insertion_gain"].mean <= 0.02
    curves = good["curves"]
    assert len(curves["fraction"]) == 17 and curves["fraction"][0] == 0 and curves["fraction"][-1] == 1
    assert curves["deletion"][0] == pytest.approx(curves["insertion"][-1])  # both are the untouched image
    assert curves["deletion"][-1] == pytest.approx(curves["insertion"][0])  # both are the baseline
    # The shared ends are what a step-by-step stack of every order would have computed.
    blurred = region_model(blurred_baseline(x, 6.0))[:, 1].mean()
    assert curves["insertion"][0] == pytest.approx(blurred) and curves["insertion_random"][0] == pytest.approx(blurred)
    assert good["deletion_gain"].higher_is_better and not good["deletion_auc"].higher_is_better


def test_faithfulness_at_chosen_points_is_the_trapezoid_over_those_points(region_data):
    """The gate's graded points are a subset of the equal-step grid: their AUCs are the trapezoid over the
    same curve values at fewer points, for a fraction of the passes."""
    from audit.quality.faithfulness import faithfulness_curves, summarize_curves

    x, right, _, targets = region_data
    seen = []

    def predict(batch):
        seen.append(len(batch))
        return region_model(batch)

    fine, fraction, names = faithfulness_curves(predict, x, right, targets, steps=20, blur_sigma=6.0)
    seen.clear()
    points = [0.05, 0.15, 0.35, 0.65]
    coarse = faithfulness(predict, x, right, targets, fractions=[0.0, *points, 1.0], blur_sigma=6.0)
    assert sum(seen) == 6 * (2 * 2 * len(points) + 2)  # heat + random pixels, del + ins, shared ends once
    keep = [0, 1, 3, 7, 13, 20]
    expected = summarize_curves(fine[..., keep], fraction[keep], names, set())
    assert np.allclose(coarse["score"].per_sample, expected["score"].per_sample)
    assert coarse["curves"]["fraction"] == pytest.approx([0.0, *points, 1.0], abs=1e-3)
    for bad in ([0.2, 0.5, 1.0], [0.0, 0.5, 0.4, 1.0], [0.0, 1.0, 1.0]):
        with pytest.raises(AlzAuditError, match="fractions"):
            faithfulness(region_model, x, right, targets, fractions=bad)


def test_faithfulness_of_constant_map_is_finite_and_near_random(region_data):
    x, _, _, targets = region_data
    res = faithfulness(region_model, x, np.zeros(x.shape[:3]), targets, steps=10, blur_sigma=6.0)
    assert _all_finite(res)
    assert abs(res["deletion_gain"].mean) < 0.15 and abs(res["insertion_gain"].mean) < 0.15


# --------------------------------------------------------------------------------------- randomization

def test_randomization_of_a_trained_model_changes_gradient_maps(trained, data):
    x, y = data[0][:12], data[1][:12]
    before = [w.copy() for w in trained.get_weights()]
    res = cascading_randomization(trained, grad_explainer, x, y)
    after = trained.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after))  # the caller's model is untouched
    assert res["cloned"] and res["order"] == ["head", "conv_b", "conv_a"]
    assert res["stages"]["conv_b"]["layers"] == ["bn_b", "conv_b"]  # a conv and its batch norm together
    for stage in res["stages"].values():
        assert not stage["spearman"].higher_is_better and stage["spearman"].cites
    assert res["max_similarity"]["spearman"] < 0.5
    assert passes_sanity(res, max_similarity=0.5)
    again = cascading_randomization(trained, grad_explainer, x, y, n_stages=2)
    assert np.allclose(again["stages"]["head"]["spearman"].per_sample, res["stages"]["head"]["spearman"].per_sample)
    assert _all_finite({k: res[k] for k in ("stages", "max_similarity", "final_similarity")})


def test_model_independent_edge_map_fails_the_sanity_check(trained, data):
    x, y = data[0][:8], data[1][:8]
    res = cascading_randomization(trained, sobel_explainer, x, y, n_stages=2)
    assert len(res["order"]) == 2 and res["order"][-1] == "conv_a"  # the last stage re-initialises the rest
    assert res["stages"]["conv_a"]["layers"] == ["bn_b", "conv_b", "conv_a"]
    assert res["final_similarity"]["spearman"] > 0.99 and res["max_similarity"]["ssim"] > 0.99
    assert not passes_sanity(res, max_similarity=0.5)
    assert not passes_sanity(res, max_similarity=0.5, metric="ssim", which="final")


def test_randomization_of_nested_backbone_and_sequential_models(keras, data):
    L = keras.layers
    x, y = data[0][:4], data[1][:4]
    # A nested backbone with block-named layers, behind a weightless Lambda that Keras cannot re-create.
    bb_in = keras.Input((SIZE, SIZE, 3))
    h = bb_in
    for block in (1, 2):
        h = L.Conv2D(4, 3, padding="same", name=f"conv5_block{block}_1_conv")(h)
        h = L.BatchNormalization(name=f"conv5_block{block}_1_bn")(h)
        h = L.Activation("relu", name=f"conv5_block{block}_out")(h)
    backbone = keras.Model(bb_in, h, name="backbone")
    inp = keras.Input((SIZE, SIZE, 1))
    z = L.Lambda(lambda t: keras.ops.repeat(t / 255.0, 3, axis=-1))(inp)
    z = L.Flatten()(backbone(z))
    nested = keras.Model(inp, L.Dense(2, activation="softmax", name="logits")(z))
    labels = [g.label for g in randomization_groups(nested)]
    assert labels == ["logits", "backbone/conv5_block2", "backbone/conv5_block1"]
    before = [w.copy() for w in nested.get_weights()]
    res = cascading_randomization(nested, grad_explainer, x, y)
    # The cascade runs by backbone stage: both conv5 blocks are re-initialised together.
    assert res["cloned"] and res["order"] == ["logits", "backbone/conv5"]
    assert res["gate_stage"] == "backbone/conv5" and res["n_head_stages"] == 1
    assert all(np.array_equal(a, b) for a, b in zip(before, nested.get_weights()))
    assert _all_finite(res["stages"])

    seq = keras.Sequential([keras.Input((SIZE, SIZE, 1)), L.Rescaling(1 / 255.0), L.Conv2D(4, 3, name="c1"),
                            L.Flatten(), L.Dense(2, activation="softmax", name="out")])
    before = [w.copy() for w in seq.get_weights()]
    ind = independent_randomization(seq, grad_explainer, x, y)
    assert ind["mode"] == "independent" and ind["order"] == ["out", "c1"]
    assert all(np.array_equal(a, b) for a, b in zip(before, seq.get_weights()))
    assert all(s["ssim"].summary["n"] == 4 for s in ind["stages"].values())


def test_randomization_of_an_uncloneable_model_restores_its_weights(keras, data):
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.flat = keras.layers.Flatten()
            self.out = keras.layers.Dense(2, activation="softmax")

        def call(self, x):
            return self.out(self.flat(x / 255.0))

    model = Subclassed()
    x, y = data[0][:4], data[1][:4]
    model(x)
    before = [w.copy() for w in model.get_weights()]
    res = cascading_randomization(model, grad_explainer, x, y)
    assert res["cloned"] is False and len(res["order"]) == 1
    assert res["max_similarity"]["spearman"] < 0.9
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_randomization_rejects_a_model_without_weights(keras, data):
    inp = keras.Input((SIZE, SIZE, 1))
    bare = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(inp))
    with pytest.raises(AlzAuditError, match="no weights"):
        cascading_randomization(bare, sobel_explainer, data[0][:2], data[1][:2])


# ---------------------------------------------------------------------------------------- localization

@pytest.fixture(scope="module")
def masks():
    m = np.zeros((5, SIZE, SIZE), bool)
    m[:, 12:20, 12:20] = True
    m[4] = False  # nothing to localise: excluded
    return m


def test_map_equal_to_mask_scores_one_and_complement_zero(masks):
    perfect = localization(masks.astype(np.float32), masks, tolerance=2)
    assert perfect["n_evaluated"] == 4 and perfect["n_excluded_empty_mask"] == 1 and perfect["indices"] == [0, 1, 2, 3]
    for key in ("energy_pointing", "pointing_game", "auprc"):
        assert np.allclose(perfect[key].per_sample, 1.0) and perfect[key].higher_is_better
    inverse = localization((~masks).astype(np.float32), masks, tolerance=2)
    assert np.allclose(inverse["energy_pointing"].per_sample, 0.0)
    assert np.all(inverse["pointing_game"].per_sample == 0.0)
    assert inverse["auprc"].mean < 0.1 and inverse["auprc"].mean == pytest.approx(inverse["auprc_chance"])


def test_pointing_game_tolerance_and_outside_brain(masks):
    near = np.zeros(masks.shape, np.float32)
    near[:, 22, 16] = 1.0  # 3 pixels below the mask's last row
    assert np.all(localization(near, masks, tolerance=3)["pointing_game"].per_sample == 1.0)
    assert np.all(localization(near, masks, tolerance=2)["pointing_game"].per_sample == 0.0)
    brain = np.zeros(masks.shape, bool)
    brain[:, 4:28, 4:28] = True
    brain[0] = False  # no brain mask: excluded from the shortcut share
    frame = np.zeros(masks.shape, np.float32)
    frame[:, :2, :] = 1.0  # all mass in the image border
    res = localization(frame, masks, brain_masks=brain)
    assert np.allclose(res["outside_brain"].per_sample, 1.0) and not res["outside_brain"].higher_is_better
    assert res["n_excluded_empty_brain"] == 1 and res["outside_brain"].summary["n"] == 4
    inside = localization(masks.astype(np.float32), masks, brain_masks=brain)
    assert np.allclose(inside["outside_brain"].per_sample, 0.0)


def test_localization_of_zero_and_constant_maps_is_finite(masks):
    for maps in (np.zeros(masks.shape), np.full(masks.shape, 3.0)):
        res = localization(maps, masks, brain_masks=masks)
        assert _all_finite(res)
        assert np.all(res["energy_pointing"].per_sample == 0) and np.all(res["pointing_game"].per_sample == 0)


def test_localization_rejects_mismatched_masks(masks):
    with pytest.raises(AlzAuditError, match="shape"):
        localization(np.zeros((5, 16, 16)), masks)


# ----------------------------------------------------------------------------------------- convergence

def test_convergence_is_lower_better_absolute_error():
    r = convergence(np.array([-0.1, 0.05, 0.0, np.nan]))
    assert not r.higher_is_better and r.summary["n"] == 3 and r.summary["mean"] == pytest.approx(0.05)
    assert r.summary["n_not_estimable"] == 1  # NaN = not estimable: counted apart, not in n
    assert "Sundararajan" in r.cites[0]
    assert to_jsonable(r)["per_sample"][-1] is None


# ------------------------------------------------------------------------------ controls, skill, stages

def test_control_maps_are_image_only_scaled_and_deterministic():
    from audit.quality.controls import CONTROLS, control_maps, edge_maps, foreground_masks

    x, _ = _blob_images(6, 3)
    x[:, :4] = 0.0  # a dark band: background for the Otsu foreground
    maps = control_maps(x, seed=5, keys=np.arange(10, 16))
    assert set(maps) == set(CONTROLS)
    for name, m in maps.items():
        assert m.shape == (6, SIZE, SIZE) and m.dtype == np.float32 and m.min() >= 0 and m.max() <= 1, name
    again = control_maps(x[2:3], seed=5, keys=[12])
    assert np.allclose(again["random"][0], maps["random"][2])  # same image key -> same random map
    assert not np.allclose(maps["random"][0], maps["random"][1])
    assert np.allclose(maps["centre"][0], maps["centre"][5]) and maps["centre"][0].argmax() in (
        SIZE * (SIZE // 2 - 1) + SIZE // 2 - 1, SIZE * (SIZE // 2) + SIZE // 2 - 1, SIZE * (SIZE // 2 - 1) + SIZE // 2,
        SIZE * (SIZE // 2) + SIZE // 2)
    assert set(np.unique(maps["brain_uniform"])) <= {0.0, 1.0} and not maps["brain_uniform"][:, :4].any()
    assert np.array_equal(maps["brain_uniform"] > 0, foreground_masks(x))
    brain = np.zeros((6, SIZE, SIZE), bool)
    brain[:, 8:24, 8:24] = True
    assert np.array_equal(control_maps(x, brain_masks=brain)["brain_uniform"] > 0, brain)
    # The edge map is strongest on the bright square's border, not inside it.
    e = edge_maps(x)
    assert e.max() == pytest.approx(1.0) and np.all(e.reshape(6, -1).std(axis=1) > 0)
    # Each image's edges are its own: neighbours in the batch do not bleed into it.
    assert np.allclose(edge_maps(x[1:2])[0], e[1])


def test_descending_order_is_lexsorts_order_with_ties_broken_by_the_tie_break():
    from audit.quality.faithfulness import descending_order

    rng = np.random.default_rng(5)
    values = rng.integers(0, 4, (3, 200)).astype(np.float32)  # many ties
    values[2] = 0.0  # all tied: the tie-break alone decides
    tie_break = rng.random((3, 200))
    tie_break[:, :10] = 0.5  # ties in the tie-break too: then by index, as lexsort
    shuffle = np.argsort(tie_break, axis=1, kind="stable")
    assert np.array_equal(descending_order(values, shuffle), np.lexsort((tie_break, -values), axis=-1))


def test_edge_maps_equal_scipys_sobel():
    from audit.quality.controls import edge_maps, edge_maps_scipy

    rng = np.random.default_rng(3)
    raw = rng.integers(0, 256, (5, 37, 29, 1)).astype(np.float32)  # 0-255 intensities: integer arithmetic
    raw[0] = 9.0  # a flat image: no edges at all
    assert np.array_equal(edge_maps(raw), edge_maps_scipy(raw))
    scaled = raw / 255.0  # input_scale 1: the same to float rounding
    np.testing.assert_allclose(edge_maps(scaled), edge_maps_scipy(scaled), rtol=0, atol=1e-6)
    assert edge_maps(raw[:0]).shape == (0, 37, 29)


def test_ssim_of_identical_maps_is_skimages_exact_one():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(4)
    a = rng.random((6, 24, 24)).astype(np.float32)
    b = a.copy()
    b[1] = rng.random((24, 24))  # pairs 0, 2-5 identical (5: all zeros), pair 1 not
    a[5] = b[5] = 0.0
    got = ssim_pairs(a, b)
    want = [structural_similarity(a[k].astype(np.float64), b[k].astype(np.float64), data_range=1.0, win_size=7)
            for k in range(6)]
    assert np.array_equal(got, np.asarray(want)) and got[1] < 1.0 and np.all(got[[0, 2, 3, 4, 5]] == 1.0)


def test_skill_is_the_margin_over_the_best_control_with_a_subject_bootstrap():
    from audit.quality.skill import compare_to_controls

    rng = np.random.default_rng(0)
    subjects = np.repeat([f"S{i}" for i in range(20)], 4)
    base = rng.normal(0.3, 0.02, 80)
    controls = {"weak": base - 0.1, "strong": base, "noise": rng.normal(0.2, 0.05, 80)}
    good = compare_to_controls(base + 0.1, controls, higher_is_better=True, subjects=subjects)
    assert good["best_control"] == "strong" and good["skill"] == pytest.approx(0.1)
    assert good["ci_unit"] == "subject" and good["n_units"] == 20 and good["n_images"] == 80
    assert good["skill_ci"][0] <= 0.1 <= good["skill_ci"][1] and good["skill_ci"][0] > 0.05
    useless = compare_to_controls(base + rng.normal(0, 0.05, 80), controls, higher_is_better=True, subjects=subjects)
    assert useless["skill_ci"][0] < 0 < useless["skill_ci"][1] + 0.05
    # Lower-is-better figures: skill is still positive when the model beats the controls.
    low = compare_to_controls(base - 0.1, {"c": base}, higher_is_better=False, subjects=subjects)
    assert low["skill"] == pytest.approx(0.1) and low["skill_ci"][0] > 0
    # Unknown subjects: every image is its own unit; NaN images are dropped from every array together.
    values = base.copy()
    values[:5] = np.nan
    by_image = compare_to_controls(values, controls, higher_is_better=True, subjects=None)
    assert by_image["ci_unit"] == "image" and by_image["n_images"] == 75 and by_image["n_units"] == 75
    # One subject: no interval; no images: nothing at all.
    one = compare_to_controls(base[:4], {"c": base[:4]}, higher_is_better=True, subjects=["A"] * 4)
    assert one["skill"] == pytest.approx(0.0) and one["skill_ci"] == [None, None]
    none = compare_to_controls(np.array([]), {"c": np.array([])}, higher_is_better=True, subjects=[])
    assert none["value"] is None and none["skill"] is None
    json.dumps(good, allow_nan=False)


def test_the_best_control_is_picked_inside_each_bootstrap_replicate():
    """Two controls that tie on average: picking the best per replicate makes the CI honest (lower)."""
    from audit.quality.skill import compare_to_controls

    rng = np.random.default_rng(1)
    subjects = np.repeat(np.arange(10), 3).astype(str)
    a, b = rng.normal(0.5, 0.1, 30), rng.normal(0.5, 0.1, 30)
    model = (a + b) / 2 + 0.01
    res = compare_to_controls(model, {"a": a, "b": b}, higher_is_better=True, subjects=subjects)
    alone = compare_to_controls(model, {res["best_control"]: a if res["best_control"] == "a" else b},
                                higher_is_better=True, subjects=subjects)
    assert res["skill_ci"][0] <= alone["skill_ci"][0] + 1e-12


def test_backbone_stages_and_the_gate_stage_follow_resnet_naming(keras):
    from audit.quality.randomization import backbone_stages, gate_stage_index

    L = keras.layers
    inp = keras.Input((SIZE, SIZE, 3))
    h = L.Conv2D(2, 3, padding="same", name="conv1_conv")(inp)
    for stage, blocks in ((2, 2), (3, 2), (4, 3), (5, 2)):
        for block in range(1, blocks + 1):
            h = L.Conv2D(2, 3, padding="same", name=f"conv{stage}_block{block}_1_conv")(h)
    h = L.GlobalAveragePooling2D()(h)
    model = keras.Model(inp, L.Dense(4, name="predictions")(L.Dense(8, name="fc")(h)))
    stages, n_head = backbone_stages(randomization_groups(model))
    labels = [[g.label for g in stage] for stage in stages]
    assert n_head == 2 and labels[:2] == [["predictions"], ["fc"]]
    assert labels[2] == ["conv5_block2", "conv5_block1"] and labels[5] == ["conv2_block2", "conv2_block1"]
    assert labels[-1] == ["conv1_conv"] and len(stages) == 7
    # head + the top half of 5 backbone stages (rounded up): conv5, conv4, conv3
    assert gate_stage_index(len(stages), n_head, 0.5) == 4
    assert gate_stage_index(len(stages), n_head, 0.0) == 2 and gate_stage_index(len(stages), n_head, 1.0) == 6


def test_edge_map_control_fails_randomization_at_the_gate_stage_while_gradients_pass(trained, data):
    x, y = data[0][:8], data[1][:8]
    edge = lambda _m, images, _t: sobel_explainer(None, images)  # noqa: E731
    res = cascading_randomization(trained, grad_explainer, x, y, control_explainers={"edge": edge})
    assert res["gate_similarity"]["spearman"] < 0.5
    assert res["control_gate_similarity"]["edge"]["spearman"] > 0.99
    assert res["control_gate_similarity"]["edge"]["hog"] > 0.99
    assert set(res["stages"][res["order"][0]]) >= {"spearman", "spearman_signed", "ssim", "hog"}
    as_model = cascading_randomization(trained, sobel_explainer, x, y)
    assert as_model["gate_similarity"]["spearman"] > 0.99 and not passes_sanity(as_model, 0.5, which="gate")


def test_a_weight_insensitive_control_is_scored_once_through_the_cascade(trained, data, monkeypatch):
    import audit.quality.randomization as randomization

    x, y = data[0][:8], data[1][:8]
    edge = lambda _m, images, _t: sobel_explainer(None, images)  # noqa: E731
    calls = []
    plain = randomization.map_similarities
    monkeypatch.setattr(randomization, "map_similarities", lambda *a, **k: calls.append(1) or plain(*a, **k))
    res = cascading_randomization(trained, grad_explainer, x, y, control_explainers={"edge": edge})
    stages = len(res["order"])
    assert stages > 2 and len(calls) == stages + 1  # the model's maps at every stage, the edge maps once
    maps = normalize_maps(np.abs(np.nan_to_num(sobel_explainer(None, x))))
    fresh = plain(maps, maps, sobel_explainer(None, x), sobel_explainer(None, x))
    for label in res["order"]:
        for key in ("spearman", "spearman_signed", "ssim", "hog"):
            assert np.array_equal(res["controls"]["edge"][label][key].per_sample, fresh[key].per_sample), key


def test_signed_spearman_sees_a_sign_flip_that_absolute_spearman_hides():
    from audit.quality.base import spearman_rows

    rng = np.random.default_rng(0)
    m = rng.normal(size=(3, 8, 8))
    assert np.allclose(spearman_rows(np.abs(m), np.abs(-m)), 1.0)
    assert np.allclose(spearman_rows(m, -m), -1.0)


def test_agreement_inside_the_brain_ignores_brain_versus_background():
    """A map uniform over the brain agrees with any brain-bright map over the whole image, not inside it."""
    x, _ = _blob_images(4, 0)
    brain = np.zeros((4, SIZE, SIZE), np.float32)
    brain[:, 4:28, 4:28] = 1.0
    ig_like = brain * np.random.default_rng(0).random((4, SIZE, SIZE)).astype(np.float32)
    whole = agreement(brain, ig_like)["spearman"].mean
    inside = agreement(brain, ig_like, region=brain)["spearman"].mean
    assert whole > 0.5 and abs(inside) < 0.35


def test_the_subject_spread_sample_keeps_the_stage_quotas_and_covers_more_subjects():
    from audit.sampling import sample, sample_disease, stratified_indices, subject_spread_indices

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2, 3], [90, 60, 60, 30])
    # uneven subjects: some with 2 slices, some with 14
    subjects = [f"{c}-{int(k)}" for c, k in zip(labels, rng.integers(0, 8, len(labels)) ** 2 // 4)]
    for seed in range(5):
        spread = subject_spread_indices(labels, subjects, 40, seed)
        plain = stratified_indices(labels, 40, seed)
        assert len(set(spread)) == 40
        assert np.array_equal(np.bincount(labels[spread], minlength=4), np.bincount(labels[plain], minlength=4))
        per_subject = np.unique([subjects[i] for i in spread], return_counts=True)[1]
        # round-robin: no subject gets a second image before every subject of its stage has one
        for c in range(4):
            stage = [subjects[i] for i in spread if labels[i] == c]
            available = {s for s, l in zip(subjects, labels) if l == c}
            counts = np.unique(stage, return_counts=True)[1]
            assert counts.max() - counts.min() <= 1 or len(set(stage)) == len(available)
        assert len(per_subject) >= len({subjects[i] for i in plain})
    assert np.array_equal(sample(labels, 40, 0, 3, subjects), sample(labels, 40, 0, 3, subjects))  # seeded
    # unknown subjects are each their own unit; the demented-only sample stays demented
    unknown = sample(labels, 40, 0, 3, [None] * len(labels))
    assert len(set(unknown)) == 40
    assert set(labels[sample_disease(labels, 30, 0, 3, subjects)]) <= {1, 2, 3}


def test_map_in_threads_keeps_order_and_equals_the_serial_loop():
    """The threaded per-map loop returns the serial loop's results in the input's order, above and below the
    threshold where it starts threads (a wrong order would pair maps with the wrong images)."""
    import time

    from audit.quality.base import map_in_threads

    def slow_square(k):
        time.sleep(0.001 * (k % 3))  # finishing out of order must not reorder the results
        return k * k

    for n in (3, 40):
        assert map_in_threads(slow_square, range(n)) == [k * k for k in range(n)]


def test_random_control_maps_are_memoised_read_only_and_bounded(monkeypatch):
    """The memo returns the same maps as a fresh smoothing, never lets a caller write into a cached map, and
    evicts the least recently used maps beyond its byte budget."""
    from audit.quality import controls

    monkeypatch.setattr(controls, "_RANDOM_MAPS", __import__("collections").OrderedDict())
    monkeypatch.setattr(controls, "_RANDOM_MAPS_HELD", 0)
    monkeypatch.setattr(controls, "_RANDOM_MAPS_BYTES", 3 * 20 * 30 * 4)  # three 20x30 float32 maps
    first = controls.random_smooth_maps((4, 20, 30), seed=1, keys=np.array([0, 1, 2, 3]))
    assert len(controls._RANDOM_MAPS) == 3 and controls._RANDOM_MAPS_HELD == 3 * 20 * 30 * 4
    first[:] = -1.0  # the stacked result is the caller's own copy
    again = controls.random_smooth_maps((4, 20, 30), seed=1, keys=np.array([0, 1, 2, 3]))
    assert again.min() >= 0.0 and again.max() == 1.0
    assert all(not m.flags.writeable for m in controls._RANDOM_MAPS.values())
    other_seed = controls.random_smooth_maps((1, 20, 30), seed=2, keys=np.array([0]))
    assert not np.array_equal(other_seed[0], again[0])


def test_similarities_with_a_kept_reference_equal_the_plain_call():
    from audit.quality.randomization import map_similarities, similarity_reference

    rng = np.random.default_rng(3)
    original, other = rng.random((5, 24, 24)), rng.random((5, 24, 24))
    signed, other_signed = original - 0.5, other - 0.5
    reference = similarity_reference(original, signed)
    kept = map_similarities(original, other, signed, other_signed, reference)
    plain = map_similarities(original, other, signed, other_signed)
    for key in plain:
        assert np.array_equal(kept[key].per_sample, plain[key].per_sample), key
    with pytest.raises(ValueError):
        map_similarities(other, other, other_signed, other_signed, reference)
