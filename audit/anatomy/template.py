"""The MNI152 2009 template volumes and the axial-plane geometry shared by registration and the prior.

Both modules work on axial planes of nilearn's bundled, skull-stripped MNI152 2009c template (T1 plus
grey- and white-matter probability maps, 1 mm; read from the nilearn wheel, no download). A plane is a
``(row, col)`` array with anterior at the top and columns along MNI x, cropped to the brain with a
margin; one plane per millimetre of MNI z. Loading takes about a second, so it is cached per process.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from model.synth_template import MNI152_SHAPE as _SHAPE
from model.synth_template import MNI_ORIGIN_VOX as _MNI_ORIGIN_VOX

_MARGIN = 6  # voxels of background kept around the brain's bounding box


@dataclass(frozen=True)
class Volumes:
    """Cropped template volumes indexed ``[x, y, z]`` (voxels, 1 mm) and where the crop sits in MNI."""

    t1: np.ndarray      # float32 in [0, 1], 0 outside the brain (the template is skull-stripped)
    gm: np.ndarray      # float32 grey-matter probability
    wm: np.ndarray      # float32 white-matter probability
    origin: np.ndarray  # (3,) int: MNI mm of voxel [0, 0, 0]

    @property
    def z_mm(self) -> np.ndarray:
        return np.arange(self.t1.shape[2]) + int(self.origin[2])

    def z_index(self, z_mm: float) -> int:
        return round(z_mm) - int(self.origin[2])


@functools.lru_cache(maxsize=1)
def load_volumes() -> Volumes:
    """nilearn's MNI152 T1/GM/WM (offline), cropped to the brain with an even-sized plane; cached."""
    from model.synth_template import mni152_volumes

    t1, gm, wm = mni152_volumes()
    t1 = t1 / max(float(t1.max()), 1e-6)
    brain = t1 > 0.05
    lo, hi = [], []
    for axis in range(3):
        present = np.nonzero(brain.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        a, b = int(present[0]) - _MARGIN, int(present[-1]) + _MARGIN + 1
        if axis < 2 and (b - a) % 2:  # even plane sides: the 2 mm working grid is exactly half
            b += 1
        lo.append(max(a, 0))
        hi.append(min(b, _SHAPE[axis]))
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    return Volumes(t1=np.ascontiguousarray(t1[box]), gm=np.ascontiguousarray(gm[box]),
                   wm=np.ascontiguousarray(wm[box]), origin=np.array(lo) - _MNI_ORIGIN_VOX)


def template_version() -> str:
    """What the template's derived arrays depend on besides alzaudit's own code, for cache keys: nilearn's
    MNI152 files, and the numpy, SciPy and OpenCV that resample, filter and distance-transform them."""
    import cv2
    import nilearn
    import scipy

    return f"nilearn-{nilearn.__version__}|numpy-{np.__version__}|scipy-{scipy.__version__}|opencv-{cv2.__version__}"


def to_planes(volume: np.ndarray) -> np.ndarray:
    """``[x, y, z]`` voxels -> ``[z, row, col]`` planes with anterior at the top (rows run posterior)."""
    return np.ascontiguousarray(np.transpose(volume, (2, 1, 0))[:, ::-1, :], dtype=np.float32)


@functools.lru_cache(maxsize=1)
def ventricle_distance() -> np.ndarray:
    """3-D distance (mm) to the ventricles, ``[x, y, z]`` like ``load_volumes()``; 0 inside them.

    Ventricles here: CSF-dominated voxels (1 - GM - WM > 0.5) more than 10 mm deep inside the brain
    (sulcal CSF lies near the surface), in components of at least 300 voxels. Coarse on purpose.
    """
    from scipy import ndimage as ndi

    v = load_volumes()
    brain = v.t1 > 0.05
    csf = np.clip(1.0 - v.gm - v.wm, 0.0, 1.0) * brain
    deep_csf = (csf > 0.5) & (ndi.distance_transform_edt(brain) > 10.0)
    labels, n = ndi.label(deep_csf)
    sizes = ndi.sum_labels(deep_csf, labels, np.arange(1, n + 1)) if n else np.zeros(0)
    ventricles = np.isin(labels, 1 + np.nonzero(sizes >= 300)[0])
    return ndi.distance_transform_edt(~ventricles).astype(np.float32)
