"""Model vs controls vs negative-control models: the table behind the explanation thresholds.

    python benchmarks/negative_controls.py --model out/demo/run/model.keras \
        --data out/demo/data/split_manifest.csv [--fast] [--json out/negative_controls.json]

For the given (trained) model and for two probes built to be useless (an untrained copy of the
architecture and a model whose Grad-CAM is the brain's foreground, ``audit.probes``), every explanation
figure is computed on the same split beside its control maps (random smooth, uniform over the brain,
edge, centre prior), with the skill over the best control and its subject-level 95% CI. Thresholds in
``suites/thresholds.toml`` are set from these margins (docs/thresholds.md), not from the trained model.
Not a speed benchmark: it prints figures, and the stage times for reference.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FIGURES = ("localization_energy", "localization_auprc", "outside_brain_mass", "prior_localization", "deletion_auc",
           "insertion_auc", "faithfulness_score", "agreement_spearman", "stability_ssim_0.02", "stability_ssim_0.05")
STAGES = ("localization", "prior_localization", "faithfulness", "agreement", "stability", "randomization", "convergence")


def without_masks(data: str, out: Path) -> str:
    """A copy of the manifest without its lesion- and brain-mask columns: the data users have."""
    from model.manifest import load_dataset, write_manifest

    out.mkdir(parents=True, exist_ok=True)
    return str(write_manifest(load_dataset(data).without_masks(), out / "no_masks.csv"))


def audit_figures(model_path: Path, data: str, out: Path, fast: bool, seed: int, explainer: str = "gradcam") -> dict:
    from audit.runner import AuditConfig, AuditRun
    from audit.stages.quality import randomization_similarity
    from audit.writer import figures_document

    sizes = dict(ig_images=16, ig_steps=32, stability_images=16, stability_draws=2, faithfulness_images=32,
                 faithfulness_steps=10, randomization_images=16) if fast else {}
    run = AuditRun(model_path, data, out, AuditConfig(cache=False, progress=False, seed=seed, explainer=explainer,
                                                      **sizes))
    started = time.perf_counter()
    for name in STAGES:
        getattr(run, name)
    figures = figures_document(run)
    rand = run.randomization
    return {"controls": figures["controls"], "randomization": {
        "gate_stage": rand["gate_stage"], "model": randomization_similarity(rand),
        "edge_control": rand["control_gate_similarity"]["edge"]["spearman"]},
        "ig_completeness_median": run.convergence.summary["median"],
        "accuracy": float((run.predicted == run.labels).mean()), "seconds": time.perf_counter() - started,
        "timings": run.timings}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--fast", action="store_true", help="small samples (a quick look, wider CIs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the table as JSON here")
    parser.add_argument("--no-masks", action="store_true", help="drop the mask and brain-mask columns first")
    parser.add_argument("--shortcut", metavar="MODEL:DATA", help="also a shortcut-marker model on its own split")
    parser.add_argument("--only", help="comma-separated subset of models to run")
    args = parser.parse_args()

    from audit.probes import foreground_model, save_probe, untrained_model
    from model.network import load_model

    size = int(load_model(args.model).input_shape[1])
    work = Path(tempfile.mkdtemp(prefix="alzaudit-probes-"))
    data = without_masks(args.data, work) if args.no_masks else args.data
    # name -> (model, data, explainer): "edge" and "centre" explain the trained model with a reference map.
    models = {"trained": (Path(args.model), data, "gradcam"),
              "untrained": (save_probe(untrained_model(size, seed=args.seed + 1), work / "untrained.keras"), data,
                            "gradcam"),
              "foreground": (save_probe(foreground_model(size), work / "foreground.keras"), data, "gradcam"),
              "edge": (Path(args.model), data, "edge"), "centre": (Path(args.model), data, "centre")}
    if args.shortcut:
        model, shortcut_data = args.shortcut.split(":", 1)
        models["shortcut"] = (Path(model), without_masks(shortcut_data, work / "sc") if args.no_masks
                              else shortcut_data, "gradcam")
    if args.only:
        models = {k: v for k, v in models.items() if k in args.only.split(",")}
    table = {name: audit_figures(path, d, work / name, args.fast, args.seed, explainer)
             for name, (path, d, explainer) in models.items()}

    print(f"{'figure':22s} {'model':>10s}  {'value':>6s}  " + "  ".join(f"{c:>13s}" for c in
                                                                      ("random", "brain_uniform", "edge", "centre"))
          + "   skill [95% CI] over best")
    for figure in FIGURES:
        for name, result in table.items():
            c = result["controls"].get(figure)
            if not c or c["value"] is None:
                continue
            ci = c["skill_ci"]
            ci_text = "n/a" if ci[0] is None else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"
            print(f"{figure:22s} {name:>10s}  {c['value']:6.3f}  "
                  + "  ".join(f"{c['controls'].get(k, float('nan')):13.3f}" for k in
                              ("random", "brain_uniform", "edge", "centre"))
                  + f"   {c['skill']:+.3f} {ci_text} ({c['best_control']})")
    for name, result in table.items():
        r = result["randomization"]
        print(f"randomization at {r['gate_stage']}: {name} {r['model']:.3f} (edge-map control {r['edge_control']:.3f}); "
              f"IG completeness median {result['ig_completeness_median']:.3g}; accuracy {result['accuracy']:.3f}; "
              f"{result['seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
