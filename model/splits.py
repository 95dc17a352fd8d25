"""Subject-aware, stratified, seeded splitting: no subject ever lands in two splits.

Slice-level splits of MRI data put neighbouring slices of one brain on both sides and inflate accuracy
by ~30 points (Yagis et al. 2021); where subject IDs are unknown we can only split by slice (or by
pseudo-subject, see ``audit.leakage``) and we say so loudly.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from typing import Iterable, Mapping, Sequence

import numpy as np

from model.classes import CLASSES
from model.errors import ParameterError
from model.manifest import SPLIT_NAMES, Manifest, Sample

DEFAULT_RATIOS = (0.7, 0.15, 0.15)
NO_SUBJECTS_WARNING = (
    "NO SUBJECT IDs: this split is by slice, so slices of one brain can sit in both train and test; "
    "accuracy will be inflated (Yagis et al. 2021: +30 points on OASIS). Use data with subject IDs or "
    "--group pseudo.")


@dataclass(frozen=True)
class SplitReport:
    group_kind: str          # "subject" | "pseudo" | "slice"
    n_groups: dict           # split -> number of groups
    warnings: tuple[str, ...]


def parse_ratios(text: str | Sequence[float]) -> tuple[float, float, float]:
    """``"0.7,0.15,0.15"`` -> (0.7, 0.15, 0.15); ratios must be non-negative and sum to 1."""
    try:
        values = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise ParameterError("ratios", f"'{text}' is not three comma-separated numbers") from None
    if len(values) != 3 or any(v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-6:
        raise ParameterError("ratios", f"need three non-negative numbers for train,val,test summing to 1, got '{text}'")
    return values[0], values[1], values[2]


def split_manifest(manifest: Manifest, ratios: Sequence[float] = DEFAULT_RATIOS, *, seed: int = 0,
                   group: str = "subject", groups: Mapping[str, str] | None = None) -> tuple[Manifest, SplitReport]:
    """Assign ``train``/``val``/``test`` to every sample.

    ``group="subject"`` keeps each subject whole (falls back to slices when IDs are unknown, with a
    warning); ``"slice"`` splits images independently (leaky, for demonstrations); ``"pseudo"`` keeps
    each group given in ``groups`` (path -> pseudo-subject, from the leakage module) whole.
    Stratified: each class's groups are divided by the ratios separately.
    """
    ratios = parse_ratios(ratios)
    warnings: list[str] = []
    keys = _group_keys(manifest, group, groups, warnings)
    # A group's class is its most common label (a subject has one stage; ties broken by class order).
    labels_by_group: dict[str, Counter] = defaultdict(Counter)
    for key, sample in zip(keys, manifest.samples):
        labels_by_group[key][sample.label] += 1
    by_class: dict[str, list[str]] = defaultdict(list)
    for key, counter in labels_by_group.items():
        label = max(counter.items(), key=lambda kv: (kv[1], -CLASSES.index(kv[0])))[0]
        by_class[label].append(key)

    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for label in CLASSES:
        members = sorted(by_class.get(label, []))
        rng.shuffle(members)
        for key, split in zip(members, _allocate(len(members), ratios)):
            assignment[key] = split
        if 0 < len(members) < 3:
            warnings.append(f"{label}: only {len(members)} {group if group != 'slice' else 'slice'} group(s); "
                            "it cannot appear in every split")
    samples = [replace(s, split=assignment[k]) for k, s in zip(keys, manifest.samples)]
    n_groups = {name: len({k for k in assignment if assignment[k] == name}) for name in SPLIT_NAMES}
    kind = group if not (group == "subject" and not manifest.subjects_known) else "slice"
    out = manifest.subset(samples)
    out.warnings.extend(warnings)
    return out, SplitReport(group_kind=kind, n_groups=n_groups, warnings=tuple(warnings))


def _group_keys(manifest: Manifest, group: str, groups: Mapping[str, str] | None, warnings: list[str]) -> list[str]:
    if group == "slice":
        warnings.append("slice-level split requested: subjects may span splits (leaky by design)")
        return [f"slice:{s.path}" for s in manifest.samples]
    if group == "pseudo":
        if groups is None:
            raise ParameterError("groups", "group 'pseudo' needs pseudo-subject groups (audit.leakage.pseudo_subjects)")
        return [f"pseudo:{groups.get(str(s.path), str(s.path))}" for s in manifest.samples]
    if group != "subject":
        raise ParameterError("group", f"unknown grouping '{group}' (use subject, pseudo or slice)")
    missing = sum(1 for s in manifest.samples if not s.subject_id)
    if missing:
        warnings.append(NO_SUBJECTS_WARNING if missing == len(manifest.samples)
                        else f"{missing} image(s) have no subject ID and are split by slice")
    return [f"subject:{s.subject_id}" if s.subject_id else f"slice:{s.path}" for s in manifest.samples]


def _allocate(n: int, ratios: Sequence[float]) -> list[str]:
    """Split names for ``n`` shuffled groups: largest-remainder counts, every non-zero split gets one if it can."""
    exact = np.array(ratios, dtype=float) * n
    counts = np.floor(exact).astype(int)
    for idx in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[idx] += 1
    # Guarantee at least one group in each split with a non-zero ratio when there are enough groups,
    # taking from the largest split (test first, then val, is what evaluation needs most).
    for idx in (2, 1, 0):
        if ratios[idx] > 0 and counts[idx] == 0 and n >= sum(1 for r in ratios if r > 0):
            donor = int(np.argmax(counts))
            if counts[donor] > 1:
                counts[donor] -= 1
                counts[idx] += 1
    out: list[str] = []
    for name, count in zip(SPLIT_NAMES, counts):
        out.extend([name] * int(count))
    return out


def subjects_by_split(samples: Iterable[Sample]) -> dict[str, set[str]]:
    """The known subject IDs of each split: ``{"train": {ids…}, …}`` (samples without an ID or split skipped)."""
    by_split: dict[str, set[str]] = defaultdict(set)
    for s in samples:
        if s.subject_id and s.split:
            by_split[s.split].add(s.subject_id)
    return dict(by_split)


def subject_overlap(manifest: Manifest) -> dict[str, list[str]]:
    """Subjects present in more than one split: ``{"train-test": [ids…], …}`` (known IDs only)."""
    by_split = subjects_by_split(manifest.samples)
    out = {}
    names = [n for n in SPLIT_NAMES if n in by_split]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = sorted(by_split[a] & by_split[b])
            if shared:
                out[f"{a}-{b}"] = shared
    return out


def ensure_split(manifest: Manifest, *, seed: int = 0, ratios: Sequence[float] = DEFAULT_RATIOS) -> Manifest:
    """The manifest as is when every sample has a split, else split subject-aware with ``seed``."""
    if manifest.has_splits:
        return manifest
    split, report = split_manifest(manifest, ratios, seed=seed)
    split.warnings.append(f"no split in the data: split subject-aware now (seed {seed}, ratios "
                          f"{','.join(str(r) for r in ratios)}; by {report.group_kind})")
    return split
