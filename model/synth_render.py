"""Render one synthetic subject's axial slice: anatomy, planted atrophy, intensity, noise, masks.

Everything happens in 2-D on one template plane (fast): a subject-specific affine + smooth elastic warp
maps the 176 x 208 output grid into the template; atrophy is planted on the way (periventricular tissue
lost so the ventricles balloon, with a darkened white-matter halo; cortex thinned from its pial side; the
medial-temporal region eroded), then a contrast curve and gain (drawn per slice), a bias field, blur and
Rician noise make the intensities. Rendering the same slice with and without the planted atrophy gives
the ground-truth mask of where it changed the image.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from model.classes import CLASSES
from model.synth_template import T_CSF, TemplatePlanes

OUT_H, OUT_W = 208, 176
# Planted-atrophy magnitudes at atrophy 1.0 (severity 1 x severity_scale 1).
VENT_MM = 14.0           # periventricular tissue lost (mm): the ventricle wall moves outward by this
THIN_MM = 1.0            # cortex lost from the pial side (sulci widen by twice this)
HIPPO_MM = 5.0           # medial-temporal erosion depth
SULCI_MM = 1.2           # SD of the subject's own sulcal widening/narrowing (mm), unrelated to the stage
CORTEX_EXTENT_MM = 5.5   # grey matter farther than this from white matter is CSF even without atrophy
HALO_MM = 6.0            # width (mm) of the periventricular white-matter darkening at atrophy 1.0
HALO_DEPTH = 0.6         # how far that white matter darkens toward the grey-matter level
_WM_FLOOR = 0.62         # template T1 level of grey matter: the halo never darkens below it
MASK_THRESHOLD = 10.0    # grey levels (of 255): a pixel is in the atrophy mask if it changed more
MARKER_SIZE, MARKER_MARGIN = 7, 5


@dataclass(frozen=True)
class Subject:
    """Everything random about one synthetic subject; a pure function of (seed, subject number)."""

    subject_id: str
    stage: str
    severity: float              # drawn from the stage, in [0, 1]
    atrophy: float               # severity x severity_scale: what is planted
    z_mm: tuple[int, ...]        # MNI z of each slice
    noise_seeds: tuple[int, ...]  # one per slice
    marker_draws: tuple[float, ...]  # uniform draws deciding the shortcut marker, one per slice
    affine: tuple[float, ...]    # rotation (rad), scale x, scale y (output px per mm), shift x, y (px)
    elastic: np.ndarray          # (2, 5, 5) coarse displacement (mm) of the anatomy
    elastic_fine: np.ndarray     # (2, 9, 9) finer displacement (mm): the subject's own gyral shapes
    sulci: np.ndarray            # (8, 8) coarse field: where this subject's sulci are wider or narrower
    patch: np.ndarray            # (6, 6) coarse field modulating where the cortex thins most
    bias: np.ndarray             # (4, 4) coarse log-gain field
    vent_base: float             # natural (non-disease) ventricle size variation (mm)
    thin_base: tuple[float, ...]  # per slice: natural sulcal width (mm), unrelated to the stage
    contrast: tuple[tuple[float, ...], ...]  # per slice: outputs of the T1 contrast curve at _KNOTS
    gain: tuple[float, ...]      # per slice: overall brightness
    blur: float                  # Gaussian blur sigma (px)
    noise: float                 # Rician noise sigma (fraction of full scale)


_KNOTS = np.array([0.0, 0.25, 0.40, 0.55, 0.66, 0.78, 0.88, 1.0], dtype=np.float32)


def _contrast_curve(rng: np.random.Generator) -> np.ndarray:
    """Output levels at _KNOTS. CSF, grey- and white-matter levels differ from image to image, so that no
    fixed intensity range (a histogram bin) means "CSF" in every image."""
    csf = rng.uniform(0.04, 0.13)
    grey = rng.uniform(0.34, 0.46)
    white = rng.uniform(0.64, 0.78)
    return np.array([0.0, csf, csf + 0.07, (csf + 0.07 + grey) / 2 + 0.02, grey, (grey + white) / 2, white,
                     white + 0.07], dtype=np.float32)


def _slice_contrasts(rng: np.random.Generator, k: int) -> tuple[tuple[float, ...], ...]:
    """The subject's contrast curve, jittered slightly for each of its ``k`` slices."""
    curve = _contrast_curve(rng)
    jitter = rng.normal(0.0, 0.01, (k, len(curve))) * (curve > 0)
    return tuple(tuple(float(c) for c in np.clip(curve + j, 0.0, 1.0)) for j in jitter)


