"""The MNI152 template, prepared once as the axial planes the synthetic cohort is cut from.

The synthesiser warps and edits 2-D planes, so everything that needs the 3-D volume (the ventricles, the
distance to them, the medial-temporal region) is computed here, once per process, and stored per plane.
The template ships inside the nilearn wheel (MNI152 2009, 1 mm), so nothing is downloaded.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from model.errors import AlzAuditError

# MNI z range (mm) of the planes kept: the slice centres plus their jitter, with room for the 3-D fields.
Z_RANGE_MM = (-14, 34)
# Crop of the 197 x 233 axial plane (x columns, y rows) that holds the brain with a margin.
_X_CROP = (16, 181)
_Y_CROP = (18, 218)
MNI_ORIGIN_VOX = np.array([98, 134, 72])  # voxel of MNI (0, 0, 0) in nilearn's 1 mm template
# Medial-temporal (hippocampal) region: a tube through head, body and tail of each hippocampus (MNI mm).
_HIPPO_AXIS = ((27.0, -12.0, -20.0), (29.0, -24.0, -12.0), (27.0, -34.0, -4.0), (22.0, -40.0, 2.0))
_HIPPO_RADIUS_MM = 7.0
T_CSF = 0.30  # template intensity given to tissue the atrophy removes (ventricular CSF is 0.25-0.45)


@dataclass(frozen=True)
class TemplatePlanes:
    """Axial planes of the template and the fields derived from it, indexed ``[plane, row, col]``.

    Rows run anterior (top) to posterior, columns along MNI x; one plane per millimetre of ``z_mm``.
    """

    z_mm: np.ndarray          # (Z,) int, MNI z of each plane
    t1: np.ndarray            # (Z, H, W) float32 T1 intensity in [0, 1], 0 outside the brain
    brain: np.ndarray         # (Z, H, W) float32 soft brain mask in [0, 1]
    vent_dist: np.ndarray     # (Z, H, W) float32 3-D distance (mm) to the lateral ventricles, 0 inside
    vent_near: np.ndarray     # (Z, 2, H, W) float32 (col, row) of the nearest ventricle voxel
    edge_dist: np.ndarray     # (Z, H, W) float32 3-D distance (mm) to the brain's outer surface
    wm_dist: np.ndarray       # (Z, H, W) float32 in-plane distance (mm) to white matter
    cortex: np.ndarray        # (Z, H, W) float32 weight of cortical grey matter that may thin
    hippo_depth: np.ndarray   # (Z, H, W) float32 depth (mm) inside the medial-temporal region, 0 outside
    centre: tuple[float, float]  # (col, row) of the brain's centre in plane coordinates

    def plane(self, z_mm: int) -> int:
        """Index of the plane at MNI ``z_mm``."""
        index = int(z_mm) - int(self.z_mm[0])
        if not 0 <= index < len(self.z_mm):
            raise ValueError(f"z={z_mm} mm is outside the prepared template range {Z_RANGE_MM}")
        return index


MNI152_SHAPE = (197, 233, 189)  # nilearn's 1 mm MNI152 2009 grid


@functools.lru_cache(maxsize=1)
def mni152_volumes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """nilearn's bundled MNI152 T1, GM and WM volumes (offline), float32 ``[x, y, z]``; checked and cached.

    The one loader of the template: the synthetic cohort and the audit's registration (audit.anatomy) read it."""
    try:
        from nilearn import datasets

        t1_img = datasets.load_mni152_template(resolution=1)
        gm_img = datasets.load_mni152_gm_template(resolution=1)
        wm_img = datasets.load_mni152_wm_template(resolution=1)
    except Exception as exc:  # pragma: no cover - depends on the installed nilearn
        raise AlzAuditError(f"nilearn MNI152 template: could not be loaded ({type(exc).__name__}: {exc})") from None
    t1 = np.asarray(t1_img.get_fdata(dtype=np.float32))
    if t1.shape != MNI152_SHAPE or np.abs(t1_img.affine[:3, 3] + MNI_ORIGIN_VOX).max() > 1:
        raise AlzAuditError(f"nilearn MNI152 template: unexpected grid {t1.shape}; this nilearn version is not supported")
    return t1, np.asarray(gm_img.get_fdata(dtype=np.float32)), np.asarray(wm_img.get_fdata(dtype=np.float32))


@functools.lru_cache(maxsize=1)
def load_template() -> TemplatePlanes:
    """Load nilearn's bundled MNI152 T1/GM/WM (offline) and derive the per-plane fields; cached."""
    return _prepare(*mni152_volumes())


