"""``alzaudit audit``: run the acceptance gate in-process, then render the report; exit 0 only on PASS."""
from __future__ import annotations

import argparse
from pathlib import Path

from alzaudit.commands.train import add_model_options


def register(top, data) -> None:
    p = top.add_parser("audit", help="gate a model (pytest suites/) and write audit.json + report.html/pdf")
    p.add_argument("--model", required=True, help="Keras model file to audit")
    p.add_argument("--data", help="dataset folder or manifest.csv (default: the split the model was trained with, "
                                  "from its run folder)")
    p.add_argument("--out", default="out/audit", help="folder for audit.json, images and the report")
    p.add_argument("--split", default="test")
    p.add_argument("--thresholds", help="thresholds TOML (default: the packaged suites/thresholds.toml)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["auto", "cpu", "gpu", "mps"], default="auto")
    p.add_argument("--no-report", action="store_true", help="skip report.html/report.pdf")
    p.add_argument("--no-pdf", action="store_true", help="write report.html only")
    p.add_argument("-k", dest="select", help="run only the checks whose test names match (pytest -k); the verdict "
                                            "is then INCOMPLETE")
    from model.distribute import STRATEGIES, STRATEGY_HELP

    p.add_argument("--strategy", choices=list(STRATEGIES), default="auto", help=STRATEGY_HELP)
    p.add_argument("--baseline", help="the model accepted last time: [change] rules judge the candidate against "
                                      "it on the same images (paired by subject)")
    add_model_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from audit.distribute import get_strategy, is_chief
    from suites.inprocess import run_gate

    strategy = get_strategy(args.strategy)  # a multi-worker strategy must exist before pytest starts TensorFlow
    verdict = run_gate(args.model, args.data, args.out, split=args.split, thresholds=args.thresholds,
                       seed=args.seed, device=args.device, input_scale=args.input_scale, classes=args.classes,
                       unsafe=args.unsafe_load, select=args.select, baseline=args.baseline,
                       strategy=args.strategy)
    if not args.no_report and is_chief(strategy):
        from reports import render_report

        for kind, path in render_report(Path(args.out) / "audit.json", args.out, pdf=not args.no_pdf).items():
            print(f"wrote {path} ({kind})")
    print(f"verdict: {verdict}" + (" (some checks did not run; see audit.json)" if verdict == "INCOMPLETE" else ""))
    return 0 if verdict == "PASS" else 1
