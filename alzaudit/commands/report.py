"""``alzaudit report AUDIT_JSON``: re-render report.html / report.pdf from audit.json alone (no TensorFlow)."""
from __future__ import annotations

import argparse


def register(top, data) -> None:
    p = top.add_parser("report", help="render report.html and report.pdf from an audit.json")
    p.add_argument("audit_json", metavar="AUDIT_JSON", help="audit.json written by the gate")
    p.add_argument("--out", metavar="DIR", help="output folder (default: the folder of AUDIT_JSON)")
    p.add_argument("--no-pdf", action="store_true", help="write only the self-contained HTML")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from reports import render_report

    written = render_report(args.audit_json, args.out, pdf=not args.no_pdf)
    for kind, path in written.items():
        print(f"wrote {path} ({kind}, {path.stat().st_size / 1e6:.2f} MB)")
    return 0
