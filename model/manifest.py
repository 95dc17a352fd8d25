"""Index a dataset folder into a manifest: one row per image with label, subject, split and mask.

Understands the layouts users bring (see docs/datasets.md): plain class folders (Kaggle Alzheimer MRI),
the Kaggle augmented dataset (``OriginalDataset/`` and ``AugmentedAlzheimerDataset/``), split-folders
output (``train/ val/ test/`` with class folders inside), OASIS slice exports whose file names carry
subject IDs, and any folder holding a ``manifest.csv`` (the synthetic cohort writes one).
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator

from model.classes import CLASSES, canonical_class
from model.errors import AlzAuditError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
SPLIT_NAMES = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "test": "test", "testing": "test"}
KAGGLE_SOURCES = ("OriginalDataset", "AugmentedAlzheimerDataset")
MANIFEST_NAME = "manifest.csv"
# Folders beside the class folders that hold masks, not images of a class (the synthetic cohort's).
AUXILIARY_FOLDERS = ("masks", "mask", "brain_masks")
CORE_COLUMNS = ("path", "label", "subject_id", "split", "mask_path")

# Subject IDs that file names carry: OASIS-1/2 (OAS1_0028_MR1_mpr-1_145.jpg -> OAS1_0028) and ADNI PTIDs.
_SUBJECT_PATTERNS = (
    re.compile(r"(OAS[123]_\d{4})", re.IGNORECASE),
    re.compile(r"(?<!\d)(\d{3}_S_\d{4})(?!\d)"),
    re.compile(r"(SYN_\d{4})"),  # the synthetic cohort
)


def parse_subject_id(filename: str) -> str | None:
    """Subject ID carried by a file name (``OAS1_0028_MR1_mpr-1_145.jpg`` -> ``OAS1_0028``), else None."""
    for pattern in _SUBJECT_PATTERNS:
        match = pattern.search(filename)
        if match:
            return match.group(1).upper()
    return None


@dataclass(frozen=True)
class Sample:
    """One image. ``path``/``mask_path`` are absolute; ``extra`` keeps other manifest columns (its
    ``*_path`` columns, such as ``brain_mask_path``, absolute too; relative ones count from ``Manifest.root``)."""

    path: Path
    label: str
    subject_id: str | None = None
    split: str | None = None
    mask_path: Path | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def label_index(self) -> int:
        return CLASSES.index(self.label)


@dataclass
class Manifest:
    """The samples of a dataset plus what indexing had to say about it."""

    root: Path
    samples: list[Sample]
    layout: str = "manifest"
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    @property
    def subjects_known(self) -> bool:
        return bool(self.samples) and all(s.subject_id for s in self.samples)

    @property
    def has_splits(self) -> bool:
        return bool(self.samples) and all(s.split for s in self.samples)

    @property
    def has_masks(self) -> bool:
        return any(s.mask_path for s in self.samples)

    def labels(self) -> list[str]:
        return [s.label for s in self.samples]

    def label_indices(self) -> list[int]:
        return [s.label_index for s in self.samples]

    def subset(self, samples: Iterable[Sample]) -> "Manifest":
        return replace(self, samples=list(samples), skipped=list(self.skipped), warnings=list(self.warnings))

    def without_masks(self) -> "Manifest":
        """The same images with no lesion or brain masks: what users' Kaggle and OASIS slices look like."""
        return self.subset(replace(s, mask_path=None, extra={k: v for k, v in s.extra.items() if k != "brain_mask_path"})
                           for s in self.samples)

    def split(self, name: str) -> "Manifest":
        """The samples of one split; an error naming the split when there are none."""
        if not self.has_splits:
            raise AlzAuditError(f"{self.root}: the manifest has no split column; run 'alzaudit data split' first")
        chosen = [s for s in self.samples if s.split == name]
        if not chosen:
            present = sorted({s.split for s in self.samples})
            raise AlzAuditError(f"{self.root}: split '{name}' is empty (splits present: {', '.join(present)})")
        return self.subset(chosen)

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class: ``{split: {class: n}}`` (split ``"all"`` when unsplit)."""
        table: dict[str, dict[str, int]] = {}
        for s in self.samples:
            row = table.setdefault(s.split or "all", {c: 0 for c in CLASSES})
            row[s.label] += 1
        return table

    def subject_counts(self) -> dict[str, int]:
        """Distinct subjects per class (0 where subject IDs are unknown)."""
        subjects: dict[str, set] = {c: set() for c in CLASSES}
        for s in self.samples:
            if s.subject_id:
                subjects[s.label].add(s.subject_id)
        return {c: len(v) for c, v in subjects.items()}

    def content_hash(self) -> str:
        """SHA-256 over every row and each file's size: changes when labels, splits or files change,
        not when the dataset moves (only the file's folder and name enter, not the full path)."""
        digest = hashlib.sha256()
        rows = []
        for s in self.samples:
            try:
                size = s.path.stat().st_size
            except OSError:
                size = -1
            rows.append(f"{s.path.parent.name}/{s.path.name}|{s.label}|{s.subject_id}|{s.split}|{size}\n")
        for row in sorted(rows):
            digest.update(row.encode())
        return digest.hexdigest()


# ----------------------------------------------------------------------------------------------- I/O
def write_manifest(manifest: Manifest, path: str | os.PathLike) -> Path:
    """Write the manifest as CSV, atomically, with every file path relative to the CSV's own folder.

    Relative (POSIX ``/``, with ``..`` for files outside the folder) so a run or dataset folder that is
    moved or copied elsewhere, together with what it points at, still loads; absolute only where no
    relative path exists (another drive on Windows). This covers ``path``, ``mask_path`` and every
    other ``*_path`` column (e.g. ``brain_mask_path``).
    """
    from model.fileio import atomic_write_text

    path = Path(path)
    extra_cols: list[str] = []
    for s in manifest.samples:
        for key in s.extra:
            if key not in extra_cols and key not in CORE_COLUMNS:
                extra_cols.append(key)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*CORE_COLUMNS, *extra_cols])
    base = Path(os.path.abspath(path.parent))
    root = Path(manifest.root)
    for s in manifest.samples:
        writer.writerow([
            _relative(s.path, base), s.label, s.subject_id or "", s.split or "",
            _relative(s.mask_path, base) if s.mask_path else "",
            *[_relative(root / str(s.extra[k]), base) if _is_path_column(k) and s.extra.get(k) not in (None, "")
              else _csv_value(s.extra.get(k)) for k in extra_cols],
        ])
    atomic_write_text(path, buffer.getvalue())
    return path


