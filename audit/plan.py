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

MIN_IMAGES = 16          # below this the skill CIs are too wide to say anything
FAITHFULNESS_ORDERS = 5  # Grad-CAM + four control maps, each a deletion and an insertion curve
# Adaptive IG's gradient rows per image at the gate's settings (tolerance 0.05, min_steps 16, at most 128,
# 4 panels; Clenshaw–Curtis 1 panel), by scheme: the largest mean over five demo-recipe models
# (docs/ig_measurements.md; graded 23.1–30.1, trapezoid 27.5–42.2, Clenshaw–Curtis 37–49), rounded up.
# Fixed steps: steps + 1.
IG_ROWS_PER_IMAGE = {"graded": 32, "trapezoid": 44, "clenshaw-curtis": 50}
RANDOMIZATION_STAGES = 6
# A budget is planned to this share of its minutes: one timed batch leaves out the work around the model
# (SSIM, control maps, re-initialising layers, bootstraps) and varies by ~5% from batch to batch. Measured
# on a random-weight ResNet50 at 224² (docs/measurements.md): the whole gate took 0.90-1.05x its plan.
BUDGET_HEADROOM = 0.9


@dataclass
class UnitCosts:
    """Seconds per image for each kind of work, measured on one batch of the evaluated images."""

    forward: float
    gradcam: float
    ig_row: float
    registration: float = 0.0   # registering one slice to MNI152 (audit.anatomy), after the template is loaded


@dataclass
class StagePlan:
    stage: str
    images: int
    work: str
    seconds: float

    def to_dict(self) -> dict:
        return {"stage": self.stage, "images": self.images, "work": self.work, "seconds": round(self.seconds, 1)}


def measure_costs(run, batch: int | None = None) -> UnitCosts:
    """Time one warm batch of predictions, Grad-CAM and IG rows on the run's own images and model, and the
    registration of a few of its slices to MNI152."""
    from audit.explain.ig import ig_function

    n = min(len(run.inputs), batch or run.config.batch_size)
    x = run.inputs[:n]

    def timed(fn) -> float:
        fn()  # trace/compile once
        started = time.perf_counter()
        fn()
        return (time.perf_counter() - started) / n

    forward = timed(lambda: run.predict_fn(x))
    gradcam = timed(lambda: run.gradcam(x, None))  # None: explain the predicted class
    step = ig_function(run.model, "logit")
    alphas = np.linspace(0, 1, n).astype(np.float32)
    wanted = np.zeros(n, np.int32)
    ig_row = timed(lambda: step(x, np.zeros_like(x), alphas, wanted))
    from audit.anatomy import register_slices
    from audit.anatomy.prior import load_prior
    from audit.anatomy.registration import load_atlas

    load_atlas(), load_prior()  # the template's tables, once per process: not a per-image cost
    sample = run.images[: min(8, len(run.images))]
    started = time.perf_counter()
    register_slices(sample)
    registration = (time.perf_counter() - started) / max(len(sample), 1)
    return UnitCosts(forward, gradcam, ig_row, registration)


def plan_stages(n_images: int, config, costs: UnitCosts, n_sigmas: int) -> list[StagePlan]:
    """Estimated seconds per stage for these sample sizes (0 = all images, as the runner reads it)."""
    def size(n: int) -> int:
        return n_images if n <= 0 else min(n, n_images)

    n_cam, n_ig, n_f = size(config.gradcam_images), size(config.ig_images), size(config.faithfulness_images)
    n_s, n_r = size(config.stability_images), size(config.randomization_images)
    rows = config.ig_steps + 1
    if config.ig_tolerance:
        rows = min(rows, IG_ROWS_PER_IMAGE.get(config.ig_scheme, rows))
    # The curves' ends (the image, its baseline) are shared by every order: 2 passes, then the inner steps.
    curves = FAITHFULNESS_ORDERS * 2 * (config.faithfulness_steps - 1) + 2
    noisy = n_sigmas * config.stability_draws
    return [
        StagePlan("predictions", n_images, "1 forward pass", n_images * costs.forward),
        StagePlan("registration", n_images, "1 affine registration to MNI152", n_images * costs.registration),
        StagePlan("Grad-CAM", n_cam, "1 Grad-CAM", n_cam * costs.gradcam),
        StagePlan("Integrated Gradients", n_ig, f"~{rows} gradient rows", n_ig * rows * costs.ig_row),
        StagePlan("faithfulness", n_f, f"{curves} forward passes (5 orders x 2 curves)", n_f * curves * costs.forward),
        StagePlan("stability", n_s, f"{noisy} noisy Grad-CAMs + predictions",
                  n_s * noisy * (costs.gradcam + costs.forward)),
        StagePlan("randomization", n_r, f"~{RANDOMIZATION_STAGES} cascade stages of Grad-CAM",
                  n_r * RANDOMIZATION_STAGES * costs.gradcam),
    ]


def fit_budget(n_images: int, config, costs: UnitCosts, n_sigmas: int, minutes: float):
    """A copy of ``config`` whose sampled stages fit ``minutes`` (planned to ``BUDGET_HEADROOM`` of them;
    never below MIN_IMAGES each).

    Predictions, Grad-CAM and registration over every image are kept (every other figure needs them); the sampled
    stages (IG, faithfulness, stability, randomization) shrink by one common factor.
    """
    budget = minutes * 60.0 * BUDGET_HEADROOM
    plans = {p.stage: p for p in plan_stages(n_images, config, costs, n_sigmas)}
    fixed = plans["predictions"].seconds + plans["Grad-CAM"].seconds + plans["registration"].seconds
    sampled = sum(p.seconds for name, p in plans.items() if name not in ("predictions", "Grad-CAM", "registration"))
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


def plan_audit(run) -> AuditPlan:
    """Time one batch of each kind of work on ``run`` and fit ``budget_minutes`` if set.

    Pure with respect to the run's configuration: returns a new config (``AuditRun.use_plan`` adopts it)."""
    from dataclasses import asdict

    config = run.config
    costs = measure_costs(run)
    n, n_sigmas = len(run.inputs), len(config.sigmas)
    if config.budget_minutes > 0:
        config = fit_budget(n, config, costs, n_sigmas, config.budget_minutes)
    plans = plan_stages(n, config, costs, n_sigmas)
    record = {"budget_minutes": config.budget_minutes or None,
              "seconds_per_image": {k: round(v, 5) for k, v in asdict(costs).items()},
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
