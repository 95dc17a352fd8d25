"""``alzaudit audit``: run the acceptance gate in-process, then render the report; exit 0 only on PASS."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from audit.commands.train import add_model_options
from model.errors import AlzAuditError


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


def run_gate(model: str, data: str | None, out: str, *, split: str = "test", thresholds: str | None = None, seed: int = 0,
             device: str = "auto", input_scale: float = 255.0, classes: str = "canonical", unsafe: bool = False,
             select: str | None = None, quiet: bool = True, baseline: str | None = None,
             strategy: str = "auto") -> str:
    """Run ``pytest suites/`` in this process; returns the verdict written to ``out/audit.json``."""
    import pytest

    from suites import SUITES_DIR

    args = [str(SUITES_DIR), "--model", str(model), *(["--data", str(data)] if data else []),
            "--audit-out", str(out), "--split", split,
            "--seed", str(seed), "--device", device, "--input-scale", f"{input_scale:g}", "--classes", classes,
            "-p", "no:cacheprovider", "--benchmark-disable-gc", "-W", "ignore::DeprecationWarning",
            "--rootdir", str(SUITES_DIR)]
    if thresholds:
        args += ["--thresholds", str(thresholds)]
    if unsafe:
        args.append("--unsafe-load")
    if baseline:
        args += ["--baseline", str(baseline)]
    if strategy != "auto":
        args += ["--strategy", strategy]
    if select:
        args += ["-k", select]
    if quiet:
        args += ["-q", "--no-header", "-rN", "--benchmark-quiet"]
    audit_json = Path(out) / "audit.json"
    if audit_json.exists():
        audit_json.unlink()  # never report a verdict left over from an earlier run
    code = pytest.main(args)
    if code == pytest.ExitCode.USAGE_ERROR:
        raise AlzAuditError("the gate refused its inputs (see the ERROR line above)")
    if not audit_json.is_file():
        raise AlzAuditError(f"{audit_json}: the gate wrote no audit (pytest exit code {int(code)})")
    return json.loads(audit_json.read_text())["verdict"]


def run(args: argparse.Namespace) -> int:
    from audit.distribute import get_strategy, is_chief

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
