"""Where Alzheimer's evidence shows on an axial slice: soft region maps from the MNI152 template.

Structural MRI shows Alzheimer's disease as medial temporal atrophy (hippocampus, entorhinal cortex,
temporal horns), ventricular enlargement and cortical thinning (Frisoni et al., Nat Rev Neurol 6:67,
2010; the MTA scale of Scheltens et al., J Neurol Neurosurg Psychiatry 55:967, 1992). Each region is
defined here coarsely from the template's tissue-probability maps and a distance, in 3-D, then cut into
axial planes and warped onto each registered slice (audit.anatomy.registration). The definitions are
deliberately independent of the synthetic cohort's atrophy fields (model/synth_template.py); see
docs/anatomical_prior.md for the rules and how much design they still share.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage as ndi

from audit.anatomy.registration import PRIOR_Z_MM, SliceRegistration
from audit.anatomy.template import load_volumes, template_version, to_planes, ventricle_distance
from model.errors import ParameterError

REGIONS = ("periventricular", "cortical_ribbon", "medial_temporal")
# The regions the evidence prior (ad_prior) is made of: where AD atrophy is visible on an axial slice at a
# glance, ventricular enlargement and medial temporal atrophy (Frisoni et al. 2010; the MTA scale). The
# cortical ribbon is mapped and reported, but left out: cortical atrophy is not specific to AD (it comes
# with age and other dementias), and at the brain's surface a content-free edge map already scores above
# a brain-uniform map (docs/anatomical_prior.md), so the ribbon rewards edge detectors, not evidence.
PRIOR_REGIONS = ("periventricular", "medial_temporal")
# Periventricular band: ventricles and tissue within PV_FULL_MM of them weigh 1, falling to 0 at PV_MAX_MM.
PV_FULL_MM, PV_MAX_MM = 6.0, 16.0
# Cortical ribbon: grey matter within RIBBON_MM of sulcal CSF or the brain surface, at most RIBBON_DEPTH_MM deep.
RIBBON_MM, RIBBON_DEPTH_MM = 4.0, 14.0
# Medial temporal lobe: an ellipsoid per hemisphere around hippocampus, entorhinal cortex and temporal horn.
MTL_CENTRE_MM = (28.0, -24.0, -12.0)    # |x|, y, z
MTL_SEMI_AXES_MM = (10.0, 22.0, 14.0)   # x, y, z


@dataclass(frozen=True)
class PriorPlanes:
    """Per-region soft maps on the 1 mm template planes over PRIOR_Z_MM, indexed [plane, row, col]."""

    z_mm: np.ndarray
    brain: np.ndarray                 # (Z, H, W) float32 soft brain
    regions: dict                     # name -> (Z, H, W) float32 in [0, 1]

    def plane(self, z_mm: float) -> int:
        index = round(z_mm) - int(self.z_mm[0])
        if not 0 <= index < len(self.z_mm):
            raise ParameterError("registrations", f"level z={z_mm} mm is outside the prior's range {PRIOR_Z_MM} mm")
        return index


@functools.lru_cache(maxsize=1)
def load_prior() -> PriorPlanes:
    """The region maps, derived from the template once per machine and software (a few seconds) and kept
    in the user cache (``audit.cache.cached_arrays``)."""
    from audit.cache import cached_arrays

    return _prior_from_arrays(cached_arrays("mni152-prior", _prior_arrays, template_version()))


def _prior_from_arrays(flat: dict[str, np.ndarray]) -> PriorPlanes:
    return PriorPlanes(z_mm=flat["z_mm"], brain=flat["brain"], regions={name: flat[name] for name in REGIONS})


def _prior_arrays() -> dict[str, np.ndarray]:
    prior = _build_prior()
    return {"z_mm": prior.z_mm, "brain": prior.brain, **prior.regions}


def _build_prior() -> PriorPlanes:
    v = load_volumes()
    brain = v.t1 > 0.05
    csf = np.clip(1.0 - v.gm - v.wm, 0.0, 1.0) * brain
    depth = ndi.distance_transform_edt(brain)            # mm to the brain's outer surface
    vent_dist = ventricle_distance()                     # coarse deep-CSF ventricles (template.py)
    periventricular = np.clip((PV_MAX_MM - vent_dist) / (PV_MAX_MM - PV_FULL_MM), 0.0, 1.0) * brain
    # Cortical ribbon: grey matter adjoining sulcal CSF (CSF away from the ventricles) or the outside.
    sulcal = ((csf > 0.3) & (vent_dist > 4.0)) | ~brain
    sulcal_dist = ndi.distance_transform_edt(~sulcal)
    grey = np.clip((v.gm - 0.2) / 0.3, 0.0, 1.0)
    ribbon = (grey * np.clip((RIBBON_MM + 1.0 - sulcal_dist) / 2.0, 0.0, 1.0)
              * np.clip((RIBBON_DEPTH_MM - depth) / 4.0 + 1.0, 0.0, 1.0) * brain)
    # Medial temporal lobe: ellipsoid per hemisphere (MNI mm), soft edge from 0.7 to 1.3 of the radius.
    x, y, z = (np.arange(s) + o for s, o in zip(v.t1.shape, v.origin))
    cx, cy, cz = MTL_CENTRE_MM
    ax, ay, az = MTL_SEMI_AXES_MM
    r = np.sqrt(((np.abs(x)[:, None, None] - cx) / ax) ** 2 + ((y[None, :, None] - cy) / ay) ** 2
                + ((z[None, None, :] - cz) / az) ** 2)
    medial = np.clip((1.3 - r) / 0.6, 0.0, 1.0) * brain
    keep = (v.z_mm >= PRIOR_Z_MM[0]) & (v.z_mm <= PRIOR_Z_MM[1])
    regions = {name: to_planes(field[:, :, keep].astype(np.float32))
               for name, field in zip(REGIONS, (periventricular, ribbon, medial))}
    soft_brain = to_planes(ndi.gaussian_filter(brain.astype(np.float32), 0.6)[:, :, keep])
    return PriorPlanes(z_mm=v.z_mm[keep].astype(int), brain=soft_brain, regions=regions)


def prior_regions(registrations: list[SliceRegistration], shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Per region, (N, H, W) float32 maps in [0, 1] on the images; zeros for refused slices."""
    prior = load_prior()
    return {name: _warp_all(registrations, shape, prior, prior.regions[name]) for name in REGIONS}


