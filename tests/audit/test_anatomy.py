"""audit.anatomy: registration to MNI152 on synthetic slices with known truth, refusals, and the prior."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy import ndimage as ndi

from model.errors import AlzAuditError


@pytest.fixture(scope="module")
def slices():
    """8 synthetic slices (4 subjects, one per stage, 2 levels each) with level, brain and atrophy truth."""
    from model.synth import plan_cohort
    from model.synth_render import render_slice
    from model.synth_template import load_template

    template = load_template()
    plan = plan_cohort(subjects=4, slices_per_subject=2, class_balance="balanced", seed=5, shortcut_marker=0.0,
                       severity_scale=1.0)
    images, brains, masks, z, stages = [], [], [], [], []
    for subject in plan.subjects:
        for k in range(2):
            out = render_slice(template, subject, k)
            images.append(out.image), brains.append(out.brain > 0), masks.append(out.mask > 0)
            z.append(subject.z_mm[k]), stages.append(subject.stage)
    return np.array(images), np.array(brains), np.array(masks), np.array(z, float), stages


def _dice(a, b):
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def _skull(image, brain, rng):
    d = ndi.distance_transform_edt(~brain)
    out = image.astype(np.float32).copy()
    out[(d > 0) & (d <= 3)] = 15
    out[(d > 3) & (d <= 8)] = 25
    out[(d > 8) & (d <= 13)] = 190
    out += rng.normal(0, 4, out.shape) * ((d > 0) & (d <= 13))
    return np.clip(out, 0, 255).astype(np.uint8)


def test_registration_finds_level_and_brain(slices):
    from audit.anatomy import register_slices, template_brain

    images, brains, _, z, _ = slices
    regs = register_slices(images[..., None])  # (N, H, W, 1) accepted
    assert all(r.ok and r.reason is None for r in regs), [r.reason for r in regs]
    errors = np.array([abs(r.z_mm - t) for r, t in zip(regs, z)])
    assert np.median(errors) <= 1.0 and errors.max() <= 3.0, errors
    est = template_brain(regs, images.shape[1:])
    assert est.dtype == bool and est.shape == brains.shape
    dices = [_dice(e, b) for e, b in zip(est, brains)]
    assert min(dices) > 0.93, dices
    assert all(0.5 <= r.quality <= 1.0 and r.matrix.shape == (2, 3) for r in regs)
    assert not any(r.skull for r in regs)  # skull-stripped slices are not flagged skull-on


def test_registration_survives_pose_resize_and_skull(slices):
    from audit.anatomy import register_slices, template_brain

    images, brains, _, z, _ = slices
    rng = np.random.default_rng(0)
    h, w = images.shape[1:]
    posed, posed_brains = [], []
    for image, brain in zip(images, brains):
        m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.choice([-15.0, 15.0]), rng.choice([0.9, 1.1]))
        m[:, 2] += rng.uniform(-0.1, 0.1, 2) * (w, h)
        skulled = _skull(image, brain, rng)
        posed.append(cv2.warpAffine(skulled, m, (w, h)))
        posed_brains.append(cv2.warpAffine(brain.astype(np.uint8), m, (w, h), flags=cv2.INTER_NEAREST) > 0)
    regs = register_slices(np.array(posed))
    assert all(r.ok for r in regs), [r.reason for r in regs]
    # The scalp ring is found where it is closed (zoom/shift may cut it at the image edge).
    assert sum(r.skull for r in regs) >= len(regs) // 2
    assert np.median([abs(r.z_mm - t) for r, t in zip(regs, z)]) <= 2.0
    est = template_brain(regs, (h, w))
    assert min(_dice(e, b) for e, b in zip(est, posed_brains)) > 0.9
    # The Otsu foreground of a skull-on slice holds the skull; the template brain does not.
    _, fg = cv2.threshold(np.array(posed[0]), 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    outside = lambda m: (m & ~posed_brains[0]).sum() / m.sum()
    assert outside(ndi.binary_fill_holes(fg > 0)) > 3 * outside(est[0])
    # 128 x 128 model inputs (resized, aspect changed): same level.
    small = np.array([cv2.resize(i, (128, 128), interpolation=cv2.INTER_AREA) for i in images[:4]])
    regs = register_slices(small.astype(np.float32))
    assert all(r.ok for r in regs) and np.median([abs(r.z_mm - t) for r, t in zip(regs, z[:4])]) <= 2.0


def test_refuses_what_is_not_a_brain_slice():
    from audit.anatomy import ad_prior, register_slices, template_brain

    rng = np.random.default_rng(1)
    h, w = 208, 176
    yy, xx = np.mgrid[:h, :w]
    ellipse = (((yy - h / 2) / (0.4 * h)) ** 2 + ((xx - w / 2) / (0.4 * w)) ** 2) < 1
    blobs = ndi.gaussian_filter(rng.normal(0, 1, (h, w)), 3)
    cases = [np.zeros((h, w)), np.full((h, w), 77.0), rng.uniform(0, 255, (h, w)),
             ((yy // 16 + xx // 16) % 2) * 200.0 + 20.0,
             np.clip(ellipse * 150.0 + rng.normal(0, 5, (h, w)), 0, 255),
             (blobs - blobs.min()) / np.ptp(blobs) * 255 * ellipse,
             ((yy // 12 + xx // 12) % 2) * 200.0 * ellipse]
    regs = register_slices(np.array(cases, dtype=np.float32))
    assert [r.ok for r in regs] == [False] * len(cases)
    assert all(r.reason and "\n" not in r.reason for r in regs)
    assert "blank" in regs[0].reason and "blank" in regs[1].reason
    assert "quality" in regs[4].reason  # a brain-shaped outline alone is not enough
    assert not ad_prior(regs, (h, w)).any() and not template_brain(regs, (h, w)).any()


def test_refuses_levels_outside_the_prior():
    from audit.anatomy import register_slices
    from audit.anatomy.registration import PRIOR_Z_MM, load_atlas

    atlas = load_atlas()
    k = atlas.level(PRIOR_Z_MM[1] + 14)  # high convexity, above the prior's range
    plane = atlas.t1[k]
    image = np.zeros((208, 176), np.float32)
    resized = cv2.resize(plane, (150, 180))
    image[14:194, 13:163] = resized * 220
    reg = register_slices(image[None])[0]
    assert not reg.ok and "outside the prior" in reg.reason, reg
    k = atlas.level(10)  # the same rendering at a ventricle level is accepted
    image[14:194, 13:163] = cv2.resize(atlas.t1[k], (150, 180)) * 220
    reg = register_slices(image[None])[0]
    assert reg.ok and abs(reg.z_mm - 10) <= 1


def test_prior_is_enriched_for_the_planted_atrophy(slices):
    from audit.anatomy import ad_prior, prior_regions, register_slices

    images, brains, masks, _, stages = slices
    regs = register_slices(images)
    prior = ad_prior(regs, images.shape[1:])
    regions = prior_regions(regs, images.shape[1:])
    assert prior.dtype == np.float32 and prior.shape == images.shape and 0 <= prior.min() and prior.max() <= 1
    assert set(regions) == {"periventricular", "cortical_ribbon", "medial_temporal"}
    from audit.anatomy import PRIOR_REGIONS

    assert PRIOR_REGIONS == ("periventricular", "medial_temporal")  # the cortical ribbon is reported, not gated
    assert np.allclose(prior, np.max(np.stack([regions[r] for r in PRIOR_REGIONS]), axis=0))
    strong = [i for i, s in enumerate(stages) if s in ("MildDemented", "ModerateDemented")]
    mass = np.mean([(regions["periventricular"][i] * masks[i]).sum() / masks[i].sum() for i in strong])
    area = np.mean([(regions["periventricular"][i] * brains[i]).sum() / brains[i].sum() for i in strong])
    assert mass > 1.2 * area, (mass, area)  # more of the atrophy inside than a same-sized random region
    # The prior lies inside the brain, up to the rim where the cortical ribbon meets a 1-2 px misregistration.
    assert (prior * ~brains).sum() < 0.10 * prior.sum()


def test_medial_temporal_region_only_at_low_levels():
    from audit.anatomy.prior import load_prior

    prior = load_prior()
    mtl = prior.regions["medial_temporal"]
    assert mtl[prior.plane(-15)].sum() > 500 and mtl[prior.plane(25)].sum() == 0


def test_bad_arguments_name_the_parameter():
    from audit.anatomy import ad_prior, register_slices

    with pytest.raises(AlzAuditError, match=r"^images: expected \(N,H,W\)"):
        register_slices(np.zeros((64, 64)))
    with pytest.raises(AlzAuditError, match="^images: contains NaN"):
        register_slices(np.full((1, 64, 64), np.nan))
    with pytest.raises(AlzAuditError, match="^brain_masks: shape"):
        register_slices(np.zeros((1, 64, 64)), brain_masks=np.zeros((2, 64, 64)))
    with pytest.raises(AlzAuditError, match="^shape: expected"):
        ad_prior([], (64,))


def test_the_gate_refuses_slices_too_small_to_register_instead_of_erroring():
    """A model with a 28-px input: every slice is refused with the reason, so the checks are not applicable."""
    from types import SimpleNamespace

    from audit.stages.anatomy import registrations

    run = SimpleNamespace(images=np.zeros((3, 28, 28), np.uint8))
    regs = registrations(run)
    assert [r.ok for r in regs] == [False] * 3 and "at least 32x32" in regs[0].reason


def test_slices_where_the_prior_does_not_lie_are_not_asked_to_point_at_it():
    """A registered slice whose prior is (nearly) empty, e.g. above the ventricles, is left out; with too few
    slices left the check is not applicable and says why."""
    from types import SimpleNamespace

    from audit.anatomy import SliceRegistration
    from audit.config import AuditConfig
    from audit.stages.quality import prior_localization

    n, size = 12, 32
    ok = SliceRegistration(z_mm=10.0, matrix=np.eye(2, 3), quality=0.8, ok=True, reason=None)
    prior = np.zeros((n, size, size), np.float32)
    prior[:6, 8:24, 8:24] = 1.0                       # six slices with a prior, six (the vertex) without
    run = SimpleNamespace(
        gradcam_indices=np.arange(n), registrations=[ok] * n, prior_maps=prior,
        control_brain=np.ones((n, size, size), bool), disease_mask=np.ones(n, bool),
        predicted=np.ones(n, int), labels=np.ones(n, int), subjects=[f"S{i % 4}" for i in range(n)],
        registration_summary={"refused": {}}, config=AuditConfig())
    result = prior_localization(run)
    assert result["applicable"] is False and result["selection"]["n_registered_without_prior"] == 6
    assert "where the prior lies" in result["reason"]
