"""Register any axial MRI slice to the MNI152 template: which template level it shows, and where.

Real Kaggle/OASIS slices come without lesion or brain masks, so the only way to say where Alzheimer's
evidence should show on them is to bring a template's anatomy onto each slice. This module finds, per
slice, the template's matching axial level (MNI z) and a 2-D affine transform, intensity-based:

1. A foreground estimate (Otsu on the smoothed image; an enclosing bright ring, i.e. a scalp, is peeled
   off, so skull-on slices give a brain estimate too) gives centroid, principal axes and size.
2. Coarse: every template level (1 mm) is compared with the image in a moment-normalised frame (centre,
   axes and size divided out), all levels and pose hypotheses at once as one matrix product.
3. Fine: OpenCV's ECC (enhanced correlation coefficient; Evangelidis & Psarakis 2008) refines an affine
   transform for the best few levels, with the template's brain as the template mask (so a skull in the
   image does not pull the fit), and the level is re-chosen within +-4 mm under the refined transform.

Slices are REFUSED (``ok=False`` with a one-line reason) rather than given a wrong anatomy: blank or
near-constant images, images without one compact brain-sized foreground (noise, checkerboards), a low
correlation with the best template plane (photos, textures, other organs), an implausible transform, or a
best level outside the range where the prior (audit.anatomy.prior) is defined.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage as ndi

from audit.anatomy.template import load_volumes, template_version, to_planes, ventricle_distance
from model.errors import ParameterError
from model.progress import progress_bar

SEARCH_Z_MM = (-40, 70)   # template levels searched (MNI z, mm): the brain above the cerebellum's bulk
PRIOR_Z_MM = (-30, 50)    # levels where the prior is defined; a best match outside is refused
MIN_QUALITY = 0.50        # lowest accepted correlation inside the template brain (see docs/anatomical_prior.md)
MIN_OVERLAP = 0.75        # lowest accepted Dice of the foreground estimate with the warped template brain
VENT_EXCLUDE_MM = 10.0    # template tissue this close to the ventricles does not count in matching
_WORK = 112               # longer side (px) of the working copy of each image
_CANON = 36               # side of the moment-normalised grid used for the coarse level search
_CANON_EXTENT = 2.5       # that grid spans +-this many standard deviations along each principal axis
_TOP_LEVELS = 3           # levels refined by ECC
_FINE_MM = 4              # level re-chosen within +-this many mm after ECC
_ECC_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 60, 1e-4)


@dataclass(frozen=True)
class SliceRegistration:
    """Where one image sits in the template, or why it was refused.

    ``matrix`` maps template-plane pixels (col, row; 1 mm, plane of ``TemplateAtlas``) to image pixels
    (x, y) of the image as given, so ``cv2.warpAffine(plane, matrix, (W, H))`` draws a template map on it.
    """

    z_mm: float | None          # MNI z of the matched template plane
    matrix: np.ndarray | None   # 2x3 affine: template-plane (col, row) -> image (x, y)
    quality: float              # correlation with the template plane inside its brain, in [0, 1]
    ok: bool
    reason: str | None          # one line, why refused; None when ok
    skull: bool = False         # a scalp ring was found and peeled off the foreground


@dataclass(frozen=True)
class TemplateAtlas:
    """Template planes over SEARCH_Z_MM at 1 mm and on the 2 mm working grid, with per-level moments."""

    z_mm: np.ndarray            # (L,) int
    t1: np.ndarray              # (L, H, W) float32, 1 mm planes, 0 outside the brain
    brain: np.ndarray           # (L, H, W) bool
    t1_2: np.ndarray            # (L, H/2, W/2) float32, 2 mm grid (smoothed)
    brain_2: np.ndarray         # (L, H/2, W/2) uint8 0/1
    match_2: np.ndarray         # (L, H/2, W/2) uint8 0/1: brain farther than VENT_EXCLUDE_MM from the ventricles
    eval_2: np.ndarray          # (L, H/2, W/2) bool: eroded brain, where quality is judged
    centre_2: np.ndarray        # (L, 2) brain centroid (x, y) on the 2 mm grid
    axes_2: np.ndarray          # (L, 2, 2) principal-axis matrix (columns: x-ish, y-ish axis scaled by SD)
    canon: dict                 # frame name -> (values (L, P), masks (L, P)) in the moment-normalised frame

    def level(self, z_mm: float) -> int:
        return round(z_mm) - int(self.z_mm[0])


_ATLAS_ARRAYS = ("z_mm", "t1", "brain", "t1_2", "brain_2", "match_2", "eval_2", "centre_2", "axes_2")
_FRAMES = ("axes", "upright")


@functools.lru_cache(maxsize=1)
def load_atlas() -> TemplateAtlas:
    """The planes and tables the registration compares images with: built once per machine and software
    (a few seconds of 3-D distance transforms) and kept in the user cache (``audit.cache.cached_arrays``)."""
    from audit.cache import cached_arrays

    return _atlas_from_arrays(cached_arrays("mni152-atlas", lambda: _atlas_arrays(_build_atlas()), template_version()))


def _atlas_from_arrays(flat: dict[str, np.ndarray]) -> TemplateAtlas:
    canon = {frame: (flat[f"canon_{frame}_values"], flat[f"canon_{frame}_masks"]) for frame in _FRAMES}
    return TemplateAtlas(**{name: flat[name] for name in _ATLAS_ARRAYS}, canon=canon)


def _atlas_arrays(atlas: TemplateAtlas) -> dict[str, np.ndarray]:
    flat = {name: getattr(atlas, name) for name in _ATLAS_ARRAYS}
    for frame in _FRAMES:
        flat[f"canon_{frame}_values"], flat[f"canon_{frame}_masks"] = atlas.canon[frame]
    return flat


def _build_atlas() -> TemplateAtlas:
    volumes = load_volumes()
    z = volumes.z_mm
    keep = (z >= SEARCH_Z_MM[0]) & (z <= SEARCH_Z_MM[1])
    t1 = to_planes(volumes.t1[:, :, keep])
    brain = t1 > 0.05
    # Matching ignores the tissue next to the ventricles: that is where the atrophy we want to locate
    # changes the image most (enlarged ventricles), and it must not drive the fit or the quality.
    far = to_planes(ventricle_distance()[:, :, keep]) > VENT_EXCLUDE_MM
    h, w = t1.shape[1:]
    t1_2 = np.stack([cv2.GaussianBlur(cv2.resize(p, (w // 2, h // 2), interpolation=cv2.INTER_AREA), (0, 0), 0.7)
                     for p in t1])
    brain_2 = np.stack([cv2.resize(b.astype(np.float32), (w // 2, h // 2), interpolation=cv2.INTER_AREA) > 0.5
                        for b in brain]).astype(np.uint8)
    match_2 = np.stack([cv2.resize((b & f).astype(np.float32), (w // 2, h // 2), interpolation=cv2.INTER_AREA) > 0.5
                        for b, f in zip(brain, far)]).astype(np.uint8)
    # Quality is judged 4 mm inside the brain: the outline alone (any bright ellipse) must not pass.
    eval_2 = np.stack([ndi.binary_erosion(b, iterations=2) for b in match_2])
    centres, axes = zip(*(_moments(b) for b in brain_2))
    centre_2, axes_2 = np.array(centres), np.array(axes)
    canon = {}
    for frame in _FRAMES:
        values, masks = [], []
        for k in range(len(t1_2)):
            m = axes_2[k] if frame == "axes" else _upright(axes_2[k])
            values.append(_canonical(t1_2[k], centre_2[k], m))
            masks.append(_canonical(match_2[k].astype(np.float32), centre_2[k], m) > 0.5)
        values = np.array(values)
        masks = np.array(masks, dtype=np.float32).reshape(len(values), -1)
        canon[frame] = (_standardise(values, masks), masks)
    return TemplateAtlas(z_mm=z[keep].astype(int), t1=t1, brain=brain, t1_2=t1_2, brain_2=brain_2, match_2=match_2,
                         eval_2=eval_2,
                         centre_2=centre_2, axes_2=axes_2, canon=canon)


def register_slices(images: np.ndarray, *, brain_masks: np.ndarray | None = None,
                    progress: bool = False) -> list[SliceRegistration]:
    """Register each axial slice to the template; refused slices say why instead of guessing.

    ``images``: (N, H, W) or (N, H, W, 1) raw intensities (uint8, or float in [0, 255]); any size.
    ``brain_masks``: optional (N, H, W[, 1]) masks (nonzero = brain). When given they replace the
    foreground estimate (better moments) and the image is masked to them, as in skull-stripped data.
    """
    stack = _check_images(images, "images")
    masks = None
    if brain_masks is not None:
        masks = _check_images(brain_masks, "brain_masks")
        if masks.shape != stack.shape:
            raise ParameterError("brain_masks", f"shape {masks.shape[:3]} does not match images {stack.shape[:3]}")
    atlas = load_atlas()
    out = []
    with progress_bar(progress, len(stack), "registering slices") as advance:
        for i, image in enumerate(stack):
            out.append(_register_one(atlas, image, None if masks is None else masks[i] > 0))
            advance()
    return out


def naive_register_slices(images: np.ndarray) -> list[SliceRegistration]:
    """Baseline for benchmarks only: ECC at EVERY 1 mm level from the upright moment initialisation.

    No coarse batched search, no pose hypotheses; the level with the highest ECC correlation wins.
    """
    stack = _check_images(images, "images")
    atlas = load_atlas()
    results = []
    for image in stack:
        prep = _prepare(image, None)
        if isinstance(prep, SliceRegistration):
            results.append(prep)
            continue
        work, fg, scale, skull = prep
        centre, axes = _moments(fg)
        best = None
        for k in range(len(atlas.z_mm)):
            init = _init_matrix(atlas.centre_2[k], _upright(atlas.axes_2[k]), centre, _upright(axes))
            warp, rho = _ecc(atlas, k, work, init)
            if warp is not None and (best is None or rho > best[2]):
                best = (k, warp, rho)
        results.append(_finish(atlas, best, work, fg, scale, skull) if best else _refuse("registration did not converge"))
    return results


# --- one slice ---------------------------------------------------------------------------------

def _register_one(atlas: TemplateAtlas, image: np.ndarray, mask: np.ndarray | None) -> SliceRegistration:
    prep = _prepare(image, mask)
    if isinstance(prep, SliceRegistration):
        return prep
    work, fg, scale, skull = prep
    centre, axes = _moments(fg)
    # Coarse: every level x pose hypothesis at once (rows of the template tables against a few vectors).
    hypotheses = []
    # Pose hypotheses: principal axes (either way round), upright; each also at 0.85 x the size, for
    # skull-on slices whose foreground estimate kept part of the skull or scalp.
    poses = [("axes", axes), ("axes", -axes), ("upright", _upright(axes))]
    for frame, m in poses + [(f, 0.85 * m) for f, m in poses]:
        vector = _canonical(work, centre, m).ravel()
        values, masks = atlas.canon[frame]
        hypotheses.append((frame, m, _masked_ncc(values, masks, vector)))
    scores = np.stack([h[2] for h in hypotheses])          # (hypotheses, L)
    per_level = scores.max(axis=0)
    candidates = []
    for k in np.argsort(-per_level):
        if all(abs(int(k) - c) >= 6 for c in candidates):
            candidates.append(int(k))
        if len(candidates) == _TOP_LEVELS:
            break
    best = None
    for k in candidates:
        frame, m, _ = hypotheses[int(np.argmax(scores[:, k]))]
        t_axes = atlas.axes_2[k] if frame == "axes" else _upright(atlas.axes_2[k])
        warp, _rho = _ecc(atlas, k, work, _init_matrix(atlas.centre_2[k], t_axes, centre, m))
        if warp is None:
            continue
        k2, warp2, rho2 = _fine_level(atlas, k, warp, work)
        if best is None or rho2 > best[2]:
            best = (k2, warp2, rho2)
    if best is None:
        return _refuse("registration did not converge at any candidate template level", skull=skull)
    return _finish(atlas, best, work, fg, scale, skull)


def _fine_level(atlas: TemplateAtlas, k: int, warp: np.ndarray, work: np.ndarray):
    """Re-choose the level within +-_FINE_MM under the refined transform, then refine there again."""
    lo, hi = max(k - _FINE_MM, 0), min(k + _FINE_MM + 1, len(atlas.z_mm))
    h2, w2 = atlas.t1_2.shape[1:]
    warped = cv2.warpAffine(work, warp, (w2, h2), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP).ravel()
    values = atlas.t1_2[lo:hi].reshape(hi - lo, -1)
    masks = atlas.match_2[lo:hi].reshape(hi - lo, -1).astype(np.float32)
    k2 = lo + int(np.argmax(_masked_ncc(_standardise(values, masks), masks, warped)))
    if k2 == k:
        return k, warp, _quality(atlas, k, warp, work)
    warp2, _rho2 = _ecc(atlas, k2, work, warp)
    if warp2 is None:
        return k, warp, _quality(atlas, k, warp, work)
    return k2, warp2, _quality(atlas, k2, warp2, work)


def _finish(atlas: TemplateAtlas, best, work: np.ndarray, fg: np.ndarray, scale: np.ndarray,
            skull: bool) -> SliceRegistration:
    k, warp, _ = best
    quality = _quality(atlas, k, warp, work)
    z = float(atlas.z_mm[k])
    matrix = _to_image(warp, scale)
    _h2, _w2 = atlas.t1_2.shape[1:]
    warped_brain = cv2.warpAffine(atlas.brain_2[k], warp, fg.shape[::-1], flags=cv2.INTER_NEAREST) > 0
    dice = 2.0 * float((warped_brain & fg).sum()) / max(float(warped_brain.sum() + fg.sum()), 1.0)
    singular = np.linalg.svd(warp[:, :2], compute_uv=False)
    if singular.min() <= 0 or singular.max() / singular.min() > 1.4:
        return _refuse(f"implausible transform (aspect {singular.max() / max(singular.min(), 1e-9):.2f} > 1.4)",
                       z, matrix, quality, skull)
    if quality < MIN_QUALITY:
        return _refuse(f"low registration quality {quality:.2f} < {MIN_QUALITY} (not a matching axial brain slice)",
                       z, matrix, quality, skull)
    if dice < MIN_OVERLAP:
        return _refuse(f"template brain overlaps the image foreground poorly (Dice {dice:.2f} < {MIN_OVERLAP})",
                       z, matrix, quality, skull)
    if not PRIOR_Z_MM[0] <= z <= PRIOR_Z_MM[1]:
        return _refuse(f"best template level z={z:+.0f} mm is outside the prior's range {PRIOR_Z_MM} mm",
                       z, matrix, quality, skull)
    return SliceRegistration(z_mm=z, matrix=matrix, quality=quality, ok=True, reason=None, skull=skull)


def _refuse(reason: str, z=None, matrix=None, quality: float = 0.0, skull: bool = False) -> SliceRegistration:
    return SliceRegistration(z_mm=z, matrix=matrix, quality=float(quality), ok=False, reason=reason, skull=skull)


# --- image preparation and foreground ----------------------------------------------------------

def _check_images(images, name: str) -> np.ndarray:
    array = np.asarray(images)
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise ParameterError(name, f"expected (N,H,W) or (N,H,W,1), got shape {np.shape(images)}")
    if array.shape[1] < 32 or array.shape[2] < 32:
        raise ParameterError(name, f"slices of at least 32x32 pixels are needed, got {array.shape[1]}x{array.shape[2]}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.number):
        raise ParameterError(name, f"expected numeric pixel values, got dtype {array.dtype}")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise ParameterError(name, "contains NaN or infinite values")
    return array


def _prepare(image: np.ndarray, mask: np.ndarray | None):
    """Working copy (longer side _WORK px, scaled to [0, 1]) and a brain-foreground estimate, or a refusal."""
    h, w = image.shape
    lo, hi = np.percentile(image, (1, 99.5))
    if float(image.std()) < 1.0 or hi - lo < 4.0:
        return _refuse("blank or near-constant image")
    factor = _WORK / max(h, w)
    size = (max(round(w * factor), 16), max(round(h * factor), 16))
    work = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    work = np.clip((work - min(lo, float(image.min()))) / max(hi - min(lo, float(image.min())), 1e-6), 0, 1)
    work = cv2.GaussianBlur(work.astype(np.float32), (0, 0), 0.8)
    scale = np.array([w / size[0], h / size[1]])  # orig px per work px (x, y)
    skull = False
    if mask is not None:
        fg = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
        work = work * fg
    else:
        fg, skull = _foreground(work)
    border = np.concatenate([work[:3].ravel(), work[-3:].ravel(), work[:, :3].ravel(), work[:, -3:].ravel()])
    if float(np.median(border)) > 0.2:
        return _refuse("no dark background around the head (image border is bright)")
    area = float(fg.mean())
    if area < 0.04 or area > 0.95:
        return _refuse(f"no brain-sized foreground ({100 * area:.0f} % of the image)", skull=skull)
    filled = ndi.binary_fill_holes(fg)
    hull = cv2.convexHull(np.argwhere(filled)[:, ::-1].astype(np.int32))
    solidity = float(filled.sum()) / max(cv2.contourArea(hull), 1.0)
    if solidity < 0.80:
        return _refuse(f"foreground is not one compact brain shape (solidity {solidity:.2f} < 0.80)", skull=skull)
    return work, fg, scale, skull


def _foreground(work: np.ndarray) -> tuple[np.ndarray, bool]:
    """Largest compact bright component; a ring enclosing another component (a scalp) is peeled off."""
    u8 = np.clip(work * 255, 0, 255).astype(np.uint8)
    threshold, _ = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    fg = u8 > 0.5 * threshold
    fg = ndi.binary_opening(fg, iterations=1)
    skull = False
    for _ in range(2):
        labels, n = ndi.label(fg)
        if n == 0:
            return fg, skull
        sizes = ndi.sum_labels(fg, labels, np.arange(1, n + 1))
        main = int(np.argmax(sizes)) + 1
        filled = ndi.binary_fill_holes(labels == main)
        inside = [i + 1 for i in range(n) if i + 1 != main and sizes[i] > 0.15 * sizes[main - 1]
                  and filled[labels == i + 1].mean() > 0.9]
        if not inside:
            break
        # `main` encloses another big component: it is a scalp/skull ring; the brain lies inside it.
        skull = True
        fg = np.isin(labels, inside) | (filled & ~ndi.binary_dilation(labels == main, iterations=2) & fg)
        fg = ndi.binary_opening(fg, iterations=2)
    labels, n = ndi.label(fg)
    if n == 0:
        return fg, skull
    sizes = ndi.sum_labels(fg, labels, np.arange(1, n + 1))
    main = int(np.argmax(sizes)) + 1
    brain = labels == main
    ys, xs = np.nonzero(brain)
    cy, cx = round(ys.mean()), round(xs.mean())
    for i in range(1, n + 1):  # a thinner ring around the brain (scalp) still marks a skull-on slice
        if i != main and sizes[i - 1] > 0.05 * sizes[main - 1] and ndi.binary_fill_holes(labels == i)[cy, cx]:
            skull = True
    return ndi.binary_fill_holes(ndi.binary_closing(brain, iterations=2)), skull


# --- geometry ----------------------------------------------------------------------------------

def _moments(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroid (x, y) and an axis matrix whose columns are the x-ish and y-ish principal axes times SD."""
    ys, xs = np.nonzero(mask)
    if len(xs) < 10:
        return np.array([mask.shape[1] / 2, mask.shape[0] / 2]), np.eye(2)
    centre = np.array([xs.mean(), ys.mean()])
    cov = np.cov(np.stack([xs, ys])) + 1e-3 * np.eye(2)
    values, vectors = np.linalg.eigh(cov)
    # The y-ish axis is the eigenvector closest to vertical, pointing down (posterior); x-ish is the
    # y-ish axis turned by -90 degrees, so the frame is a proper rotation (no mirroring).
    j = int(np.argmax(np.abs(vectors[1])))
    vy = vectors[:, j] * np.sign(vectors[1, j] or 1.0)
    vx = np.array([vy[1], -vy[0]])
    sd = np.sqrt(np.maximum(values, 1e-6))
    return centre, np.stack([vx * sd[1 - j], vy * sd[j]], axis=1)


