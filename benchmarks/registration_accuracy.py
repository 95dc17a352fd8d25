"""How well audit.anatomy registers slices and how well its AD prior covers the planted atrophy.

A plain script (``PYTHONPATH=. .venv/bin/python benchmarks/registration_accuracy.py [--subjects 12]
[--slices 8] [--seed 0] [--out out/registration_accuracy.json]``). It builds a small synthetic cohort
(model.synth), where the truth is known (MNI level ``slice_z_mm``, brain and atrophy masks), and measures:

- level error |z_est - slice_z_mm| (mm) and brain Dice (template brain warped onto the image vs the
  cohort's brain mask), per condition: as rendered, +-15 deg rotation, +-10 % shift, 0.9-1.1 zoom, all
  three, skull-on (a scalp/skull shell drawn around the brain: nilearn ships no full-head template),
  skull-on with the pose changes, and 128 x 128 model inputs; median, 95th percentile, worst, refusals;
- refusals of images that are not brain slices (blank, noise, checkerboard, textures, a plain ellipse);
- milliseconds per 128 x 128 slice, and the ratio against a naive baseline measured in the same run
  (affine ECC at every 1 mm template level; registration.naive_register_slices);
- the prior: share of the true atrophy mask's mass inside the prior (Mild/Moderate slices) against the
  share of brain area the prior covers, per region and for the union;
- skull-on: share of the Otsu foreground that is not brain, against the template-brain estimate's error.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage as ndi

STRONG = ("MildDemented", "ModerateDemented")


def load_cohort(subjects: int, slices: int, seed: int):
    from model.fileio import read_grayscale
    from model.synth import synthesize_cohort

    with tempfile.TemporaryDirectory(prefix="alzaudit-bench-reg-") as tmp:
        manifest = synthesize_cohort(Path(tmp) / "cohort", subjects=subjects, slices_per_subject=slices, seed=seed,
                                     progress=False, workers=1)
        rows = [(read_grayscale(s.path), read_grayscale(s.mask_path) > 0,
                 read_grayscale(s.extra["brain_mask_path"]) > 0, float(s.extra["slice_z_mm"]), s.label)
                for s in manifest.samples]
    images, masks, brains, z, labels = zip(*rows)
    return np.array(images), np.array(masks), np.array(brains), np.array(z), list(labels)


def add_skull(image: np.ndarray, brain: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A head shell around the brain: dark CSF gap, dark bone, bright scalp fat (widths and levels random)."""
    d = ndi.distance_transform_edt(~brain)
    gap, bone = rng.uniform(1.5, 4.0), rng.uniform(3.0, 7.0)
    scalp = rng.uniform(3.0, 7.0)
    out = image.astype(np.float32).copy()
    out[(d > 0) & (d <= gap)] = rng.uniform(5, 25)
    out[(d > gap) & (d <= gap + bone)] = rng.uniform(5, 40)
    shell = (d > gap + bone) & (d <= gap + bone + scalp)
    out[shell] = rng.uniform(140, 230)
    out += rng.normal(0, rng.uniform(3, 8), out.shape) * ((d > 0) & (d <= gap + bone + scalp))
    return np.clip(out, 0, 255).astype(np.uint8)


def pose(images, masks, brains, rng, *, rotation=0.0, shift=0.0, zoom=(1.0, 1.0)):
    """The same random similarity transform applied to each image and its masks (about the centre)."""
    out = ([], [], [])
    h, w = images.shape[1:]
    for image, mask, brain in zip(images, masks, brains):
        m = cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), rng.uniform(-rotation, rotation),
                                    rng.uniform(*zoom))
        m[:, 2] += rng.uniform(-shift, shift, 2) * np.array([w, h])
        out[0].append(cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR))
        out[1].append(cv2.warpAffine(mask.astype(np.uint8), m, (w, h), flags=cv2.INTER_NEAREST) > 0)
        out[2].append(cv2.warpAffine(brain.astype(np.uint8), m, (w, h), flags=cv2.INTER_NEAREST) > 0)
    return tuple(np.array(a) for a in out)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def summary(values) -> dict:
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return {"median": None, "p95": None, "worst": None, "n": 0}
    return {"median": float(np.median(values)), "p95": float(np.percentile(values, 95)),
            "worst": float(values.max()), "n": len(values)}


def evaluate(name, images, masks, brains, z, labels):
    from audit.anatomy import register_slices, template_brain

    start = time.perf_counter()
    regs = register_slices(images)
    ms = 1000.0 * (time.perf_counter() - start) / len(images)
    ok = np.array([r.ok for r in regs])
    shape = images.shape[1:]
    est = template_brain(regs, shape)
    level = [abs(r.z_mm - t) for r, t in zip(regs, z) if r.ok]
    dices = [dice(e, b) for e, b, o in zip(est, brains, ok) if o]
    result = {"condition": name, "slices": len(images), "refused": int((~ok).sum()),
              "refusal_reasons": sorted({r.reason.split(" (")[0] for r in regs if not r.ok}),
              "level_error_mm": summary(level),
              "brain_dice": {"median": float(np.median(dices)) if dices else None,
                             "worst": float(np.min(dices)) if dices else None},
              "ms_per_slice": ms}
    return result, regs, est


