"""Where the faithfulness skill's uncertainty comes from, and what each forward pass buys.

    .venv/bin/python benchmarks/faithfulness_variance.py [--run out/calib_c/seed0] [--draws 20] [--images 64]

For one model (a ``benchmarks/calibrate_cohort.py`` run folder: ``data/split_manifest.csv`` and
``run/model.keras``; several with ``--run A --run B``) it computes, once, the deletion and insertion curves of
the logit at 20 equal steps for the audited Grad-CAM and the four control maps over **every** demented test
slice. Every cheaper design is then read from those curves without another pass:

* a coarser grid is a subset of the 21 points (its AUC is the trapezoid over the subset);
* a sample is a subset of the slices, drawn ``--draws`` times by the gate's sampler (stratified by stage,
  random within it) or by the subject-spread sampler (stratified by stage, round-robin over subjects).

For each design it prints the forward passes per image, the mean width of the subject-bootstrap 95% CI of
the three skill figures (score, deletion, insertion) over the draws, and how far the grid moves the skill
from the 20-step value (the discretisation error, beside the CI half-width); ``--adaptive`` also tries
coarse-to-fine curves with an error bound. The variance decomposition of
the per-image score skill (between subjects / within subjects) says which lever matters.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

FINE_STEPS = 20
# Inner points (multiples of 1/20) of each grid tried; the ends 0 and 1 are always there.
GRIDS = {
    "20 equal (before)": [i / 20 for i in range(1, 20)],
    "10 equal": [i / 10 for i in range(1, 10)],
    "5 equal (.2 .4 .6 .8)": [0.2, 0.4, 0.6, 0.8],
    "graded 5 (.05 .1 .2 .4 .7)": [0.05, 0.1, 0.2, 0.4, 0.7],
    "graded 4 (.05 .15 .35 .65)": [0.05, 0.15, 0.35, 0.65],
    "graded 4 (.05 .15 .4 .7)": [0.05, 0.15, 0.4, 0.7],
    "graded 4 (.05 .2 .45 .7)": [0.05, 0.2, 0.45, 0.7],
    "graded 4 (.1 .2 .4 .7)": [0.1, 0.2, 0.4, 0.7],
    "graded 4 (.05 .1 .3 .6)": [0.05, 0.1, 0.3, 0.6],
    "graded 4 (.05 .15 .3 .55)": [0.05, 0.15, 0.3, 0.55],
    "graded 4 (.1 .25 .45 .7)": [0.1, 0.25, 0.45, 0.7],
    "graded 5 (.05 .15 .3 .45 .7)": [0.05, 0.15, 0.3, 0.45, 0.7],
    "graded 5 (.1 .2 .3 .45 .7)": [0.1, 0.2, 0.3, 0.45, 0.7],
    "graded 6 (.05 .1 .2 .35 .55 .75)": [0.05, 0.1, 0.2, 0.35, 0.55, 0.75],
    "graded 6 (.05 .15 .3 .45 .6 .8)": [0.05, 0.15, 0.3, 0.45, 0.6, 0.8],
    "graded 6 (.05 .15 .25 .4 .55 .7)": [0.05, 0.15, 0.25, 0.4, 0.55, 0.7],
    "graded 6 (.1 .2 .3 .4 .55 .7)": [0.1, 0.2, 0.3, 0.4, 0.55, 0.7],
    "graded 3 (.1 .3 .6)": [0.1, 0.3, 0.6],
    "graded 3 (.05 .2 .5)": [0.05, 0.2, 0.5],
    "graded 3 (.1 .25 .5)": [0.1, 0.25, 0.5],
    "graded 3 (.1 .2 .45)": [0.1, 0.2, 0.45],
    "graded 2 (.1 .4)": [0.1, 0.4],
    "graded 2 (.15 .45)": [0.15, 0.45],
    "graded 2 (.2 .5)": [0.2, 0.5],
}
CURVES = ("score", "deletion_auc", "insertion_auc")


def curves_for(run_folder: Path, cache: Path | None = None):
    """(curves, fraction, names, subjects, labels) over every demented test slice of one run (kept in
    ``cache``, an .npz, keyed by the model file's digest, so grids can be studied without recomputing)."""
    if cache is not None:
        from audit.binding import file_sha256

        digest = file_sha256(run_folder / "run" / "model.keras")
        if cache.is_file():
            saved = np.load(cache, allow_pickle=False)
            if str(saved["digest"]) == digest:
                return (saved["curves"], saved["fraction"], [str(v) for v in saved["names"]],
                        [str(v) for v in saved["subjects"]], saved["labels"])
        result = curves_for(run_folder)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, curves=result[0], fraction=result[1], names=np.array(result[2]),
                 subjects=np.array(result[3]), labels=result[4], digest=np.array(digest))
        return result
    from audit.config import AuditConfig
    from audit.quality.faithfulness import faithfulness_curves
    from audit.runner import AuditRun
    from audit.sampling import disease_mask
    from suites.thresholds import load_thresholds

    config = AuditConfig.from_settings(load_thresholds().settings, cache=False)
    run = AuditRun(run_folder / "run" / "model.keras", run_folder / "data" / "split_manifest.csv",
                   Path("out/exp/faithfulness_variance"), config)
    idx = np.flatnonzero(disease_mask(run.labels))
    curves, fraction, names = faithfulness_curves(
        run.logit_fn, run.inputs[idx], run.gradcam_for(idx), run.model_targets[idx], steps=FINE_STEPS,
        seed=config.seed, batch_size=max(config.batch_size, 64), control_maps=run.control_maps(idx))
    return curves, fraction, names, [run.subjects[i] for i in idx], run.labels[idx]


