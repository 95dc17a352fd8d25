"""Where the stability SSIM's uncertainty comes from: images or noise draws, and what each Grad-CAM buys.

    .venv/bin/python benchmarks/stability_variance.py [--run out/calib_c/seed0 ...] [--resnet50 SPLIT_CSV]
                                                     [--draws 8] [--resamples 40]

For each model (a ``benchmarks/calibrate_cohort.py`` run folder, or with ``--resnet50`` the bench's random-weight
ResNet50 at 224² on a split manifest) it explains every test slice under ``--draws`` independent noise draws
per noise level of the default thresholds, once, and keeps the SSIM of every (σ, draw, slice). Every design
``images × draws`` is then read from that table without another pass: ``--resamples`` times, the gate's
sampler draws the images (``subject_spread_indices``, as the stage does) and the first ``draws`` noise draws
are averaged per image; the printed width is the mean subject-bootstrap 95% CI width of the per-image SSIM
(the stage's figure), beside the Grad-CAMs it costs. The between-subject, within-subject and between-draw
variances say which lever matters: draws only average out the last.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

DESIGNS = [(64, 5), (64, 3), (64, 2), (80, 3), (96, 2), (96, 3), (128, 1), (128, 2)]


def ssim_table(run, draws: int) -> np.ndarray:
    """``(sigmas, draws, images)``: the SSIM of every test slice's Grad-CAM under each independent draw."""
    from audit.quality.stability import sigma_key, stability
    from audit.stages.explanations import CAM_METHODS, audited_maps_and_predictions

    config, idx = run.config, np.arange(len(run.inputs))
    cam = config.explainer in CAM_METHODS
    out = np.empty((len(config.sigmas), draws, len(idx)))
    for d in range(draws):  # one draw per call, each with its own noise seed
        result = stability(run.model, run.explainer, run.inputs[idx], sigmas=config.sigmas, draws=1,
                           seed=1000 + d, targets=run.model_targets[idx], clean_maps=run.gradcam_for(idx),
                           predict_fn=run.predict_fn, intensity_range=run.contract.input_scale,
                           batch_size=max(config.batch_size, 64), clean_predictions=run.model_targets[idx],
                           explain_and_predict=((lambda model, x, t: audited_maps_and_predictions(run, model, x, t))
                                                if cam else None))
        for s, sigma in enumerate(config.sigmas):
            out[s, d] = result["ssim"][sigma_key(sigma)].per_sample
        print(f"  draw {d + 1}/{draws} done", flush=True)
    return out


def decompose(table: np.ndarray, subjects: list[str]) -> tuple[float, float, float]:
    """(between-subject, within-subject between-image, between-draw) variance of one σ's ``(draws, images)``."""
    per_image = table.mean(axis=0)
    draw = float(table.var(axis=0, ddof=1).mean())
    codes = np.unique(np.asarray(subjects), return_inverse=True)[1]
    means = np.array([per_image[codes == c].mean() for c in range(codes.max() + 1)])
    within = float(np.mean([per_image[codes == c].var() for c in range(codes.max() + 1) if (codes == c).sum() > 1]))
    return float(means.var(ddof=1)), within, draw


def design_width(table, labels, subjects, n, draws, resamples, seed=0) -> float:
    """Mean subject-bootstrap CI width of the mean SSIM for ``n`` images × ``draws`` draws."""
    from audit.quality.skill import compare_to_controls
    from audit.sampling import subject_spread_indices

    rng = np.random.default_rng(seed)
    widths = []
    for _ in range(resamples):
        idx = subject_spread_indices(labels, subjects, n, int(rng.integers(1 << 30)))
        first = rng.permutation(table.shape[0])[:draws]
        values = table[first][:, idx].mean(axis=0)
        out = compare_to_controls(values, {"one": np.ones_like(values)}, higher_is_better=True,
                                  subjects=[subjects[i] for i in idx])
        widths.append(out["skill_ci"][1] - out["skill_ci"][0])
    return float(np.mean(widths))


def report(name: str, table: np.ndarray, labels, subjects, sigmas, resamples: int) -> None:
    print(f"\n{name}: {table.shape[2]} test slices of {len(set(subjects))} subjects, {table.shape[1]} draws")
    for s, sigma in enumerate(sigmas):
        b, w, d = decompose(table[s], subjects)
        print(f"σ {sigma:g}: mean SSIM {table[s].mean():.4f}; variance between subjects {b:.2e}, between slices "
              f"of a subject {w:.2e}, between draws of a slice {d:.2e}")
    print(f"{'design':>12s} {'Grad-CAMs':>9s} " + " ".join(f"{'CI σ ' + format(s, 'g'):>10s}" for s in sigmas))
    for n, draws in DESIGNS:
        if n > table.shape[2] or draws > table.shape[1]:
            continue
        widths = [design_width(table[s], labels, subjects, n, draws, resamples) for s in range(len(sigmas))]
        print(f"{n:>5d} × {draws:<4d} {n * draws * len(sigmas):9d} " + " ".join(f"{w:10.4f}" for w in widths))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", default=[], help="a calibrate_cohort run folder (repeatable)")
    parser.add_argument("--resnet50", help="a split manifest: also the random-weight ResNet50 at 224² on it")
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--resamples", type=int, default=40)
    args = parser.parse_args()
    from audit.config import AuditConfig
    from audit.runner import AuditRun
    from suites.thresholds import load_thresholds

    thresholds = load_thresholds()
    config = AuditConfig.from_settings(thresholds.settings, cache=False, sigmas=tuple(thresholds.sigmas))
    runs = [(folder, lambda f=folder: AuditRun(Path(f) / "run" / "model.keras",
                                               Path(f) / "data" / "split_manifest.csv",
                                               Path("out/exp/stability_variance"), config)) for folder in args.run]
    if args.resnet50:
        from audit.probes import untrained_model

        runs.append(("random-weight ResNet50 224²", lambda: AuditRun(
            args.resnet50, args.resnet50, Path("out/exp/stability_variance_r50"), config,
            model=untrained_model(224, backbone="resnet50", seed=0))))
    if not runs:
        parser.error("give --run and/or --resnet50")
    for name, build in runs:
        run = build()
        print(f"{name}: explaining {len(run.inputs)} slices × {args.draws} draws × {len(config.sigmas)} σ",
              flush=True)
        table = ssim_table(run, args.draws)
        report(name, table, run.labels, [str(s) for s in run.subjects], config.sigmas, args.resamples)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