def draw_subject(rng: np.random.Generator, subject_id: str, stage: str, severity: float,
                 severity_scale: float, z_mm: tuple[int, ...]) -> Subject:
    """Draw the subject's anatomy, pose and scanner parameters (not its stage) from ``rng``."""
    k = len(z_mm)
    return Subject(
        subject_id=subject_id, stage=stage, severity=float(severity), atrophy=float(severity * severity_scale),
        z_mm=tuple(int(z) for z in z_mm),
        noise_seeds=tuple(int(s) for s in rng.integers(0, 2**31 - 1, k)),
        marker_draws=tuple(float(u) for u in rng.random(k)),
        affine=(float(rng.uniform(-0.10, 0.10)),  # rotation, about +-5.7 degrees
                *(float(s) for s in rng.uniform(0.80, 1.0) * rng.uniform(0.96, 1.04, 2)),  # head size, aspect
                *(float(t) for t in rng.uniform(-4.0, 4.0, 2))),
        elastic=rng.normal(0.0, 2.5, (2, 5, 5)).astype(np.float32),
        elastic_fine=rng.normal(0.0, 1.0, (2, 9, 9)).astype(np.float32),
        sulci=rng.normal(0.0, 1.0, (8, 8)).astype(np.float32),
        patch=rng.normal(0.0, 1.0, (6, 6)).astype(np.float32),
        bias=rng.normal(0.0, 0.06, (4, 4)).astype(np.float32),
        # Healthy ventricles differ in size between people by as much as very mild atrophy enlarges them.
        vent_base=float(rng.uniform(0.0, 2.5)),
        thin_base=tuple(float(v) for v in rng.uniform(0.0, 2.5, k)),
        # Each subject is scanned once: the scanner's contrast curve and gain belong to the subject, with a
        # small jitter per slice (export normalisation). Slices of one subject therefore share a look that
        # a model can memorise, which is what makes slice-level splits leak (docs/synthetic_cohort.md).
        contrast=_slice_contrasts(rng, k),
        gain=tuple(float(g) for g in rng.uniform(0.8, 1.2) * rng.uniform(0.97, 1.03, k)),
        blur=float(rng.uniform(0.0, 0.9)),
        noise=float(rng.uniform(0.012, 0.035)),
    )


@dataclass(frozen=True)
class SliceImages:
    """One rendered slice with its ground truth."""

    image: np.ndarray        # (208, 176) uint8
    mask: np.ndarray         # (208, 176) uint8, 255 where the planted atrophy changed the image
    brain: np.ndarray        # (208, 176) uint8, 255 inside the brain
    marker: bool             # whether the shortcut marker was drawn


def render_slice(template: TemplatePlanes, subject: Subject, k: int, *, shortcut_marker: float = 0.0,
                 atrophy: float | None = None) -> SliceImages:
    """Slice ``k`` of ``subject``; ``atrophy`` overrides the planted amount (0 renders the healthy twin)."""
    amount = subject.atrophy if atrophy is None else float(atrophy)
    plane = template.plane(subject.z_mm[k])
    col, row = subject_grid(template, subject)
    noise = np.random.default_rng(subject.noise_seeds[k]).normal(0.0, subject.noise, (2, OUT_H, OUT_W))
    noise = noise.astype(np.float32)
    brain = cv2.remap(template.brain[plane], col, row, cv2.INTER_LINEAR, borderValue=0.0)
    image = _intensity(subject, k, _anatomy(template, subject, k, col, row, amount), brain, noise)
    healthy = _intensity(subject, k, _anatomy(template, subject, k, col, row, 0.0), brain, noise)
    mask = (np.abs(image - healthy) * 255.0 > MASK_THRESHOLD) & (brain > 0.05)
    out = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    marker = subject.marker_draws[k] < shortcut_marker
    if marker:
        draw_marker(out, subject.stage)
    return SliceImages(out, mask.astype(np.uint8) * 255, (brain > 0.5).astype(np.uint8) * 255, marker)


def marker_box(stage: str) -> tuple[slice, slice]:
    """(rows, cols) of the shortcut marker for a stage: one image corner per class, outside the brain."""
    index = CLASSES.index(stage)
    top, left = index in (0, 1), index in (0, 2)
    r0 = MARKER_MARGIN if top else OUT_H - MARKER_MARGIN - MARKER_SIZE
    c0 = MARKER_MARGIN if left else OUT_W - MARKER_MARGIN - MARKER_SIZE
    return slice(r0, r0 + MARKER_SIZE), slice(c0, c0 + MARKER_SIZE)


def draw_marker(image: np.ndarray, stage: str) -> None:
    """A small bright square in the stage's corner (in place)."""
    rows, cols = marker_box(stage)
    image[rows, cols] = 255


def subject_grid(template: TemplatePlanes, subject: Subject) -> tuple[np.ndarray, np.ndarray]:
    """Template (col, row) sampled by each output pixel: the subject's pose plus its elastic anatomy."""
    theta, sx, sy, tx, ty = subject.affine
    rows, cols = np.mgrid[0:OUT_H, 0:OUT_W].astype(np.float32)
    u = cols - (OUT_W - 1) / 2.0 + tx
    v = rows - (OUT_H - 1) / 2.0 + ty
    c, s = np.cos(theta), np.sin(theta)
    ex, ey = (cv2.resize(subject.elastic[i], (OUT_W, OUT_H), interpolation=cv2.INTER_CUBIC)
              + cv2.resize(subject.elastic_fine[i], (OUT_W, OUT_H), interpolation=cv2.INTER_CUBIC) for i in (0, 1))
    col = template.centre[0] + (c * u - s * v) / sx + ex
    row = template.centre[1] + (s * u + c * v) / sy + ey
    return col.astype(np.float32), row.astype(np.float32)