def read_manifest(path: str | os.PathLike, *, check_files: bool = True) -> Manifest:
    """Read a manifest CSV written by :func:`write_manifest` (or by hand: ``path,label`` suffice).

    Relative paths count from the CSV's folder (so a moved folder still loads); absolute paths, as older
    versions wrote them, are used as they are.
    """
    path = Path(path)
    if not path.is_file():
        raise AlzAuditError(f"{path}: manifest not found")
    base = path.parent.resolve()
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            missing = [c for c in ("path", "label") if c not in columns]
            if missing:
                raise AlzAuditError(f"{path}: manifest lacks column(s) {', '.join(missing)}")
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise AlzAuditError(f"{path}: not a readable CSV manifest ({exc})") from None
    samples, skipped = [], []
    for line, row in enumerate(rows, start=2):
        label = canonical_class(row.get("label") or "")
        if label is None:
            raise AlzAuditError(f"{path}:{line}: unknown class '{row.get('label')}' (known: {', '.join(CLASSES)})")
        image = _resolve(row["path"], base)
        if check_files and not image.is_file():
            skipped.append((str(image), "listed in the manifest but missing"))
            continue
        split = (row.get("split") or "").strip().lower() or None
        if split is not None and split not in _SPLIT_ALIASES:
            raise AlzAuditError(f"{path}:{line}: unknown split '{split}' (use train, val or test)")
        mask = (row.get("mask_path") or "").strip()
        extra = {k: v for k, v in row.items() if k not in CORE_COLUMNS and k is not None and v not in (None, "")}
        for key in [k for k in extra if _is_path_column(k)]:  # other file columns, e.g. brain_mask_path
            extra[key] = str(_resolve(extra[key], base))
        samples.append(Sample(
            path=image, label=label, subject_id=(row.get("subject_id") or "").strip() or None,
            split=_SPLIT_ALIASES[split] if split else None,
            mask_path=_resolve(mask, base) if mask else None, extra=extra,
        ))
    manifest = Manifest(root=base, samples=samples, layout="manifest", skipped=skipped)
    if skipped:
        manifest.warnings.append(f"{len(skipped)} file(s) listed in {path.name} are missing")
    if not samples:
        raise AlzAuditError(f"{path}: the manifest lists no usable images")
    return manifest


