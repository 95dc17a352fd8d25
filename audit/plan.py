"""An audit that knows its cost: time one batch of each kind of work, estimate every stage, fit a budget.

Every expensive stage is a count of three unit costs — a forward pass, a Grad-CAM (forward + one
backward to a feature map) and an IG row (forward + backward to the input) — times the images and steps
it covers. One timed batch of each gives the plan before the stages run; with ``[audit] budget_minutes``
the sample sizes shrink (never below ``MIN_IMAGES``, the smallest sample whose subject-bootstrap CI we
still report) until the estimate fits.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np

from audit.explain.gradcam import METHODS as CAM_METHODS

MIN_IMAGES = 16          # below this the skill CIs are too wide to say anything
FAITHFULNESS_ORDERS = 5  # Grad-CAM + four control maps, each a deletion and an insertion curve
# Adaptive IG's gradient rows per image at the gate's settings (tolerance 0.05, min_steps 16, at most 128,
# 4 panels; Clenshaw–Curtis 1 panel), by scheme: the largest mean over five demo-recipe models
# (docs/ig_measurements.md; graded 23.1–30.1, trapezoid 27.5–42.2, Clenshaw–Curtis 37–49), rounded up.
# Fixed steps: steps + 1. A fallback only: the plan runs adaptive IG on IG_PROBE_IMAGES of the IG sample and
# counts this model's rows (from 8 intervals: ~12 on a random-weight ResNet50, 21-26 on demo models).
IG_ROWS_PER_IMAGE = {"graded": 32, "trapezoid": 44, "clenshaw-curtis": 50}
IG_PROBE_IMAGES = 4
RANDOMIZATION_STAGES = 6
IG_ROW_BATCH = 32          # rows of the timed IG batch that gives the plan its cost per gradient row
THROUGHPUT_ROUNDS = 3    # the gate's throughput checks: timed batches per figure, after a 2-image warm-up
# A budget is planned to this share of its minutes: the unit costs come from a few images and vary by ~5%
# from run to run, and the data checks (leakage) are not planned. Measured on a random-weight ResNet50 at
# 224² (docs/measurements.md, 2026-12-03): the whole gate took 1.08x its plan.
BUDGET_HEADROOM = 0.9


@dataclass
class UnitCosts:
    """Seconds per image for each kind of work, measured on one batch of the evaluated images."""

    forward: float
    gradcam: float
    ig_row: float
    registration: float = 0.0   # registering one slice to MNI152 (audit.anatomy), after the template is loaded
    ig_rows_per_image: float | None = None  # adaptive IG's rows on a few of the IG sample's images, this model
    # The work around the model, per map pair or image, timed on a few of the run's own maps (on a small CNN it
    # is most of stability's and randomization's time; on a ResNet50 a quarter of it):
    ssim_pair: float = 0.0      # SSIM of two maps (stability: the model's and four controls' per noisy copy)
    image_controls: float = 0.0  # the four image-only control maps of one image (stability)
    similarity: float = 0.0     # randomization's four similarities of one map pair (model, edge control)
    trace: float = 0.0          # compiling a CAM step for a new model (randomization's clone, Grad-CAM++)
    curve_point: float = 0.0    # building one perturbed image of a faithfulness curve (beside its forward pass)
    ig_done: int = 0            # IG images the plan's probe already explained (the IG stage reuses them)


@dataclass
class StagePlan:
    stage: str
    images: int
    work: str
    seconds: float

    def to_dict(self) -> dict:
        return {"stage": self.stage, "images": self.images, "work": self.work, "seconds": round(self.seconds, 1)}


def measure_costs(run, batch: int | None = None) -> UnitCosts:
    """The unit costs of the plan, measured on the run's own model and images.

    Predictions and Grad-CAM run first (every later figure needs them; with a CAM explainer they are one
    pass), then: a plain forward pass and a compiled Grad-CAM on 16 images (the stage's extra time is the
    step's tracing); adaptive IG on ``IG_PROBE_IMAGES`` of the IG sample (its rows per image and cost per row;
    kept in ``run.ig_probe`` for the IG stage); the registration of 8 slices; SSIM, control maps and
    similarities on 8 maps; building the perturbed images of a faithfulness curve."""
    from audit.explain.ig import ig_function

    n = min(len(run.inputs), batch or run.config.batch_size)
    x = run.inputs[:n]

    def timed(fn, rows: int = n) -> float:
        fn()  # trace/compile once
        started = time.perf_counter()
        fn()
        return (time.perf_counter() - started) / rows

    # The stages' own wall time per image; a stage read from the disk cache was not timed: one batch is.
    # With a CAM explainer the predictions come from the maps' pass ("probs_gradcam"): that is Grad-CAM's cost,
    # and a plain forward pass (faithfulness's unit) is timed on a small batch.
    run.probs, run.gradcam_maps  # noqa: B018 - needed by every later stage; computed (and timed) here first
    timings = run.timings
    small = run.inputs[: min(n, 16)]
    if "probs" in timings:
        forward = timings["probs"] / max(len(run.inputs), 1)
    else:
        forward = timed(lambda: run.predict_fn(small), len(small))
    # Grad-CAM once compiled, on a small batch; the stage's own time beyond it is the step's tracing.
    gradcam = timed(lambda: run.gradcam(small, None), len(small))
    stage_time = timings.get("probs_gradcam", timings.get("gradcam"))
    trace = 0.0 if stage_time is None else max(0.0, stage_time - gradcam * len(run.gradcam_indices))
    # IG's row cost and how many rows this model's images need: adaptive IG with the run's settings on a few
    # images of the IG sample (after one small call that compiles the step).
    from audit.explain import integrated_gradients
    from audit.stages.explanations import ig_sample

    warm = min(n, 4)
    ig_function(run.model, "logit")(x[:warm], np.zeros_like(x[:warm]), np.linspace(0, 1, warm).astype(np.float32),
                                    np.zeros(warm, np.int32))
    chosen = ig_sample(run, run.config)  # sorted by index, i.e. often by stage: take them spread out
    probe = chosen[np.linspace(0, len(chosen) - 1, min(IG_PROBE_IMAGES, len(chosen))).round().astype(int)]
    settings = run.ig_settings
    started = time.perf_counter()
    result = integrated_gradients(run.model, run.inputs[probe], run.model_targets[probe], **settings)
    probe_seconds = time.perf_counter() - started
    run.ig_probe = (probe, result, settings)  # the IG stage reuses these images' results
    rows = max(int(result.gradient_evaluations), 1)
    ig_rows_per_image = rows / max(len(probe), 1)
    # The row cost from one full batch: the probe's refinement rounds run a few rows at a time, which costs
    # twice as much per row as the stage's batches of 64 (measured on a ResNet50: 2.4 planned vs 1.2 min).
    # Under a tf.distribute strategy the stage splits rows over replicas: keep the probe's own figure there.
    ig_row = probe_seconds / rows
    if settings.get("strategy") is None:
        full = min(IG_ROW_BATCH, settings["batch_size"])
        tiled = np.resize(run.inputs[probe], (full, *run.inputs.shape[1:]))
        started = time.perf_counter()
        outputs = ig_function(run.model, "logit")(tiled, np.zeros_like(tiled),
                                                  np.linspace(0, 1, full).astype(np.float32), np.zeros(full, np.int32))
        for tensor in outputs:  # wait for the device: an accelerator returns before it has finished
            tensor.numpy()
        ig_row = (time.perf_counter() - started) / full
    from audit.anatomy import register_slices
    from audit.anatomy.prior import load_prior
    from audit.anatomy.registration import load_atlas

    load_atlas(), load_prior()  # the template's tables, once per process: not a per-image cost
    sample = run.images[: min(8, len(run.images))]
    started = time.perf_counter()
    register_slices(sample)
    registration = (time.perf_counter() - started) / max(len(sample), 1)
    ssim_pair, image_controls, similarity = _map_work(run.gradcam_maps[: min(8, len(run.gradcam_maps))],
                                                      run.inputs[: min(8, len(run.inputs))])
    curve_point = _curve_point(run.inputs[:1])
    return UnitCosts(forward, gradcam, ig_row, registration, ig_rows_per_image, ssim_pair, image_controls,
                     similarity, trace, curve_point, len(probe))


def _curve_point(image: np.ndarray, points: int = 40) -> float:
    """Seconds to build one perturbed image of a faithfulness curve (the stage's numpy work per pass)."""
    rng = np.random.default_rng(0)
    ranks = rng.permutation(image[0].size).reshape(image.shape[1:])
    base = image[0] * 0.5
    started = time.perf_counter()
    moved = ranks[None] < np.linspace(0, ranks.size, points)[:, None, None, None]
    np.where(moved, base[None], image[0][None])
    return (time.perf_counter() - started) / points


def _map_work(maps: np.ndarray, images: np.ndarray) -> tuple[float, float, float]:
    """Seconds per SSIM pair, per image's four image-only control maps and per randomization similarity."""
    from audit.quality.base import ssim_pairs
    from audit.quality.controls import image_only_explainers
    from audit.quality.randomization import map_similarities

    k = max(len(maps), 1)
    shifted = np.roll(maps, 1, axis=0)
    started = time.perf_counter()
    ssim_pairs(maps, shifted)
    ssim_pair = (time.perf_counter() - started) / k
    started = time.perf_counter()
    for control in image_only_explainers().values():
        control(images)
    image_controls = (time.perf_counter() - started) / k
    started = time.perf_counter()
    map_similarities(maps, shifted, maps, shifted)
    return ssim_pair, image_controls, (time.perf_counter() - started) / k


def plan_stages(n_images: int, config, costs: UnitCosts, n_sigmas: int, *,
                gallery: tuple[int, int] | None = None) -> list[StagePlan]:
    """Estimated seconds per stage for these sample sizes (0 = all images, as the runner reads it).

    ``gallery``: (examples, of which need IG of their own) when the predictions are known; else every
    example is counted as needing IG. With a CAM explainer over every image the predictions come from the
    maps' pass (``explanations.one_pass_predictions``): one stage, one pass."""
    def size(n: int) -> int:
        return n_images if n <= 0 else min(n, n_images)

    n_cam, n_ig, n_f = size(config.gradcam_images), size(config.ig_images), size(config.faithfulness_images)
    n_s, n_r = size(config.stability_images), size(config.randomization_images)
    rows = config.ig_steps + 1
    if config.ig_tolerance:
        rows = min(rows, costs.ig_rows_per_image or IG_ROWS_PER_IMAGE.get(config.ig_scheme, rows))
    # The curves' ends (the image, its baseline) are shared by every order: 2 passes, then the inner steps.
    inner = len(config.faithfulness_fractions()) - 2
    curves = FAITHFULNESS_ORDERS * 2 * inner + 2
    noisy = n_sigmas * config.stability_draws
    # A CAM's forward pass also gives the noisy copies' predictions; a reference explainer needs a pass more.
    # Each noisy copy also gets the four image-only control maps and four SSIMs (the model's and the image-
    # dependent controls'; the centre prior's maps are identical, which costs no SSIM).
    cam = config.explainer in CAM_METHODS
    per_noisy = costs.gradcam + (0.0 if cam else costs.forward) + 4 * costs.ssim_pair + costs.image_controls
    shown = min(n_images, 2 * config.gallery_per_class * 4) if gallery is None else gallery[0]
    own_ig = shown if gallery is None else gallery[1]
    batch = min(config.batch_size, n_images)
    timed = THROUGHPUT_ROUNDS * batch + 2
    if cam and n_cam == n_images:
        first = [StagePlan("predictions + Grad-CAM", n_images, "1 Grad-CAM (its forward pass is the prediction)",
                           n_images * costs.gradcam)]
    else:
        first = [StagePlan("predictions", n_images, "1 forward pass", n_images * costs.forward),
                 StagePlan("Grad-CAM", n_cam, "1 Grad-CAM", n_cam * costs.gradcam)]
    return [
        *first,
        StagePlan("registration", n_images, "1 affine registration to MNI152", n_images * costs.registration),
        StagePlan("Integrated Gradients", n_ig, f"~{rows:.0f} gradient rows",
                  max(n_ig - costs.ig_done, 0) * rows * costs.ig_row),
        StagePlan("faithfulness", n_f, f"{curves} forward passes (5 orders x 2 curves x {inner} points + 2 ends)",
                  n_f * curves * (costs.forward + costs.curve_point)),
        StagePlan("stability", n_s, f"{noisy} noisy Grad-CAMs" + ("" if cam else " + predictions"),
                  n_s * noisy * per_noisy),
        StagePlan("randomization", n_r, f"~{RANDOMIZATION_STAGES} cascade stages of Grad-CAM",
                  n_r * RANDOMIZATION_STAGES * (costs.gradcam + 2 * costs.similarity) + costs.trace),
        StagePlan("gallery", shown, f"1 Grad-CAM++; IG (~{rows:.0f} rows) for the {own_ig} outside the IG sample",
                  shown * costs.gradcam + own_ig * rows * costs.ig_row + (costs.trace if shown else 0.0)),
        StagePlan("throughput", batch, f"{THROUGHPUT_ROUNDS} timed batches of inference and of Grad-CAM",
                  timed * (costs.forward + costs.gradcam)),
    ]


def fit_budget(n_images: int, config, costs: UnitCosts, n_sigmas: int, minutes: float):
    """A copy of ``config`` whose sampled stages fit ``minutes`` (planned to ``BUDGET_HEADROOM`` of them;
    never below MIN_IMAGES each).

    Predictions, Grad-CAM and registration over every image are kept (every other figure needs them); the sampled
    stages (IG, faithfulness, stability, randomization) shrink by one common factor.
    """
    budget = minutes * 60.0 * BUDGET_HEADROOM
    plans = {p.stage: p for p in plan_stages(n_images, config, costs, n_sigmas)}
    unsampled = ("predictions", "Grad-CAM", "predictions + Grad-CAM", "registration", "gallery", "throughput")
    fixed = sum(plans[name].seconds for name in unsampled if name in plans)
    sampled = sum(p.seconds for name, p in plans.items() if name not in unsampled)
    if fixed + sampled <= budget or sampled <= 0:
        return config
    factor = max(0.0, budget - fixed) / sampled
    floor = min(MIN_IMAGES, n_images)

    def shrink(n: int) -> int:
        current = n_images if n <= 0 else min(n, n_images)
        return max(floor, int(math.floor(current * factor)))

    return replace(config, ig_images=shrink(config.ig_images), faithfulness_images=shrink(config.faithfulness_images),
                   stability_images=shrink(config.stability_images),
                   randomization_images=shrink(config.randomization_images))


def plan_table(plans: list[StagePlan]) -> str:
    """A plain-text plan for the console: stage, images, work per image, estimated minutes."""
    lines = [f"{'stage':22s} {'images':>6s}  {'est. min':>8s}  work per image"]
    for p in plans:
        lines.append(f"{p.stage:22s} {p.images:6d}  {p.seconds / 60:8.2f}  {p.work}")
    total = sum(p.seconds for p in plans)
    lines.append(f"{'total':22s} {'':6s}  {total / 60:8.2f}")
    return "\n".join(lines)


@dataclass(frozen=True)
class AuditPlan:
    """What the gate prints before it starts, the config it runs with, and the record for audit.json."""

    config: object   # AuditConfig: the run's config, with samples shrunk to the budget when one is set
    record: dict     # audit.json's run.plan
    text: str        # the console table


# Stages the plan itself runs before it prints, by their timing key in ``AuditRun.timings``.
DONE_BEFORE_PLAN = {"predictions + Grad-CAM": "probs_gradcam", "predictions": "probs", "Grad-CAM": "gradcam"}


def plan_audit(run, started: float | None = None) -> AuditPlan:
    """Run the predictions and Grad-CAM, time a few images of the other kinds of work on ``run`` and fit
    ``budget_minutes`` if set. Stages already run are entered at their measured time.

    ``started`` (``time.perf_counter()`` when the gate began) adds the time spent before the plan — loading,
    indexing, the plan's own timings — as a "setup (done)" stage, so the total is the whole gate's.

    Pure with respect to the run's configuration: returns a new config (``AuditRun.use_plan`` adopts it)."""
    from dataclasses import asdict

    from audit.stages.explanations import gallery_indices

    config = run.config
    costs = measure_costs(run)
    n, n_sigmas = len(run.inputs), len(config.sigmas)
    if config.budget_minutes > 0:
        config = fit_budget(n, config, costs, n_sigmas, config.budget_minutes)
    # The gallery reuses the IG sample's maps: its cost depends on the predictions (known by now) and the
    # IG sample of the config the run will use.
    shown, own_ig = gallery_indices(run, config)
    plans = [replace(p, seconds=run.timings[DONE_BEFORE_PLAN[p.stage]])
             if run.timings.get(DONE_BEFORE_PLAN.get(p.stage, "")) is not None else p
             for p in plan_stages(n, config, costs, n_sigmas, gallery=(len(shown), len(own_ig)))]
    if started is not None:
        done = sum(run.timings.get(key, 0.0) for key in DONE_BEFORE_PLAN.values())
        plans.insert(0, StagePlan("setup (done)", n, "loading, indexing, the plan's own timings",
                                  max(0.0, time.perf_counter() - started - done)))
    record = {"budget_minutes": config.budget_minutes or None,
              "seconds_per_image": {k: round(v, 5) for k, v in asdict(costs).items() if k != "ig_rows_per_image"},
              "ig_rows_per_image": None if costs.ig_rows_per_image is None else round(costs.ig_rows_per_image, 1),
              "stages": [p.to_dict() for p in plans],
              "estimated_seconds": round(sum(p.seconds for p in plans), 1)}
    text = plan_table(plans)
    if run.baseline is not None:
        text += "\n(x2: the baseline model is audited on the same images)"
    budget = config.budget_minutes
    if budget and record["estimated_seconds"] > budget * 60:
        text += (f"\nthe {budget:g}-minute budget cannot be met without going below the minimum samples the "
                 "confidence intervals need; running at the minimum")
    return AuditPlan(config, record, text)
