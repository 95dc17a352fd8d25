"""Quality stage: every explanation-quality figure of the audited Grad-CAM, beside its control maps.

A figure means nothing alone, so each is computed for the controls on the same images (random smooth,
brain-uniform, edge, centre prior; ``audit.quality.controls``) and compared by the skill over the best
one with a subject-bootstrap CI (``audit.quality.skill``).
"""
from __future__ import annotations

import numpy as np

from audit.sampling import FAITHFULNESS_SALT, RANDOMIZATION_SALT, STABILITY_SALT, sample, sample_disease
from model.classes import REFERENCE_CLASS


def control_maps(run, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Control maps for images ``idx``; the brain-uniform control fills ``run.control_brain`` (the brain
    masks, else the registered template brain, else the Otsu foreground)."""
    from audit.quality.controls import control_maps as build

    return build(run.inputs[idx], brain_masks=run.control_brain[idx], seed=run.config.seed, keys=idx)


def compare(run, value, controls: dict, idx: np.ndarray, *, higher_is_better: bool) -> dict:
    """Model vs controls on images ``idx``: skill over the best control with a subject bootstrap CI."""
    from audit.quality.skill import compare_to_controls

    per_sample = lambda r: getattr(r, "per_sample", r)  # noqa: E731 - MetricResult or array
    return compare_to_controls(per_sample(value), {k: per_sample(v) for k, v in controls.items()},
                               higher_is_better=higher_is_better, subjects=[run.subjects[i] for i in idx],
                               seed=run.config.seed)


def agreement(run) -> dict:
    """Grad-CAM vs IG, beside each control map vs IG: a map that merely follows the brain or its
    edges agrees with IG too, so only the margin over the best control says the methods concur."""
    from audit.quality.agreement import agreement as agree

    idx = run.ig_indices
    controls_maps = control_maps(run, idx)
    brain = controls_maps["brain_uniform"]  # correlate inside the brain: brain-vs-background is trivial
    result = dict(agree(run.gradcam_for(idx), run.ig.heatmaps, region=brain))
    controls = {name: agree(maps, run.ig.heatmaps, region=brain) for name, maps in controls_maps.items()}
    result["controls"] = controls
    result["comparisons"] = {"spearman": compare(run, result["spearman"], {k: v["spearman"] for k, v in
                                                                           controls.items()}, idx,
                                                 higher_is_better=True)}
    return result


def stability(run) -> dict:
    """SSIM of Grad-CAM under input noise and the prediction flip rate, beside image-only controls."""
    from audit.quality.controls import image_only_explainers
    from audit.quality.stability import stability as measure
    from audit.stages.explanations import CAM_METHODS, audited_maps_and_predictions

    config = run.config
    idx = sample(run.labels, config.stability_images, config.seed, STABILITY_SALT, run.subjects)
    result = measure(run.model, run.explainer, run.inputs[idx], sigmas=config.sigmas, draws=config.stability_draws,
                     seed=config.seed, targets=run.model_targets[idx], clean_maps=run.gradcam_for(idx),
                     predict_fn=run.predict_fn, intensity_range=run.contract.input_scale,
                     batch_size=max(config.batch_size, 64), control_explainers=image_only_explainers(config.seed),
                     clean_predictions=run.model_targets[idx],
                     explain_and_predict=((lambda model, x, t: audited_maps_and_predictions(run, model, x, t))
                                          if config.explainer in CAM_METHODS else None))
    result["comparisons"] = {key: compare(run, ssim, result["controls"][key], idx, higher_is_better=True)
                             for key, ssim in result["ssim"].items()}
    result["indices"] = idx
    return result


def faithfulness(run) -> dict:
    """Deletion and insertion curves of the logit in the map's order, beside the controls' orders."""
    from audit.quality.faithfulness import faithfulness as measure

    # Deletion and insertion blur what the map ranks first; for the reference stage that *adds*
    # evidence (a blurred brain looks less atrophic), so only the demented stages are measured.
    config = run.config
    idx = sample_disease(run.labels, config.faithfulness_images, config.seed, FAITHFULNESS_SALT, run.subjects)
    result = measure(run.logit_fn, run.inputs[idx], run.gradcam_for(idx), run.model_targets[idx],
                     fractions=config.faithfulness_fractions(), seed=config.seed, batch_size=max(config.batch_size, 64),
                     control_maps=control_maps(run, idx), scale_by_spread=True)
    controls = result["controls"]
    result["comparisons"] = {
        curve: compare(run, result[curve], {k: v[curve] for k, v in controls.items()}, idx,
                       higher_is_better=curve != "deletion_auc")
        for curve in ("deletion_auc", "insertion_auc", "score")}
    result["indices"] = idx
    return result


def randomization(run) -> dict:
    """Cascading randomisation of the weights (Adebayo et al. 2018), with an edge-map control."""
    from audit.quality.controls import edge_maps
    from audit.quality.randomization import cascading_randomization

    config = run.config
    idx = sample(run.labels, config.randomization_images, config.seed, RANDOMIZATION_SALT, run.subjects)
    return cascading_randomization(
        run.model, run.explainer, run.inputs[idx], run.model_targets[idx], seed=config.seed,
        original_maps=run.gradcam_for(idx), control_explainers={"edge": lambda _m, x, _t: edge_maps(x)},
        gate_fraction=config.randomization_gate_fraction)


def randomization_similarity(result: dict) -> float | None:
    """The sanity check's figure: the highest mean Spearman |map| similarity at the gate stage (head + the
    top half of the backbone's stages re-initialised) or any later one. After the *whole* cascade any
    gradient method scores ≈ 0.1, so judging there could never fail; at the gate stage an explanation
    that ignores the learned weights (an edge map: ≈ 1.0) still fails."""
    gate = result.get("gate_similarity", {}).get("spearman")
    return None if gate is None else float(gate)


def convergence(run):
    """IG's completeness error per image: how far the Riemann sum is from F(x) − F(x')."""
    from audit.quality.convergence import convergence as measure

    return measure(run.ig.completeness_error)


def localization(run) -> dict | None:
    """Against the atrophy masks, beside the control maps (without masks: the outside-brain mass only).

    Pointing at the evidence is asked only of correctly classified images whose mask covers at least
    ``min_mask_share`` of the brain (a wrong prediction has no reason to point at the atrophy, and a
    few-pixel mask makes every figure noise). The outside-brain mass is taken over every explained image.
    """
    from audit.quality.localization import localization as measure

    idx = run.gradcam_indices
    shape = (len(idx), *run.images.shape[1:])
    masks = run.masks[idx] if run.masks is not None else np.zeros(shape, bool)
    # Outside-brain mass needs a brain: the manifest's masks, else the registered template brain (never an
    # Otsu foreground, which counts a skull as brain); slices that did not register are left out.
    brain = run.brain_masks[idx] if run.brain_masks is not None else run.template_brain[idx]
    maps, controls = run.gradcam_maps, control_maps(run, idx)
    result = measure(maps, np.zeros(shape, bool), brain_masks=brain)  # outside-brain over all images

    pixels = shape[1] * shape[2]
    brain_area = brain.reshape(len(idx), pixels).sum(axis=1)
    mask_area = (masks > 0.5).reshape(len(idx), pixels).sum(axis=1)
    correct = run.predicted[idx] == run.labels[idx]
    # The reference stage's evidence is the absence of atrophy: its masks mark natural-range changes
    # that are not why a slice is NonDemented, so its slices are not asked to point at them.
    nontrivial = ((mask_area >= run.config.min_mask_share * np.maximum(brain_area, 1)) & (mask_area > 0)
                  & run.disease_mask[idx])
    chosen = np.flatnonzero(correct & nontrivial)
    fallback = None
    if len({run.subjects[i] for i in idx[chosen]}) < 2 or len(chosen) < 10:
        # A model that gets (almost) nothing right cannot be excused from pointing at the evidence.
        fallback = (f"only {len(chosen)} correctly classified slice(s) with a non-trivial mask: every slice "
                    "with a non-trivial mask was evaluated instead")
        chosen = np.flatnonzero(nontrivial)
    inside = measure(maps[chosen], masks[chosen])
    result.update({k: inside[k] for k in ("energy_pointing", "pointing_game", "auprc", "auprc_chance",
                                          "n_evaluated")})
    result["indices"] = [int(i) for i in idx[chosen]]
    result["n_excluded_empty_mask"] = int((mask_area == 0).sum())
    result["selection"] = {"n_explained": int(len(idx)), "n_correct": int(correct.sum()),
                           "n_nontrivial_mask": int(nontrivial.sum()), "n_evaluated": int(len(chosen)),
                           "n_reference_excluded": int((~run.disease_mask[idx]).sum()),
                           "reference_class": REFERENCE_CLASS,
                           "min_mask_share": run.config.min_mask_share, "fallback": fallback}
    control_results = {}
    for name, cmaps in controls.items():
        c_all = measure(cmaps, np.zeros(shape, bool), brain_masks=brain)
        c_in = measure(cmaps[chosen], masks[chosen])
        control_results[name] = {"energy_pointing": c_in["energy_pointing"], "auprc": c_in["auprc"],
                                 "outside_brain": c_all.get("outside_brain")}
    result["controls"] = control_results
    comparisons = {}
    for key, higher in (("energy_pointing", True), ("auprc", True)):
        comparisons[key] = compare(run, result[key], {k: v[key] for k, v in control_results.items()},
                                   idx[chosen], higher_is_better=higher)
    if result.get("outside_brain") is not None:
        has_brain = brain.reshape(len(idx), pixels).any(axis=1)
        comparisons["outside_brain"] = compare(
            run, result["outside_brain"], {k: v["outside_brain"] for k, v in control_results.items()},
            idx[has_brain], higher_is_better=False)
    result["comparisons"] = comparisons
    result["brain_source"] = ("brain masks" if run.brain_masks is not None else
                              f"MNI152 template registered to {int(brain.reshape(len(idx), pixels).any(axis=1).sum())} "
                              f"of {len(idx)} slices")
    return result


MIN_PRIOR_SHARE = 0.05  # slices where the prior covers less of the brain than this are not asked to point at it


def share_of_brain(region: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Per image, a (soft) region's area as a share of the brain's: what a brain-uniform map scores in it."""
    return region.sum(axis=(1, 2)) / np.maximum(brain.sum(axis=(1, 2)), 1)