def prior_coverage(regs, images, masks, brains, labels) -> dict:
    from audit.anatomy import ad_prior, prior_regions

    shape = images.shape[1:]
    maps = prior_regions(regs, shape)
    maps["union"] = ad_prior(regs, shape)
    pick = [i for i, (r, l) in enumerate(zip(regs, labels)) if r.ok and l in STRONG and masks[i].sum() > 0]
    out = {"slices": len(pick)}
    for name, m in maps.items():
        mass = [float((m[i] * masks[i]).sum() / masks[i].sum()) for i in pick]
        area = [float((m[i] * brains[i]).sum() / brains[i].sum()) for i in pick]
        mass_bin = [float(((m[i] > 0.5) & masks[i]).sum() / masks[i].sum()) for i in pick]
        area_bin = [float(((m[i] > 0.5) & brains[i]).sum() / brains[i].sum()) for i in pick]
        out[name] = {"mask_mass_inside": float(np.median(mass)), "brain_area_covered": float(np.median(area)),
                     "ratio": float(np.median(mass) / max(np.median(area), 1e-9)),
                     "mask_inside_binary": float(np.median(mass_bin)), "area_binary": float(np.median(area_bin))}
    return out


def negatives(rng: np.random.Generator, h=208, w=176) -> dict:
    from audit.anatomy import register_slices

    yy, xx = np.mgrid[:h, :w]
    ellipse = (((yy - h / 2) / (0.4 * h)) ** 2 + ((xx - w / 2) / (0.4 * w)) ** 2) < 1
    tex = ndi.gaussian_filter(rng.normal(0, 1, (h, w)), 6)
    blobs = ndi.gaussian_filter(rng.normal(0, 1, (h, w)), 3)
    cases = {
        "blank": np.zeros((h, w)), "constant": np.full((h, w), 90.0),
        "uniform noise": rng.uniform(0, 255, (h, w)),
        "checkerboard": ((yy // 16 + xx // 16) % 2) * 200.0 + 20.0,
        "smooth texture": (tex - tex.min()) / np.ptp(tex) * 255,
        "ellipse + noise": np.clip(ellipse * 150.0 + rng.normal(0, 5, (h, w)), 0, 255),
        "textured ellipse": (blobs - blobs.min()) / np.ptp(blobs) * 255 * ellipse,
    }
    regs = register_slices(np.array(list(cases.values()), dtype=np.float32))
    return {k: {"refused": not r.ok, "quality": round(r.quality, 3), "reason": r.reason} for k, r in zip(cases, regs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=12)
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--naive", type=int, default=12, help="slices timed with the naive baseline")
    parser.add_argument("--out", default="out/registration_accuracy.json")
    args = parser.parse_args()

    from audit.anatomy.prior import load_prior
    from audit.anatomy.registration import (
        load_atlas,
        naive_register_slices,
        register_slices,
    )
    from model.fileio import atomic_write_json

    t0 = time.perf_counter()
    load_atlas(), load_prior()
    setup_s = time.perf_counter() - t0
    images, masks, brains, z, labels = load_cohort(args.subjects, args.slices, args.seed)
    rng = np.random.default_rng(args.seed)
    skull = np.array([add_skull(i, b, rng) for i, b in zip(images, brains)])
    conditions = {
        "as rendered": (images, masks, brains),
        "rotation +-15 deg": pose(images, masks, brains, rng, rotation=15.0),
        "shift +-10 %": pose(images, masks, brains, rng, shift=0.10),
        "zoom 0.9-1.1": pose(images, masks, brains, rng, zoom=(0.9, 1.1)),
        "rotation+shift+zoom": pose(images, masks, brains, rng, rotation=15.0, shift=0.10, zoom=(0.9, 1.1)),
        "skull-on": (skull, masks, brains),
        "skull-on + rot/shift/zoom": pose(skull, masks, brains, rng, rotation=15.0, shift=0.10, zoom=(0.9, 1.1)),
    }
    small = np.array([cv2.resize(i, (128, 128), interpolation=cv2.INTER_AREA) for i in images])
    small_masks = np.array([cv2.resize(m.astype(np.uint8), (128, 128), interpolation=cv2.INTER_NEAREST) > 0 for m in masks])
    small_brains = np.array([cv2.resize(b.astype(np.uint8), (128, 128), interpolation=cv2.INTER_NEAREST) > 0 for b in brains])
    conditions["128x128 input"] = (small, small_masks, small_brains)

    rows, priors, otsu = [], {}, {}
    for name, (im, ma, br) in conditions.items():
        result, regs, est = evaluate(name, im, ma, br, z, labels)
        rows.append(result)
        if name in ("as rendered", "rotation+shift+zoom", "skull-on"):
            priors[name] = prior_coverage(regs, im, ma, br, labels)
        if name.startswith("skull-on"):
            fg_skull, est_err, est_out = [], [], []
            for image, brain, e, r in zip(im, br, est, regs):
                _, fg = cv2.threshold(cv2.GaussianBlur(image, (5, 5), 1.0), 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
                fg = ndi.binary_fill_holes(fg > 0)
                fg_skull.append(float((fg & ~brain).sum() / max(fg.sum(), 1)))
                if r.ok:
                    est_out.append(float((e & ~brain).sum() / max(e.sum(), 1)))
                    est_err.append(1.0 - dice(e, brain))
            otsu[name] = {"otsu_foreground_not_brain": float(np.median(fg_skull)),
                          "otsu_foreground_not_brain_worst": float(np.max(fg_skull)),
                          "template_brain_not_brain": float(np.median(est_out)),
                          "template_brain_1_minus_dice": float(np.median(est_err)),
                          "template_brain_1_minus_dice_worst": float(np.max(est_err))}

    # Speed on 128 x 128 inputs: this method against the naive full level search, same slices, same run.
    n = min(args.naive, len(small))
    t = time.perf_counter()
    register_slices(small[:n])
    fast_ms = 1000 * (time.perf_counter() - t) / n
    t = time.perf_counter()
    naive = naive_register_slices(small[:n])
    naive_ms = 1000 * (time.perf_counter() - t) / n
    naive_err = [abs(r.z_mm - zz) for r, zz in zip(naive, z[:n]) if r.ok]
    neg = negatives(np.random.default_rng(args.seed + 1))

    print(f"cohort: {args.subjects} subjects x {args.slices} slices (seed {args.seed}); template setup {setup_s:.1f} s")
    print()
    print("| condition | slices | refused | level error mm: median / p95 / worst | brain Dice: median / worst | ms/slice |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        e, d = r["level_error_mm"], r["brain_dice"]
        le = f"{e['median']:.1f} / {e['p95']:.1f} / {e['worst']:.1f}" if e["n"] else "-"
        dd = f"{d['median']:.3f} / {d['worst']:.3f}" if d["median"] is not None else "-"
        print(f"| {r['condition']} | {r['slices']} | {r['refused']} | {le} | {dd} | {r['ms_per_slice']:.1f} |")
    print()
    print(f"speed (128x128, {n} slices, 1 process): {fast_ms:.1f} ms/slice; naive ECC at every level "
          f"{naive_ms:.0f} ms/slice; ratio {naive_ms / fast_ms:.1f}x "
          f"(naive level error median {np.median(naive_err) if naive_err else float('nan'):.1f} mm, "
          f"worst {max(naive_err) if naive_err else float('nan'):.1f} mm)")
    print()
    print("| not a brain slice | refused | quality | reason |")
    print("| --- | --- | --- | --- |")
    for k, v in neg.items():
        print(f"| {k} | {v['refused']} | {v['quality']:.2f} | {v['reason']} |")
    print()
    print("| prior (Mild/Moderate slices) | region | true-mask mass inside (soft) | brain area covered (soft) | ratio | mask inside / area (prior > 0.5) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for cond, p in priors.items():
        for region in ("periventricular", "cortical_ribbon", "medial_temporal", "union"):
            q = p[region]
            print(f"| {cond} (n={p['slices']}) | {region} | {q['mask_mass_inside']:.3f} | {q['brain_area_covered']:.3f} | "
                  f"{q['ratio']:.2f} | {q['mask_inside_binary']:.3f} / {q['area_binary']:.3f} |")
    print()
    for cond, o in otsu.items():
        print(f"{cond}: Otsu foreground that is not brain: median {o['otsu_foreground_not_brain']:.3f} "
              f"(worst {o['otsu_foreground_not_brain_worst']:.3f}); template-brain estimate outside the brain: median "
              f"{o['template_brain_not_brain']:.3f}, 1 - Dice median {o['template_brain_1_minus_dice']:.3f} "
              f"(worst {o['template_brain_1_minus_dice_worst']:.3f})")
    atomic_write_json(args.out, {
        "cohort": {"subjects": args.subjects, "slices_per_subject": args.slices, "seed": args.seed},
        "setup_s": setup_s, "conditions": rows,
        "speed_128": {"slices": n, "ms_per_slice": fast_ms, "naive_ms_per_slice": naive_ms,
                      "ratio": naive_ms / fast_ms, "naive_level_error_mm": summary(naive_err)},
        "negatives": neg, "prior": priors, "skull_on_foreground": otsu,
    })
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