def ad_prior(registrations: list[SliceRegistration], shape: tuple[int, int],
             regions: tuple[str, ...] = PRIOR_REGIONS) -> np.ndarray:
    """(N, H, W) float32 in [0, 1]: the union (pixel maximum) of ``regions`` (default ``PRIOR_REGIONS``);
    zeros for refused slices."""
    unknown = set(regions) - set(REGIONS)
    if not regions or unknown:
        raise ParameterError("regions", f"choose from {', '.join(REGIONS)}, got {', '.join(regions) or 'none'}")
    prior = load_prior()
    return np.max(np.stack([_warp_all(registrations, shape, prior, prior.regions[name]) for name in regions]), axis=0)


def template_brain(registrations: list[SliceRegistration], shape: tuple[int, int]) -> np.ndarray:
    """(N, H, W) bool: the template brain warped onto each image (all False for refused slices)."""
    prior = load_prior()
    return _warp_all(registrations, shape, prior, prior.brain) > 0.5


def _warp_all(registrations, shape, prior: PriorPlanes, planes: np.ndarray) -> np.ndarray:
    h, w = _check_shape(shape)
    out = np.zeros((len(registrations), h, w), np.float32)
    for i, reg in enumerate(registrations):
        if not isinstance(reg, SliceRegistration):
            raise ParameterError("registrations", f"item {i} is a {type(reg).__name__}, not a SliceRegistration")
        if not reg.ok:
            continue
        plane = planes[prior.plane(reg.z_mm)]
        out[i] = np.clip(cv2.warpAffine(plane, np.asarray(reg.matrix, np.float64), (w, h),
                                        flags=cv2.INTER_LINEAR, borderValue=0.0), 0.0, 1.0)
    return out


def _check_shape(shape) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ParameterError("shape", f"expected (H, W), got {shape!r}") from None
    if h < 1 or w < 1:
        raise ParameterError("shape", f"expected positive (H, W), got {shape!r}")
    return h, w
