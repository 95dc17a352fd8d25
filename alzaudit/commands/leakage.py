"""``alzaudit data leakage``: near-duplicate and subject leakage between splits, from the terminal.

It reports and exits 0 whatever it finds: the gate (``suites/``) decides pass or fail from ``max_rate``.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def register(top, data) -> None:
    from audit.leakage import DEFAULT_MATCH_MIN, DEFAULT_MAX_DISTANCE, DEFAULT_SSIM_MIN, DEFAULT_TOP_K

    p = data.add_parser("leakage", help="find near-duplicate slices and shared subjects across splits")
    p.add_argument("dir", metavar="DIR_OR_MANIFEST",
                   help="manifest .csv, a folder with manifest.csv, train/val/test folders or the Kaggle layout")
    p.add_argument("--json", metavar="FILE", help="write the leakage block (rates, overlap, pairs) as JSON")
    p.add_argument("--grid", metavar="PNG", help="image grid of the worst pairs (default: beside --json)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split made when the manifest has none")
    p.add_argument("--max-distance", type=int, default=DEFAULT_MAX_DISTANCE, metavar="D",
                   help=f"pHash bits (pose-normalised slices) for a candidate pair (default {DEFAULT_MAX_DISTANCE})")
    p.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, metavar="K",
                   help=f"most similar candidates registered per image (default {DEFAULT_TOP_K})")
    p.add_argument("--match-min", type=float, default=DEFAULT_MATCH_MIN, metavar="M",
                   help="match score that confirms a twin: 10th percentile of the tile correlations of the "
                        f"registered, band-passed pair (default {DEFAULT_MATCH_MIN})")
    p.add_argument("--ssim-min", type=float, default=DEFAULT_SSIM_MIN, metavar="S",
                   help=f"SSIM floor of the registered pair (default {DEFAULT_SSIM_MIN}; the match score decides)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the hash cache")
    p.add_argument("--pseudo", dest="pseudo", action="store_true", default=None,
                   help="group near-duplicates into pseudo-subjects (default: only without subject IDs)")
    p.add_argument("--no-pseudo", dest="pseudo", action="store_false", help="skip pseudo-subject grouping")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from audit.leakage import leakage_report
    from model.fileio import atomic_write_json
    from model.manifest import load_dataset

    manifest = load_dataset(args.dir)
    grid = args.grid or (str(Path(args.json).with_name(Path(args.json).stem + "_pairs.png")) if args.json else None)
    report = leakage_report(manifest, seed=args.seed, max_distance=args.max_distance, ssim_min=args.ssim_min,
                            match_min=args.match_min, top_k=args.top_k, cache=not args.no_cache, grid_png=grid,
                            pseudo=args.pseudo, progress=True)
    print_report(report)
    if args.json:
        atomic_write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0


def print_report(report: dict) -> None:
    """Rates per split pair and class, subject overlap, Kaggle twins, then the warnings in red."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from model.classes import CLASSES

    console = Console(highlight=False)
    split = report["split"]
    source = "from the manifest" if split["source"] == "manifest" else \
        f"made here by {split['group']} (seed {split['seed']})"
    thresholds = report["thresholds"]
    table = Table(title=f"near-duplicates across splits (splits {source}; any rotation within ±15°, shift, zoom, "
                        f"flip; registered match >= {thresholds.get('match_min', thresholds['ssim_min'])})",
                  box=box.SIMPLE_HEAD, pad_edge=False,
                  caption="rate: share of the first split's images with a twin in the second, overall and per class")
    table.add_column("split pair", no_wrap=True)
    table.add_column("n", justify="right")
    table.add_column("leaked", justify="right")
    table.add_column("rate", justify="right")
    for name in CLASSES:
        table.add_column(_SHORT[name], justify="right")
    table.add_column("shared\nsubjects", justify="right")
    for key, rate in report["rate"].items():
        by_class = report["rate_by_class"][key]
        overlap = report["subject_overlap"].get(key)
        table.add_row(key, str(report["n_images"][key.split("->")[0]]), str(report["n_leaked"][key]),
                      _pct(rate), *[_pct(by_class[c]) if c in by_class else "-" for c in CLASSES],
                      str(overlap["count"]) if overlap else "n/a",
                      style="bold red" if rate > 0 or (overlap and overlap["count"]) else None)
    console.print(table)
    if "kaggle_twins" in report:
        twins = Table(title="Kaggle augmented set: twins of the originals", box=box.SIMPLE_HEAD, pad_edge=False)
        for column in ("class", "originals", "augmented", "augmented with a twin", "twins per original",
                       "originals with twins"):
            twins.add_column(column, justify="right" if column != "class" else "left")
        for name, row in report["kaggle_twins"].items():
            twins.add_row(_SHORT.get(name, name), str(row["originals"]), str(row["augmented"]), str(row["augmented_with_twin"]),
                          f"{row['twins_per_original']:.1f}", _pct(row["originals_with_twins"]))
        console.print(twins)
    if report.get("n_cross_label_pairs"):
        cross = Table(title=f"near-duplicates filed under two labels ({report['n_cross_label_pairs']} pairs)",
                      box=box.SIMPLE_HEAD, pad_edge=False)
        for column in ("image", "label", "twin", "label ", "match"):
            cross.add_column(column, overflow="fold")
        for row in report["cross_label_pairs"][:10]:   # paths as plain text: "[" in a name is not markup
            cross.add_row(Text(row["query"]), row["labels"][0], Text(row["match"]), row["labels"][1],
                          f"{row['match_score']:.3f}", style="bold red")
        console.print(cross)
    if "pseudo_subjects" in report:
        detail = report["pseudo_subject_detail"]
        console.print(f"pseudo-subjects: {detail['count']} groups of near-duplicates (largest {detail['largest']}, "
                      f"{detail['spanning_splits']} span splits); 'alzaudit data split --group pseudo' keeps them whole")
    for warning in report["warnings"]:
        loud = warning.startswith(("LEAK", "LABELS"))
        console.print(warning if loud else f"warning: {warning}", style="bold red" if loud else "yellow", markup=False)
    if report["max_rate"] > 0:
        console.print("Accuracy measured on these splits is inflated: near-duplicates of evaluation images were "
                      "seen in training (Yagis et al. 2021: +30 points on OASIS).", style="bold red")
    if report.get("grid_png"):
        console.print(f"worst pairs: {report['grid_png']}", markup=False)


_SHORT = {"NonDemented": "Non", "VeryMildDemented": "VMild", "MildDemented": "Mild",
          "ModerateDemented": "Mod"}


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"