def resnet50_curves(split_csv: Path, cache: Path):
    """The 20-step curves of a random-weight ResNet50 (224², the bench's model) on the gate's own faithfulness
    sample of ``split_csv`` (one sample, 64 images: the whole demented split would take half an hour)."""
    if cache.is_file():
        saved = np.load(cache, allow_pickle=False)
        return (saved["curves"], saved["fraction"], [str(v) for v in saved["names"]],
                [str(v) for v in saved["subjects"]], saved["labels"])
    from audit.config import AuditConfig
    from audit.probes import untrained_model
    from audit.quality.faithfulness import faithfulness_curves
    from audit.runner import AuditRun
    from audit.sampling import FAITHFULNESS_SALT, sample_disease
    from suites.thresholds import load_thresholds

    config = AuditConfig.from_settings(load_thresholds().settings, cache=False)
    model = untrained_model(224, backbone="resnet50", seed=0)
    run = AuditRun(split_csv, split_csv, Path("out/exp/faithfulness_variance_r50"), config, model=model)
    idx = sample_disease(run.labels, config.faithfulness_images, config.seed, FAITHFULNESS_SALT, run.subjects)
    curves, fraction, names = faithfulness_curves(
        run.logit_fn, run.inputs[idx], run.gradcam_for(idx), run.model_targets[idx], steps=FINE_STEPS,
        seed=config.seed, batch_size=max(config.batch_size, 64), control_maps=run.control_maps(idx))
    result = (curves, fraction, names, [run.subjects[i] for i in idx], run.labels[idx])
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, curves=curves, fraction=fraction, names=np.array(names), subjects=np.array(result[3]),
             labels=result[4])
    return result


def same_images_table(curves, fraction, names, subjects) -> None:
    """Every grid on the same images (no resampling): the grid's own effect on the skill and its CI."""
    every = np.arange(len(subjects))
    print(f"{'grid':28s} {'passes/img':>10s} " + " ".join(f"{c + ' CI':>18s}" for c in CURVES)
          + "   skill (score)")
    for name, grid in GRIDS.items():
        out = figures(curves, fraction, names, grid, every, subjects)
        widths = [out[c]["skill_ci"][1] - out[c]["skill_ci"][0] for c in CURVES]
        print(f"{name:28s} {curves.shape[1] * 2 * len(grid) + 2:10d} " + " ".join(f"{w:18.4f}" for w in widths)
              + f"   {out['score']['skill']:+.4f}")


def spread_sample(labels: np.ndarray, subjects: list, n: int, rng) -> np.ndarray:
    """Stratified by stage (proportional), round-robin over the stage's subjects in a random order."""
    from audit.sampling import subject_spread_indices

    return subject_spread_indices(labels, subjects, n, int(rng.integers(1 << 30)))