def _prepare(t1: np.ndarray, gm: np.ndarray, wm: np.ndarray) -> TemplatePlanes:
    # Work on a z-slab with margin below (temporal horns, hippocampus) so 3-D distances are right.
    z0 = MNI_ORIGIN_VOX[2] + Z_RANGE_MM[0] - 20
    z1 = MNI_ORIGIN_VOX[2] + Z_RANGE_MM[1] + 12
    xs, ys = slice(*_X_CROP), slice(*_Y_CROP)
    t1, gm, wm = (v[xs, ys, z0:z1] for v in (t1, gm, wm))
    brain = t1 > 0.05
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * brain
    edge = ndi.distance_transform_edt(brain).astype(np.float32)

    ventricles = _lateral_ventricles(t1, brain, csf, edge, offset=np.array([_X_CROP[0], _Y_CROP[0], z0]))
    vent_dist, near = ndi.distance_transform_edt(~ventricles, return_indices=True)
    hippo_depth = _hippocampal_depth(gm, wm, ventricles, offset=np.array([_X_CROP[0], _Y_CROP[0], z0]))

    # Uniform CSF inside the ventricles, so tissue the atrophy turns into CSF (T_CSF) joins them seamlessly.
    t1 = np.where(ventricles, np.float32(T_CSF), t1)

    keep = slice(Z_RANGE_MM[0] + MNI_ORIGIN_VOX[2] - z0, Z_RANGE_MM[1] + MNI_ORIGIN_VOX[2] - z0 + 1)
    t1, gm, wm, brain, edge = (v[:, :, keep] for v in (t1, gm, wm, brain, edge))
    vent_dist, hippo_depth = vent_dist[:, :, keep], hippo_depth[:, :, keep]
    near = near[:, :, :, keep]

    # In-plane distance from white matter: cortex thins from its pial side, i.e. where this is largest,
    # which also opens the sulci (the template is an average, so its sulci are blurred shut).
    white = wm > 0.5
    wm_dist = np.stack([ndi.distance_transform_edt(~white[:, :, k]) for k in range(white.shape[2])], axis=2)
    cortex = np.clip((gm - 0.25) / 0.35, 0.0, 1.0) * np.clip((24.0 - edge) / 6.0, 0.0, 1.0)
    cortex *= (hippo_depth <= 0) & (vent_dist > 3)

    def planes(volume: np.ndarray) -> np.ndarray:
        # (x, y, z) voxels -> (z, row, col) with anterior at the top.
        return np.ascontiguousarray(np.transpose(volume, (2, 1, 0))[:, ::-1, :], dtype=np.float32)

    height = _Y_CROP[1] - _Y_CROP[0]
    near_col = near[0]
    near_row = (height - 1) - near[1]
    rows, cols = np.nonzero(planes(brain.astype(np.float32))[8:-8])[1:]
    return TemplatePlanes(
        z_mm=np.arange(Z_RANGE_MM[0], Z_RANGE_MM[1] + 1),
        t1=planes(t1 * brain),
        brain=planes(ndi.gaussian_filter(brain.astype(np.float32), 0.6)),
        vent_dist=planes(vent_dist),
        vent_near=np.stack([planes(near_col), planes(near_row)], axis=1),
        edge_dist=planes(edge),
        wm_dist=planes(wm_dist),
        cortex=planes(cortex),
        hippo_depth=planes(hippo_depth),
        centre=(float(cols.mean()), float(rows.mean())),
    )


def _lateral_ventricles(t1: np.ndarray, brain: np.ndarray, csf: np.ndarray, edge: np.ndarray,
                        offset: np.ndarray) -> np.ndarray:
    """The lateral ventricles (bodies, horns and temporal horns): dark, deep CSF components off the midline."""
    candidates = (t1 < 0.5) & brain & (edge > 10) & (csf > 0.5)
    labels, n = ndi.label(candidates)
    if n == 0:
        raise AlzAuditError("nilearn MNI152 template: no ventricles found; this nilearn version is not supported")
    index = np.arange(1, n + 1)
    sizes = ndi.sum_labels(candidates, labels, index)
    centres = np.array(ndi.center_of_mass(candidates, labels, index)) + offset - MNI_ORIGIN_VOX
    body = (sizes > 2000) & (np.abs(centres[:, 0]) > 6) & (np.abs(centres[:, 0]) < 22) & (centres[:, 2] > 0)
    temporal = ((sizes > 50) & (np.abs(centres[:, 0]) > 20) & (np.abs(centres[:, 0]) < 38)
                & (centres[:, 2] < -10) & (centres[:, 1] > -30) & (centres[:, 1] < 5))
    if body.sum() < 2:
        raise AlzAuditError("nilearn MNI152 template: lateral ventricles not found; this nilearn version is not supported")
    return np.isin(labels, index[body | temporal])


def _hippocampal_depth(gm: np.ndarray, wm: np.ndarray, ventricles: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Depth (mm) inside a tube along each hippocampus, restricted to tissue; 0 outside the region."""
    axis = np.array(_HIPPO_AXIS, dtype=np.float32)
    region = np.zeros(gm.shape, dtype=bool)
    for side in (-1.0, 1.0):
        points = axis * np.array([side, 1.0, 1.0], dtype=np.float32)
        # Only the box around this tube is searched: the whole slab would cost seconds.
        lo = np.floor(points.min(0) - _HIPPO_RADIUS_MM).astype(int) + MNI_ORIGIN_VOX - offset
        hi = np.ceil(points.max(0) + _HIPPO_RADIUS_MM).astype(int) + MNI_ORIGIN_VOX - offset + 1
        lo, hi = np.maximum(lo, 0), np.minimum(hi, gm.shape)
        grid = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij"), axis=-1)
        mni = (grid + offset - MNI_ORIGIN_VOX).astype(np.float32)
        distance = np.min([_segment_distance(mni, a, b) for a, b in zip(points[:-1], points[1:])], axis=0)
        region[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] |= distance < _HIPPO_RADIUS_MM
    region &= (gm + wm > 0.5) & ~ventricles
    return ndi.distance_transform_edt(region).astype(np.float32)


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = np.clip(((points - a) @ ab) / float(ab @ ab), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[..., None] * ab), axis=-1)
