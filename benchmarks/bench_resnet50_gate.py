"""The whole gate on the seed's model shape: a random-weight ResNet50 at 224², in units of forward passes.

    python benchmarks/bench_resnet50_gate.py [--data out/demo/data/split_manifest.csv] [--budget 5]

Builds ResNet50 (random weights: ImageNet weights cannot be downloaded here; the cost is the same), audits
the demo cohort's test split with the default thresholds and ``[audit] budget_minutes``, and prints each
stage's time beside one plain forward pass over the same images measured in the same run, the sample
sizes the budget chose and the CI widths they bought. Needs ``make demo`` (or any split manifest).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def fewer_test_subjects(manifest: Path, n_subjects: int, out: Path) -> Path:
    """A copy of the manifest whose test split keeps the first subjects of each stage in turn (paths made
    absolute, so the copy can live outside the data folder); train and val rows are kept."""
    import pandas as pd

    frame = pd.read_csv(manifest)
    for column in ("path", "mask_path", "brain_mask_path"):
        if column in frame:
            frame[column] = [p if not isinstance(p, str) or Path(p).is_absolute() else str(manifest.parent / p)
                             for p in frame[column]]
    test = frame[frame["split"] == "test"]
    per_stage = [sorted(group["subject_id"].unique()) for _, group in test.groupby("label")]
    keep: list[str] = []
    for rank in range(max(map(len, per_stage))):
        keep += [subjects[rank] for subjects in per_stage if rank < len(subjects)]
    keep = keep[:n_subjects]
    frame = frame[(frame["split"] != "test") | frame["subject_id"].isin(keep)]
    frame.to_csv(out, index=False)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="out/demo/data/split_manifest.csv")
    parser.add_argument("--budget", type=float, default=5.0, help="[audit] budget_minutes (0 = the default sizes)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--test-subjects", type=int, default=20,
                        help="gate this many test subjects, balanced over the stages (0 = the whole test split); "
                             "20 x 8 slices = the 160 test images the issue's budget was set on")
    args = parser.parse_args()
    if not Path(args.data).is_file():
        print(f"bench_resnet50_gate: {args.data} not found; run `make demo` first or pass --data (not run)")
        return 0

    from audit.probes import save_probe, untrained_model
    from audit.plan import plan_audit
    from audit.runner import AuditConfig, AuditRun
    from audit.writer import figures_document
    from suites.thresholds import load_thresholds

    work = Path(tempfile.mkdtemp(prefix="alzaudit-r50-"))
    if args.test_subjects:
        args.data = str(fewer_test_subjects(Path(args.data), args.test_subjects, work / "split_manifest.csv"))
    model_path = save_probe(untrained_model(args.size, backbone="resnet50", seed=0), work / "resnet50.keras")
    settings = dict(load_thresholds().settings, budget_minutes=args.budget)
    run = AuditRun(model_path, args.data, work / "audit", AuditConfig.from_settings(settings, cache=False))
    x = run.inputs
    run.predict_fn(x[:32])  # compile
    passes = []
    for _ in range(3):  # the unit of every ratio below: the fastest of three, so the ratios are not flattered
        started = time.perf_counter()
        run.predict_fn(x)
        passes.append(time.perf_counter() - started)
    forward = min(passes)
    print(f"ResNet50 {args.size}², {len(x)} test images; one forward pass over them: {forward:.1f} s "
          f"({1000 * forward / len(x):.1f} ms/image; fastest of {', '.join(f'{p:.1f}' for p in passes)} s)")
    plan = plan_audit(run)
    run.use_plan(plan)
    print(plan.text)
    total_started = time.perf_counter()
    for stage in ("probs", "gradcam_maps", "localization", "ig", "agreement", "faithfulness", "stability",
                  "randomization"):
        getattr(run, stage)
    figures = figures_document(run)
    total = time.perf_counter() - total_started
    print(f"\n{'stage':16s} {'seconds':>8s} {'forward passes':>15s}")
    for name, seconds in run.timings.items():
        print(f"{name:16s} {seconds:8.1f} {seconds / forward:15.1f}")
    print(f"{'whole gate':16s} {total:8.1f} {total / forward:15.1f}   (target: <= 35 forward passes)")
    cfg = run.config
    print(f"sample sizes: IG {cfg.ig_images} (adaptive to {cfg.ig_tolerance}, <= {cfg.ig_steps} intervals), "
          f"faithfulness {cfg.faithfulness_images} x {cfg.faithfulness_steps} steps, stability {cfg.stability_images}"
          f" x {cfg.stability_draws} draws, randomization {cfg.randomization_images}")
    for key, c in (figures.get("controls") or {}).items():
        lo, hi = c["skill_ci"]
        width = "n/a" if lo is None else f"{hi - lo:.3f}"
        print(f"  {key:22s} n={c['n_images']:4d} images / {c['n_units']:3d} {c['ci_unit']}s   CI width {width}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