def load_dataset(target: str | os.PathLike, *, verify: bool = True) -> Manifest:
    """A manifest CSV, a folder holding ``manifest.csv``, or a dataset folder to index."""
    target = Path(target)
    if target.is_file():
        return read_manifest(target)
    if (target / MANIFEST_NAME).is_file():
        return read_manifest(target / MANIFEST_NAME)
    return index_dataset(target, verify=verify)


# ------------------------------------------------------------------------------------------ indexing
def index_dataset(root: str | os.PathLike, *, verify: bool = True, source: str | None = None) -> Manifest:
    """Walk a dataset folder and build its manifest.

    ``verify`` decodes every image so corrupt files are found now (and listed), not mid-training.
    ``source`` picks one part of the Kaggle augmented layout (``OriginalDataset`` or
    ``AugmentedAlzheimerDataset``); by default both are indexed and tagged in the ``source`` column.
    """
    root = Path(root)
    if not root.exists():
        raise AlzAuditError(f"{root}: dataset folder not found")
    if not root.is_dir():
        raise AlzAuditError(f"{root}: not a folder (give a dataset folder or a manifest .csv)")
    root = root.resolve()
    skipped: list[tuple[str, str]] = []
    warnings: list[str] = []
    entries: list[tuple[Path, str, str | None, dict]] = []  # (image, label, split, extra)

    split_dirs = _split_folders(root)
    kaggle_dirs = [root / name for name in KAGGLE_SOURCES if (root / name).is_dir()]
    if source is not None:
        if not (root / source).is_dir():
            raise AlzAuditError(f"{root}: no '{source}' folder (found: {', '.join(p.name for p in kaggle_dirs) or 'none'})")
        kaggle_dirs = [root / source]
    if split_dirs:
        layout = "split-folders"
        for split, folder in split_dirs.items():
            for image, label, extra in _scan_class_folders(folder, skipped, warnings):
                entries.append((image, label, split, extra))
    elif kaggle_dirs:
        layout = "kaggle-augmented"
        for folder in kaggle_dirs:
            for image, label, extra in _scan_class_folders(_descend_single(folder), skipped, warnings):
                entries.append((image, label, None, {**extra, "source": folder.name}))
    else:
        layout = "class-folders"
        for image, label, extra in _scan_class_folders(_descend_single(root), skipped, warnings):
            entries.append((image, label, None, extra))

    if not entries:
        raise AlzAuditError(f"{root}: no images found in any class folder (expected folders named like {', '.join(CLASSES)})")

    sizes = _probe_images([e[0] for e in entries]) if verify else [None] * len(entries)
    samples: list[Sample] = []
    for (image, label, split, extra), size in zip(entries, sizes):
        if verify and isinstance(size, str):
            skipped.append((str(image), size))
            continue
        if size is not None:
            extra = {**extra, "height": size[0], "width": size[1]}
        samples.append(Sample(path=image, label=label, subject_id=parse_subject_id(image.name),
                              split=split, extra=extra))
    if not samples:
        raise AlzAuditError(f"{root}: none of the {len(entries)} image files could be read")
    if any(s.subject_id for s in samples) and not all(s.subject_id for s in samples):
        n = sum(1 for s in samples if not s.subject_id)
        warnings.append(f"{n} image(s) carry no subject ID in their file name")
    if any("OAS" in (s.subject_id or "") for s in samples):
        layout = f"{layout}+oasis" if layout != "class-folders" else "oasis"
    present = {s.label for s in samples}
    if len(present) == 1:
        warnings.append(f"only one class present ({next(iter(present))}): classification metrics are meaningless")
    manifest = Manifest(root=root, samples=samples, layout=layout, skipped=skipped, warnings=warnings)
    if skipped:
        manifest.warnings.append(f"{len(skipped)} file(s) skipped (see the skipped list)")
    return manifest


