"""``alzaudit drift A/audit.json B/audit.json``: did the model change behaviour between environments?"""
from __future__ import annotations

import argparse


def register(top, data) -> None:
    p = top.add_parser("drift", help="compare two audits of one model (e.g. two TensorFlow versions)")
    p.add_argument("audit_a", metavar="A_AUDIT_JSON")
    p.add_argument("audit_b", metavar="B_AUDIT_JSON")
    p.add_argument("--thresholds", help="thresholds TOML with a [drift] section (default: the packaged one)")
    p.add_argument("--json", help="write the comparison as JSON here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from audit.drift import compare_audits, judge
    from model.fileio import atomic_write_json
    from suites.thresholds import load_thresholds

    figures = compare_audits(args.audit_a, args.audit_b)
    verdicts = judge(figures, load_thresholds(args.thresholds))
    console = Console()
    va, vb = figures["a"]["versions"] or {}, figures["b"]["versions"] or {}
    table = Table(title=f"drift: TF {va.get('tensorflow')} vs TF {vb.get('tensorflow')} "
                        f"({figures['n_images']} images)")
    for col in ("check", "value", "threshold", "status"):
        table.add_column(col)
    for v in verdicts:
        sign = ">=" if v["direction"] == "min" else "<="
        table.add_row(v["id"], f"{v['value']:.4g}", f"{sign} {v['threshold']:g}", v["status"])
    console.print(table)
    for change in figures["changed"]:
        console.print(f"  verdict changed: {change['id']}: {change['a']} -> {change['b']}")
    if args.json:
        atomic_write_json(args.json, {**figures, "checks": verdicts})
    return 1 if any(v["status"] == "FAIL" for v in verdicts) else 0