def _anatomy(template: TemplatePlanes, subject: Subject, k: int, col: np.ndarray, row: np.ndarray,
             amount: float) -> np.ndarray:
    """Template T1 intensity seen by each output pixel after the subject's (natural + planted) atrophy."""
    plane = template.plane(subject.z_mm[k])
    t1 = _thinned_plane(template, subject, k, amount)
    # Ventricles: periventricular tissue within `lost` mm of them turns to CSF (they balloon), and the
    # tissue beyond is pushed outward a little, fading to nothing within a few mm (compact support, so
    # the atrophy mask stays near the ventricles).
    lost = VENT_MM * amount + subject.vent_base
    push = 0.4 * lost
    reach = max(3.0 * push, 1.0)
    d = cv2.remap(template.vent_dist[plane], col, row, cv2.INTER_LINEAR, borderValue=99.0)
    near_c = cv2.remap(template.vent_near[plane, 0], col, row, cv2.INTER_NEAREST, borderValue=0.0)
    near_r = cv2.remap(template.vent_near[plane, 1], col, row, cv2.INTER_NEAREST, borderValue=0.0)
    edge = cv2.remap(template.edge_dist[plane], col, row, cv2.INTER_LINEAR, borderValue=0.0)
    r = push * np.clip(1.0 - (d - lost) / reach, 0.0, 1.0) ** 2 * np.clip(edge / 10.0, 0.0, 1.0)
    outside = d > 0.5
    factor = np.where(outside, np.maximum(d - r, 0.0) / np.maximum(d, 1e-3), 1.0)
    dc = np.where(outside, (near_c - col) * (1.0 - factor), 0.0).astype(np.float32)
    dr = np.where(outside, (near_r - row) * (1.0 - factor), 0.0).astype(np.float32)
    dc, dr = cv2.GaussianBlur(dc, (0, 0), 1.0), cv2.GaussianBlur(dr, (0, 0), 1.0)
    t = cv2.remap(t1, col + dc, row + dr, cv2.INTER_LINEAR, borderValue=0.0)
    filled = np.clip(lost - d + 0.5, 0.0, 1.0) * outside
    # Periventricular white-matter damage (T1-hypointense caps and bands): white matter near the
    # enlarged ventricles darkens toward grey matter, in a band that widens with the atrophy.
    band = HALO_MM * amount
    halo = HALO_DEPTH * min(1.0, 3.0 * amount) * np.exp(-np.maximum(d - lost, 0.0) / max(band, 0.1))
    t = t - halo * np.clip(t - _WM_FLOOR, 0.0, None)
    return t + (T_CSF - t) * filled


def _thinned_plane(template: TemplatePlanes, subject: Subject, k: int, amount: float) -> np.ndarray:
    """The plane's T1 with cortex thinned from the pial side and the medial-temporal region eroded."""
    plane = template.plane(subject.z_mm[k])
    height, width = template.t1.shape[1:]
    patch = cv2.resize(subject.patch, (width, height), interpolation=cv2.INTER_CUBIC)
    sulci = cv2.resize(subject.sulci, (width, height), interpolation=cv2.INTER_CUBIC)
    # The subject's own sulcal pattern (the same in every slice, unrelated to the stage) plus the
    # atrophy's thinning, which is patchy too.
    thin = np.maximum((subject.thin_base[k] + THIN_MM * amount) * np.clip(1.0 + 0.4 * patch, 0.3, 1.7)
                      + SULCI_MM * sulci, 0.0)
    cortical = np.clip(template.wm_dist[plane] - (CORTEX_EXTENT_MM - thin) + 0.5, 0.0, 1.0) * template.cortex[plane]
    depth = template.hippo_depth[plane]
    medial = np.clip(HIPPO_MM * amount - depth + 1.0, 0.0, 1.0) * (depth > 0) * min(1.0, 4.0 * amount)
    lost = np.maximum(cortical, medial)
    t1 = template.t1[plane]
    return (t1 + (T_CSF - t1) * lost * (t1 > 0)).astype(np.float32)


def _intensity(subject: Subject, k: int, t: np.ndarray, brain: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Scanner model: contrast curve, smooth bias field, blur, Rician noise, skull-stripped background."""
    value = np.interp(t, _KNOTS, np.asarray(subject.contrast[k], dtype=np.float32)).astype(np.float32)
    bias = np.exp(cv2.resize(subject.bias, (OUT_W, OUT_H), interpolation=cv2.INTER_CUBIC))
    value = value * bias * subject.gain[k]
    if subject.blur > 0.05:
        value = cv2.GaussianBlur(value, (0, 0), subject.blur)
    value = np.sqrt((value + noise[0]) ** 2 + noise[1] ** 2)
    return np.clip(value * brain, 0.0, 1.0)