def random_sample(labels: np.ndarray, n: int, rng) -> np.ndarray:
    from audit.sampling import stratified_indices

    return stratified_indices(labels, n, int(rng.integers(1 << 30)))


def figures(curves, fraction, names, grid, idx, subjects):
    from audit.quality.faithfulness import summarize_curves
    from audit.quality.skill import compare_to_controls

    points = [0] + [int(round(f * FINE_STEPS)) for f in grid] + [FINE_STEPS]
    result = summarize_curves(curves[idx][..., points], fraction[points], names, set(names), scale_by_spread=True)
    subs = [subjects[i] for i in idx]
    return {curve: compare_to_controls(result[curve].per_sample, {k: v[curve].per_sample for k, v in
                                                                 result["controls"].items()},
                                       higher_is_better=curve != "deletion_auc", subjects=subs)
            for curve in CURVES}


def decompose(values: np.ndarray, subjects: list) -> tuple[float, float]:
    """(between-subject, within-subject) variance of a per-image figure (one-way ANOVA moments)."""
    groups = {}
    for v, s in zip(values, subjects):
        groups.setdefault(s, []).append(v)
    means = np.array([np.mean(g) for g in groups.values()])
    within = np.mean([np.var(g, ddof=1) for g in groups.values() if len(g) > 1])
    k = np.mean([len(g) for g in groups.values()])
    between = max(0.0, np.var(means, ddof=1) - within / k)
    return float(between), float(within)


# Coarse-to-fine with an error bound (the issue's suggestion), on the 1/20 lattice: every curve gets LEVEL0's
# inner points; where their trapezoid differs from the one over COARSE by more than the tolerance, LEVEL1's too.
LEVEL0, LEVEL1, COARSE = (0.2, 0.5), (0.1, 0.35, 0.7), (0.5,)