def _split_folders(root: Path) -> dict[str, Path]:
    found = {}
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        split = _SPLIT_ALIASES.get(child.name.lower())
        if split:
            if split in found:
                raise AlzAuditError(f"{root}: two folders name the split '{split}' ({found[split].name}, {child.name})")
            found[split] = child
    return found


def _descend_single(folder: Path) -> Path:
    """Kaggle archives often wrap the class folders in one extra folder: step into it."""
    current = folder
    for _ in range(3):
        children = [p for p in current.iterdir() if p.is_dir() and not p.name.startswith(".")]
        if any(canonical_class(p.name) for p in children) or len(children) != 1:
            return current
        if _split_folders(current):
            return current
        current = children[0]
    return current


def _scan_class_folders(folder: Path, skipped: list, warnings: list) -> Iterator[tuple[Path, str, dict]]:
    children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
    known = [(p, canonical_class(p.name)) for p in children]
    unknown = [p.name for p, label in known if label is None and p.name.lower() not in AUXILIARY_FOLDERS]
    if unknown:
        raise AlzAuditError(
            f"{folder}: unknown class folder(s) {', '.join(repr(u) for u in unknown)} "
            f"(known stages: {', '.join(CLASSES)}, or aliases such as 'Very mild Dementia')")
    labels_seen: dict[str, Path] = {}
    for class_dir, label in known:
        if label is None:
            continue
        if label in labels_seen:
            raise AlzAuditError(f"{folder}: folders '{labels_seen[label].name}' and '{class_dir.name}' both map to {label}")
        labels_seen[label] = class_dir
        n_images = 0
        for path in sorted(class_dir.rglob("*")):
            if path.is_dir():
                continue
            if path.name.startswith(".") or path.name in ("Thumbs.db", "desktop.ini"):
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append((str(path), "not an image file"))
                continue
            n_images += 1
            yield path, label, {}
        if n_images == 0:
            warnings.append(f"class folder {class_dir} is empty")
    if not labels_seen:
        raise AlzAuditError(f"{folder}: no class folders found (expected folders named like {', '.join(CLASSES)})")


def _probe_images(paths: list[Path]) -> list:
    """(height, width) per image, or the reason it cannot be read."""
    from model.fileio import probe_image

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(probe_image, paths, chunksize=64))


def _is_path_column(name: str) -> bool:
    return name.endswith("_path")


def _relative(path: str | os.PathLike | None, base: Path) -> str:
    """``path`` relative to the folder ``base`` in POSIX form: plain inside it, with ``..`` outside it,
    absolute (POSIX form) only when there is no relative path (another drive on Windows)."""
    if path is None:
        return ""
    target = Path(os.path.abspath(path))
    if base in target.parents:  # the common case, without touching the disk
        return target.relative_to(base).as_posix()
    # Otherwise compare with symlinks resolved, as the reader resolves the manifest's folder.
    real, real_base = target.resolve(), base.resolve()
    if real_base in real.parents:
        return real.relative_to(real_base).as_posix()
    try:
        return Path(os.path.relpath(real, real_base)).as_posix()
    except ValueError:  # no relative path between drives
        return target.as_posix()


def _resolve(text: str, base: Path) -> Path:
    """A manifest entry as an absolute path: relative ones count from the manifest's folder ``base``."""
    path = Path(text.strip())
    return path if path.is_absolute() else Path(os.path.normpath(base / path))


def _csv_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
