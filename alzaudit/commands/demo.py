"""``alzaudit demo``: the whole product on the embedded synthetic cohort, end to end.

synthesise -> split subject-aware -> train the small backbone -> evaluate -> gate -> HTML/PDF report.
Each step reuses what an earlier run left in --out, so an interrupted demo continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from model.recipe import DEMO_EPOCHS, DEMO_INPUT, DEMO_RATIOS, DEMO_SLICES, DEMO_SUBJECTS


def register(top, data) -> None:
    p = top.add_parser("demo", help="synthetic cohort -> training -> audit -> PDF report, in one go")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--subjects", type=int, default=DEMO_SUBJECTS)
    p.add_argument("--slices-per-subject", type=int, default=DEMO_SLICES)
    p.add_argument("--epochs", type=int, default=DEMO_EPOCHS)
    p.add_argument("--input-size", type=int, default=DEMO_INPUT)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    out = Path(args.out)
    data_dir, run_dir, audit_dir = out / "data", out / "run", out / "audit"

    console.rule("1/5 synthetic cohort")
    manifest_csv = data_dir / "manifest.csv"
    if manifest_csv.is_file():
        console.print(f"reusing {manifest_csv}")
    else:
        from model.synth import synthesize_cohort

        synthesize_cohort(data_dir, subjects=args.subjects, slices_per_subject=args.slices_per_subject,
                          seed=args.seed)

    console.rule("2/5 subject-level split")
    from model.manifest import load_dataset, write_manifest
    from model.splits import split_manifest
    from model.summary import print_summary

    split_csv = data_dir / "split_manifest.csv"
    if not split_csv.is_file():
        # 30% test subjects: every stage gets 9 test subjects, enough for per-class figures and CIs.
        split, report = split_manifest(load_dataset(manifest_csv), DEMO_RATIOS, seed=args.seed)
        write_manifest(split, split_csv)
        print_summary(split, split_report=report)
    else:
        print_summary(load_dataset(split_csv))

    console.rule("3/5 training (small backbone, CPU-friendly)")
    from model.recipe import demo_train_config
    from model.train import STATE_FILE, train

    model_path = run_dir / "model.keras"
    if model_path.is_file():
        console.print(f"reusing {model_path}")
    else:
        config = demo_train_config(split_csv, run_dir, seed=args.seed, epochs=args.epochs, input_size=args.input_size)
        train(config, resume=(run_dir / STATE_FILE).is_file(), console=console)

    console.rule("4/5 evaluation")
    from model.evaluate_run import evaluate_model, print_report

    print_report(evaluate_model(model_path, split_csv, out_dir=run_dir / "eval_test", seed=args.seed), console)

    console.rule("5/5 acceptance gate and report")
    from reports import render_report
    from suites.inprocess import run_gate

    verdict = run_gate(str(model_path), str(split_csv), str(audit_dir), seed=args.seed)
    written = render_report(audit_dir / "audit.json", audit_dir)
    checks = json.loads((audit_dir / "audit.json").read_text())["checks"]
    failing = [c["id"] for c in checks if c["status"] in ("FAIL", "ERROR")]
    console.print(f"[bold]verdict: {verdict}[/]" + (f" (failing: {', '.join(failing)})" if failing else ""))
    for kind, path in written.items():
        console.print(f"{kind}: {path}")
    return 0
