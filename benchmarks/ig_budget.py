"""What IG's adaptive settings cost and what they change in the figures IG feeds (agreement, completeness).

    .venv/bin/python benchmarks/ig_budget.py [--run out/calib_c/seed0] [--resnet50-images 16]

On a demo-recipe model (a ``benchmarks/calibrate_cohort.py`` run folder) it computes IG on the gate's IG
sample (64 images) at each setting of ``SETTINGS`` and prints the gradient rows per image, the median
completeness error, and the Grad-CAM/IG agreement skill over the best control with its subject-bootstrap CI
(the figure the IG stage exists for). With ``--resnet50-images N`` it also counts the rows a random-weight
ResNet50 at 224² needs on N test slices at each setting (the gate's cost model, ``audit.plan``).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

# (tolerance, min_steps, panels) of adaptive graded IG
SETTINGS = [(0.05, 16, 4), (0.05, 8, 4), (0.05, 8, 2), (0.1, 8, 4), (0.05, 4, 4), (0.05, 4, 2)]


def rows_per_image(result) -> float:
    return result.gradient_evaluations / len(result.delta)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="out/calib_c/seed0")
    parser.add_argument("--resnet50-images", type=int, default=0)
    args = parser.parse_args()
    from audit.config import AuditConfig
    from audit.explain import integrated_gradients as ig
    from audit.quality.agreement import agreement
    from audit.runner import AuditRun
    from audit.stages.quality import compare, control_maps
    from suites.thresholds import load_thresholds

    folder = Path(args.run)
    config = AuditConfig.from_settings(load_thresholds().settings, cache=False)
    run = AuditRun(folder / "run" / "model.keras", folder / "data" / "split_manifest.csv",
                   Path("out/exp/ig_budget"), config)
    idx = run.ig_indices
    print(f"{folder}: {len(idx)} IG images of {len({run.subjects[i] for i in idx})} subjects")
    from audit.sampling import IG_SALT, sample

    before = sample(run.labels, config.ig_images, config.seed, IG_SALT)  # the sampler before 2026-12-03
    print(f"{'tol':>5s} {'min':>4s} {'panels':>6s} {'sampler':>8s} {'rows/img':>9s} {'median err':>10s} "
          f"{'agreement skill [95% CI]':>34s}")
    for (tol, min_steps, panels), chosen, sampler in [(SETTINGS[0], before, "random")] + [
            (s, idx, "spread") for s in SETTINGS]:
        xs, ts, cs = run.inputs[chosen], run.model_targets[chosen], run.gradcam_for(chosen)
        ctrl = control_maps(run, chosen)
        region = ctrl["brain_uniform"]
        result = ig(run.model, xs, ts, steps=128, tolerance=tol, min_steps=min_steps, max_steps=128,
                    scheme="graded", panels=panels, batch_size=64)
        model_agree = agreement(cs, result.heatmaps, region=region)["spearman"]
        control_agree = {k: agreement(m, result.heatmaps, region=region)["spearman"] for k, m in ctrl.items()}
        c = compare(run, model_agree, control_agree, chosen, higher_is_better=True)
        lo, hi = c["skill_ci"]
        print(f"{tol:5.2f} {min_steps:4d} {panels:6d} {sampler:>8s} {rows_per_image(result):9.1f} "
              f"{np.median(result.completeness_error):10.4f} {c['skill']:+.3f} [{lo:+.3f}, {hi:+.3f}] w {hi - lo:.3f}",
              flush=True)
    if args.resnet50_images:
        from audit.probes import untrained_model

        model = untrained_model(224, backbone="resnet50", seed=0)
        r50 = AuditRun(folder / "run" / "model.keras", folder / "data" / "split_manifest.csv",
                       Path("out/exp/ig_budget_r50"), config, model=model)
        xs = r50.inputs[idx[: args.resnet50_images]]
        print(f"ResNet50 224² (random weights), {len(xs)} images:")
        for tol, min_steps, panels in SETTINGS:
            result = ig(model, xs, None, steps=128, tolerance=tol, min_steps=min_steps, max_steps=128,
                        scheme="graded", panels=panels, batch_size=64)
            print(f"{tol:5.2f} {min_steps:4d} {panels:6d} {rows_per_image(result):9.1f} "
                  f"{np.median(result.completeness_error):10.4f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