def prior_localization(run) -> dict:
    """Share of Grad-CAM mass inside the AD evidence prior (audit.anatomy), beside the controls; with
    ``applicable`` False and the reason when too few slices register where the prior lies.

    The mask-free counterpart of ``localization``: asked of correctly classified demented-stage slices
    that registered (all registered demented slices when fewer than 10, or fewer than 2 subjects, are
    correct). The prior is coarse, so the figure is judged only as skill over the controls.
    """
    from audit.quality.localization import energy_inside
    from audit.stages.anatomy import MIN_REGISTERED

    idx = run.gradcam_indices
    registered = np.array([run.registrations[i].ok for i in idx], dtype=bool)
    # A slice above or below where the prior lies (e.g. the vertex) has nothing to point at: left out.
    has_prior = share_of_brain(run.prior_maps[idx], run.control_brain[idx]) >= MIN_PRIOR_SHARE
    demented = run.disease_mask[idx]
    correct = run.predicted[idx] == run.labels[idx]
    eligible = registered & demented & has_prior
    chosen = np.flatnonzero(eligible & correct)
    fallback = None
    if len({run.subjects[i] for i in idx[chosen]}) < 2 or len(chosen) < MIN_REGISTERED:
        fallback = (f"only {len(chosen)} correctly classified, registered demented slice(s): every registered "
                    "demented slice was evaluated instead")
        chosen = np.flatnonzero(eligible)
    selection = {"n_explained": int(len(idx)), "n_registered": int(registered.sum()),
                 "n_registered_without_prior": int((registered & ~has_prior).sum()),
                 "n_demented_registered": int(eligible.sum()), "n_correct": int((eligible & correct).sum()),
                 "n_evaluated": int(len(chosen)), "fallback": fallback}
    if len(chosen) < MIN_REGISTERED:
        return {"selection": selection, "applicable": False,
                "reason": f"only {len(chosen)} demented-stage slice(s) registered to the MNI152 template at a level "
                          f"where the prior lies (at least {MIN_REGISTERED} needed); refused: "
                          f"{run.registration_summary['refused'] or 'none'}"}
    from audit.anatomy import prior_regions
    from audit.quality.base import CITES, MetricResult, normalize_maps

    prior = run.prior_maps[idx[chosen]]
    maps = normalize_maps(run.gradcam_maps[chosen])
    brain = run.control_brain[idx[chosen]]
    regions = {name: {"map_energy": float(energy_inside(maps, region).mean()),
                      "area_share": float(share_of_brain(region, brain).mean())}
               for name, region in prior_regions([run.registrations[i] for i in idx[chosen]],
                                                 run.images.shape[1:3]).items()}
    value = MetricResult("prior_energy", energy_inside(maps, prior), True, [CITES["wang2020"]])
    controls = {name: MetricResult("prior_energy", energy_inside(normalize_maps(cmaps), prior), True, [])
                for name, cmaps in control_maps(run, idx[chosen]).items()}
    return {"energy": value, "controls": controls, "selection": selection, "applicable": True,
            "indices": [int(i) for i in idx[chosen]],
            "prior_area_share": float(share_of_brain(prior, brain).mean()),
            "regions": regions,
            "comparisons": {"energy": compare(run, value, controls, idx[chosen], higher_is_better=True)}}
