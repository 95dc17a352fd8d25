"""A terminal summary of a manifest: counts per class and split, subjects, sizes, skipped files, warnings."""
from __future__ import annotations

from collections import Counter

from model.classes import CLASSES
from model.manifest import Manifest
from model.splits import NO_SUBJECTS_WARNING, SplitReport, subject_overlap


def summary_dict(manifest: Manifest) -> dict:
    sizes = Counter((s.extra.get("width"), s.extra.get("height")) for s in manifest.samples
                    if s.extra.get("width") is not None)
    return {
        "root": str(manifest.root),
        "layout": manifest.layout,
        "n_images": len(manifest),
        "counts": manifest.counts(),
        "subjects": manifest.subject_counts(),
        "subjects_known": manifest.subjects_known,
        "image_sizes": {f"{w}x{h}": n for (w, h), n in sizes.most_common()},
        "has_masks": manifest.has_masks,
        "skipped": [{"path": p, "reason": r} for p, r in manifest.skipped],
        "subject_overlap": subject_overlap(manifest),
        "warnings": list(dict.fromkeys(manifest.warnings)),
    }


def print_summary(manifest: Manifest, split_report: SplitReport | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=False, highlight=False)
    info = summary_dict(manifest)
    table = Table(title=f"{info['root']}  ({info['layout']}, {info['n_images']} images)")
    table.add_column("split")
    for name in CLASSES:
        table.add_column(name, justify="right")
    table.add_column("total", justify="right")
    for split in [s for s in ("train", "val", "test", "all") if s in info["counts"]]:
        row = info["counts"][split]
        table.add_row(split, *[str(row[c]) for c in CLASSES], str(sum(row.values())))
    if info["subjects_known"] or any(info["subjects"].values()):
        table.add_row("subjects", *[str(info["subjects"][c]) for c in CLASSES],
                      str(len({s.subject_id for s in manifest.samples if s.subject_id})), style="dim")
    console.print(table)
    if info["image_sizes"]:
        sizes = ", ".join(f"{k} ({v})" for k, v in list(info["image_sizes"].items())[:5])
        console.print(f"image sizes (w x h): {sizes}")
    if split_report is not None:
        console.print(f"split by {split_report.group_kind}; groups per split: {split_report.n_groups}")
    if not info["subjects_known"]:
        console.print(f"[bold red]WARNING: {NO_SUBJECTS_WARNING}[/]")
    for key, ids in info["subject_overlap"].items():
        console.print(f"[bold red]LEAK: {len(ids)} subject(s) in both {key}: {', '.join(ids[:5])}…[/]")
    for warning in info["warnings"]:
        if warning != NO_SUBJECTS_WARNING:
            console.print(f"[yellow]warning: {warning}[/]")
    if manifest.skipped:
        console.print(f"[yellow]skipped {len(manifest.skipped)} file(s):[/]")
        for path, reason in manifest.skipped[:20]:
            console.print(f"  {path}: {reason}")
        if len(manifest.skipped) > 20:
            console.print(f"  … and {len(manifest.skipped) - 20} more (see 'skipped' in the JSON summary)")
