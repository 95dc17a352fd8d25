"""Draw docs/images/cohort_grid.png: synthetic slices per stage (rows) and subject (columns).

Each column is another subject at another slice level; the last column shows the planted-atrophy mask
(red) over the previous slice, so readers see what the ground truth marks. Deterministic: ``.venv/bin/python tools/make_cohort_grid.py [--out PATH]``.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SUBJECTS_PER_STAGE = 4
SLICE_INDICES = (1, 3, 5, 6)  # one per column: the slice level varies too
SCALE = 0.8
LABEL_WIDTH = 100


def build_grid(seed: int = 0) -> np.ndarray:
    """A BGR image: one row per stage, SUBJECTS_PER_STAGE slices plus a mask overlay."""
    from model.classes import CLASSES
    from model.fileio import read_grayscale
    from model.synth import synthesize_cohort

    with tempfile.TemporaryDirectory(prefix="alzaudit-grid-") as tmp:
        manifest = synthesize_cohort(Path(tmp) / "cohort", subjects=SUBJECTS_PER_STAGE * len(CLASSES),
                                     slices_per_subject=8, seed=seed, progress=False)
        rows = []
        for stage in CLASSES:
            subjects = sorted({s.subject_id for s in manifest if s.label == stage})[:SUBJECTS_PER_STAGE]
            chosen = [next(s for s in manifest if s.subject_id == subject and int(s.extra["slice_index"]) == k)
                      for subject, k in zip(subjects, SLICE_INDICES)]
            tiles = []
            for sample in chosen:
                tile = cv2.cvtColor(_small(read_grayscale(sample.path)), cv2.COLOR_GRAY2BGR)
                _caption(tile, f"{sample.subject_id} s={float(sample.extra['severity']):.2f} z={sample.extra['slice_z_mm']}")
                tiles.append(tile)
            last = chosen[-1]
            overlay = cv2.cvtColor(_small(read_grayscale(last.path)), cv2.COLOR_GRAY2BGR)
            mask = _small(read_grayscale(last.mask_path)) > 127
            overlay[mask] = (0.45 * overlay[mask] + 0.55 * np.array([40, 40, 255])).astype(np.uint8)
            _caption(overlay, "atrophy mask")
            label = np.zeros((overlay.shape[0], LABEL_WIDTH, 3), np.uint8)
            for i, word in enumerate(stage.replace("Demented", " Demented").split()):
                cv2.putText(label, word, (6, 76 + 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
            rows.append(np.concatenate([label, *tiles, overlay], axis=1))
    return np.concatenate(rows, axis=0)


def _small(image: np.ndarray) -> np.ndarray:
    return cv2.resize(image, None, fx=SCALE, fy=SCALE, interpolation=cv2.INTER_AREA)


def _caption(tile: np.ndarray, text: str) -> None:
    cv2.putText(tile, text, (3, tile.shape[0] - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (200, 200, 200), 1, cv2.LINE_AA)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(ROOT / "docs" / "images" / "cohort_grid.png"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    grid = build_grid(args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".png", grid, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise SystemExit(f"{out}: could not encode PNG")
    out.write_bytes(data.tobytes())
    print(f"wrote {out} ({len(data) // 1024} KB, {grid.shape[1]}x{grid.shape[0]})")


if __name__ == "__main__":
    main()