def adaptive_table(name: str, curves, names, subjects, idx, tolerances=(0.01, 0.02, 0.04)) -> None:
    """Mean inner points per curve and the three skills (CI width) of the adaptive design beside the fixed
    gate grid and 20 steps, on the same images. Curves are scaled by each image's range over all 21 points
    (the adaptive design would see fewer: this flatters it slightly)."""
    from audit.quality.skill import compare_to_controls

    lo = curves.min(axis=(1, 2, 3), keepdims=True)
    spread = curves.max(axis=(1, 2, 3), keepdims=True) - lo
    moving = spread > 1e-3 * np.maximum(1.0, np.abs(curves[:, :1, :1, :1]))
    scaled = np.where(moving, (curves - lo) / np.where(moving, spread, 1.0), 0.0)

    def trapezoid(points):
        steps = sorted({0, FINE_STEPS, *(int(round(p * FINE_STEPS)) for p in points)})
        integrate = getattr(np, "trapezoid", None) or np.trapz  # numpy 2 renamed it
        return integrate(scaled[..., steps], np.array(steps) / FINE_STEPS, axis=-1)

    def skills(auc):
        out = []
        for curve in CURVES:
            a = auc[idx]
            v = a[..., 1] - a[..., 0] if curve == "score" else a[..., 0 if curve == "deletion_auc" else 1]
            c = compare_to_controls(v[:, 0], {k: v[:, 1 + i] for i, k in enumerate(names)},
                                    higher_is_better=curve != "deletion_auc", subjects=[subjects[i] for i in idx])
            out.append(f"{c['skill']:+.4f} ({c['skill_ci'][1] - c['skill_ci'][0]:.4f})")
        return "  ".join(out)

    print(f"{name}: skill (CI width) score / deletion / insertion")
    print(f"  20 steps            {skills(trapezoid([i / FINE_STEPS for i in range(1, FINE_STEPS)]))}")
    print(f"  gate grid, 4 points {skills(trapezoid([0.1, 0.2, 0.4, 0.7]))}")
    t0, tc, t1 = trapezoid(LEVEL0), trapezoid(COARSE), trapezoid(LEVEL0 + LEVEL1)
    for tol in tolerances:
        refine = np.abs(t0 - tc) > tol
        points = len(LEVEL0) + refine * len(LEVEL1)
        print(f"  adaptive tol {tol:<5g} {skills(np.where(refine, t1, t0))}   "
              f"{points[idx].mean():.2f} inner points per curve")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", help="calibrate_cohort run folder(s) (default out/calib_c/seed0)")
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--cache", default="out/faithfulness_variance",
                        help="folder for each model's 20-step curves ('' = recompute every time)")
    parser.add_argument("--samplers", default="random,spread")
    parser.add_argument("--grids", help="comma-separated names of GRIDS to try (default: all)")
    parser.add_argument("--before-images", type=int, default=64,
                        help="images of the 20-step reference row (the gate's default before 2026-12-03)")
    parser.add_argument("--adaptive", action="store_true",
                        help="also try coarse-to-fine curves with an error bound (one spread sample per model)")
    parser.add_argument("--resnet50-data", help="a split manifest: also study a random-weight ResNet50 at 224² "
                                                "on the gate's faithfulness sample of it (~10 min on 2 cores)")
    args = parser.parse_args()
    from audit.quality.faithfulness import summarize_curves

    if args.resnet50_data:
        curves, fraction, names, subjects, _ = resnet50_curves(Path(args.resnet50_data),
                                                               Path(args.cache or "out/exp") / "resnet50.npz")
        print(f"random-weight ResNet50 224², the gate's {len(subjects)} faithfulness images "
              f"({len(set(subjects))} subjects), every grid on the same images:")
        same_images_table(curves, fraction, names, subjects)
        if args.adaptive:
            adaptive_table("random-weight ResNet50", curves, names, subjects, np.arange(len(subjects)))
        if not args.run:
            return 0

    for folder in map(Path, args.run or ["out/calib_c/seed0"]):
        curves, fraction, names, subjects, labels = curves_for(
            folder, Path(args.cache) / f"{folder.name}.npz" if args.cache else None)
        n_orders = curves.shape[1]
        print(f"\n{folder}: {len(labels)} demented test slices of {len(set(subjects))} subjects, "
              f"orders: Grad-CAM + {', '.join(names)}")
        full = summarize_curves(curves, fraction, names, set(names), scale_by_spread=True)
        best = max(names, key=lambda k: full["controls"][k]["score"].per_sample.mean())
        skill = full["score"].per_sample - full["controls"][best]["score"].per_sample
        between, within = decompose(skill, subjects)
        if args.adaptive:
            adaptive_table(folder.name, curves, names, subjects,
                           spread_sample(labels, subjects, args.images, np.random.default_rng(0)))
        print(f"per-image score skill over {best}: between-subject variance {between:.4f}, within {within:.4f}")
        rng_seed = 0
        print(f"{'grid':28s} {'passes/img':>10s} {'sampler':>8s} " + " ".join(f"{c + ' CI':>18s}" for c in CURVES)
              + "   |skill - 20-step| (score)")
        reference = {}
        grids = {k: v for k, v in GRIDS.items() if not args.grids or k.startswith("20 equal")
                 or k in args.grids.split(",")}
        for name, grid in grids.items():
            passes = n_orders * 2 * len(grid) + 2
            for sampler in args.samplers.split(","):
                rng = np.random.default_rng(rng_seed)
                widths = {c: [] for c in CURVES}
                moved = []
                for _ in range(args.draws):
                    n = args.before_images if name.startswith("20 equal") else args.images
                    idx = (random_sample(labels, n, rng) if sampler == "random"
                           else spread_sample(labels, subjects, n, rng))
                    out = figures(curves, fraction, names, grid, idx, subjects)
                    for c in CURVES:
                        lo, hi = out[c]["skill_ci"]
                        widths[c].append(hi - lo)
                    key = (sampler, tuple(idx))
                    if name.startswith("20 equal"):  # the reference: the first grid
                        reference[key] = out["score"]["skill"]
                    moved.append(abs(out["score"]["skill"] - reference.get(key, out["score"]["skill"])))
                print(f"{name:28s} {passes:10d} {sampler:>8s} "
                      + " ".join(f"{np.mean(widths[c]):18.4f}" for c in CURVES) + f"   {np.mean(moved):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