def _upright(axes: np.ndarray) -> np.ndarray:
    """Isotropic, unrotated frame of the same size (for slices whose principal axes are ambiguous)."""
    return np.eye(2) * np.sqrt(abs(np.linalg.det(axes)))


def _canonical(image: np.ndarray, centre: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Sample ``image`` at centre + axes @ u on a _CANON x _CANON grid of u in +-_CANON_EXTENT."""
    u = np.linspace(-_CANON_EXTENT, _CANON_EXTENT, _CANON, dtype=np.float32)
    uu, vv = np.meshgrid(u, u)
    mx = (centre[0] + axes[0, 0] * uu + axes[0, 1] * vv).astype(np.float32)
    my = (centre[1] + axes[1, 0] * uu + axes[1, 1] * vv).astype(np.float32)
    return cv2.remap(image.astype(np.float32), mx, my, cv2.INTER_LINEAR, borderValue=0.0)


def _init_matrix(t_centre, t_axes, i_centre, i_axes) -> np.ndarray:
    """Affine template-grid -> work px that maps the template's moment frame onto the image's."""
    a = i_axes @ np.linalg.inv(t_axes)
    return np.hstack([a, (i_centre - a @ t_centre)[:, None]]).astype(np.float32)


def _to_image(warp: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Compose 1 mm plane px -> 2 mm grid px -> work px -> original image px (pixel centres kept)."""
    to_grid = np.array([[0.5, 0, -0.25], [0, 0.5, -0.25], [0, 0, 1]])
    to_orig = np.array([[scale[0], 0, 0.5 * scale[0] - 0.5], [0, scale[1], 0.5 * scale[1] - 0.5], [0, 0, 1]])
    full = to_orig @ np.vstack([warp, [0, 0, 1]]) @ to_grid
    return full[:2].astype(np.float64)


# --- similarity --------------------------------------------------------------------------------

def _standardise(values: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per row: zero mean, unit norm inside the mask, zero outside (so a dot product is the NCC)."""
    values = values.reshape(len(values), -1).astype(np.float64)
    masks = masks.reshape(len(masks), -1)
    n = np.maximum(masks.sum(1, keepdims=True), 1.0)
    centred = (values - (values * masks).sum(1, keepdims=True) / n) * masks
    return (centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-9)).astype(np.float32)


def _masked_ncc(standard: np.ndarray, masks: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """NCC of ``vector`` with every standardised row, each inside its own mask (one matrix product)."""
    x = vector.astype(np.float64)
    n = np.maximum(masks.sum(1), 1.0)
    sx = masks @ x
    sxx = masks @ (x * x)
    var = np.maximum(sxx - sx * sx / n, 1e-12)
    # Rows are zero-mean inside the mask, so the mean of x drops out of the dot product.
    return (standard @ x) / np.sqrt(var)


def _ecc(atlas: TemplateAtlas, k: int, work: np.ndarray, init: np.ndarray):
    """Affine ECC of the work image onto template level k, template brain as mask; (warp, rho) or (None, 0)."""
    template = atlas.t1_2[k]
    # The brain's outline matters, so the mask reaches 1 px past the brain; the ventricles' surroundings
    # are left out (VENT_EXCLUDE_MM).
    tmask = cv2.dilate(atlas.brain_2[k], np.ones((3, 3), np.uint8)) & ~(atlas.brain_2[k] & ~atlas.match_2[k])
    imask = np.ones(work.shape, np.uint8)
    try:
        rho, warp = cv2.findTransformECCWithMask(template, work, tmask, imask, init.astype(np.float32).copy(),
                                                 cv2.MOTION_AFFINE, _ECC_CRITERIA, 3)
    except cv2.error:
        return None, 0.0
    return warp, float(rho)


def _quality(atlas: TemplateAtlas, k: int, warp: np.ndarray, work: np.ndarray) -> float:
    """Correlation of the warped image with the template plane inside the (eroded) template brain."""
    h2, w2 = atlas.t1_2.shape[1:]
    warped = cv2.warpAffine(work, warp, (w2, h2), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    m = atlas.eval_2[k]
    a, b = warped[m].astype(np.float64), atlas.t1_2[k][m].astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float(np.clip((a * b).sum() / denom, 0.0, 1.0)) if denom > 1e-12 else 0.0
