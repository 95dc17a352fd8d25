"""``alzaudit report AUDIT_JSON``: re-render report.html / report.pdf from audit.json alone (no TensorFlow).

``--model-card [PATH]`` writes a Hugging Face model card (README.md) from the same audit.json instead.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def register(top, data) -> None:
    p = top.add_parser("report", help="render report.html and report.pdf (or a model card) from an audit.json")
    p.add_argument("audit_json", metavar="AUDIT_JSON", help="audit.json written by the gate")
    p.add_argument("--out", metavar="DIR", help="output folder (default: the folder of AUDIT_JSON)")
    p.add_argument("--no-pdf", action="store_true", help="write only the self-contained HTML")
    p.add_argument("--model-card", nargs="?", const="", default=None, metavar="PATH",
                   help="write a Hugging Face model card (README.md with model-index metadata) to PATH "
                        "(default: README.md in the output folder) instead of the report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.model_card is not None:
        from reports.model_card import write_model_card

        folder = Path(args.out) if args.out else Path(args.audit_json).parent
        path = write_model_card(args.audit_json, Path(args.model_card) if args.model_card else folder / "README.md")
        print(f"wrote {path} (model card, {path.stat().st_size / 1e3:.1f} kB)")
        return 0
    from reports import render_report

    written = render_report(args.audit_json, args.out, pdf=not args.no_pdf)
    for kind, path in written.items():
        print(f"wrote {path} ({kind}, {path.stat().st_size / 1e6:.2f} MB)")
    return 0
