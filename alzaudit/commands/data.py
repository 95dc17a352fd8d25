"""``alzaudit data index | split | summary``: the dataset layer from the terminal (no TensorFlow)."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(top, data) -> None:
    p = data.add_parser("index", help="index a dataset folder into manifest.csv")
    p.add_argument("dir", help="dataset folder (class folders, train/val/test, Kaggle or OASIS layout)")
    p.add_argument("--out", help="manifest path (default DIR/manifest.csv)")
    p.add_argument("--source", choices=["OriginalDataset", "AugmentedAlzheimerDataset"],
                   help="Kaggle augmented layout: index only this part")
    p.add_argument("--no-verify", action="store_true", help="do not decode every image while indexing")
    p.set_defaults(func=run_index)

    p = data.add_parser("split", help="subject-aware stratified train/val/test split")
    p.add_argument("dir", help="dataset folder or manifest.csv")
    p.add_argument("--out", help="manifest path to write (default: beside the input, split_manifest.csv)")
    p.add_argument("--ratios", default="0.7,0.15,0.15", help="train,val,test fractions (default 0.7,0.15,0.15)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--group", choices=["subject", "pseudo", "slice"], default="subject",
                   help="keep subjects whole (default), pseudo-subjects from near-duplicates, or split slices (leaky)")
    p.set_defaults(func=run_split)

    p = data.add_parser("summary", help="counts per class and split, subjects, image sizes, skipped files")
    p.add_argument("dir", help="dataset folder or manifest.csv")
    p.set_defaults(func=run_summary)


def run_index(args: argparse.Namespace) -> int:
    from model.manifest import MANIFEST_NAME, index_dataset, write_manifest
    from model.summary import print_summary

    manifest = index_dataset(args.dir, verify=not args.no_verify, source=args.source)
    out = Path(args.out) if args.out else Path(args.dir) / MANIFEST_NAME
    write_manifest(manifest, out)
    print_summary(manifest)
    print(f"wrote {out} ({len(manifest)} images)")
    return 0


def run_split(args: argparse.Namespace) -> int:
    from model.manifest import load_dataset, write_manifest
    from model.splits import split_manifest
    from model.summary import print_summary

    manifest = load_dataset(args.dir)
    groups = None
    if args.group == "pseudo":
        from audit.leakage import pseudo_subjects

        groups = pseudo_subjects(manifest)
    split, report = split_manifest(manifest, args.ratios, seed=args.seed, group=args.group, groups=groups)
    source = Path(args.dir)
    out = Path(args.out) if args.out else (source.parent if source.is_file() else source) / "split_manifest.csv"
    write_manifest(split, out)
    print_summary(split, split_report=report)
    print(f"wrote {out}")
    return 0


def run_summary(args: argparse.Namespace) -> int:
    from model.manifest import load_dataset
    from model.summary import print_summary

    print_summary(load_dataset(args.dir))
    return 0
