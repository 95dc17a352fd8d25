"""Explanation checks: agreement, faithfulness, randomization sanity, IG convergence, localization.

Every figure is computed beside control maps on the same images (random smooth, uniform over the brain,
edge, centre prior); a ``skill_min`` rule judges the lower CI bound of the margin over the best one.
"""
import numpy as np
import pytest

from audit.stages.quality import randomization_similarity


@pytest.mark.check("explanations.agreement_spearman")
def test_gradcam_and_ig_agree(gate, run):
    summary = run.agreement["spearman"].summary
    gate.check("explanations.agreement_spearman", summary["mean"], detail=f"{summary['n']} images",
               comparison=run.agreement["comparisons"]["spearman"])


@pytest.mark.check("explanations.faithfulness_deletion_gain")
def test_gradcam_is_faithful(gate, run):
    gain = run.faithfulness["deletion_gain"].summary
    gate.check("explanations.faithfulness_deletion_gain", gain["mean"], detail=f"deletion AUC, {gain['n']} images",
               comparison=run.faithfulness["comparisons"]["deletion_auc"])


@pytest.mark.check("explanations.faithfulness_insertion_gain")
def test_gradcam_is_faithful_on_insertion(gate, run):
    gain = run.faithfulness["insertion_gain"].summary
    gate.check("explanations.faithfulness_insertion_gain", gain["mean"],
               detail=f"insertion AUC, {gain['n']} images", comparison=run.faithfulness["comparisons"]["insertion_auc"])


@pytest.mark.check("explanations.faithfulness_score")
def test_gradcam_ranks_the_evidence_at_both_ends(gate, run):
    score = run.faithfulness["score"].summary
    gate.check("explanations.faithfulness_score", score["mean"],
               detail=f"insertion - deletion AUC of the logit, {score['n']} images",
               comparison=run.faithfulness["comparisons"]["score"])


@pytest.mark.check("explanations.randomization_max_similarity")
def test_maps_depend_on_the_learned_weights(gate, run):
    result = run.randomization
    edge = (result.get("control_gate_similarity") or {}).get("edge", {}).get("spearman")
    gate.check("explanations.randomization_max_similarity", randomization_similarity(result),
               detail=f"highest mean |Spearman| from stage {result.get('gate_stage')} on, of "
                      f"{len(result.get('order', []))} stages; the edge-map control scores "
                      + ("n/a" if edge is None else f"{edge:.2f}"))


@pytest.mark.check("explanations.ig_completeness_error")
def test_integrated_gradients_converged(gate, run):
    summary = run.convergence.summary
    ig = run.ig
    steps = getattr(ig, "steps_used", None)
    scheme = getattr(ig, "scheme", "trapezoid")
    effort = (f"adaptive {scheme} to {run.config.ig_tolerance:g}: {np.mean(steps):.0f} intervals per image on "
              f"average, at most {run.config.ig_steps}" if run.config.ig_tolerance and steps is not None
              else f"{run.config.ig_steps} {scheme} intervals")
    gate.check("explanations.ig_completeness_error", summary["median"],
               detail=f"{effort}; {summary['n']} images with an estimable F(x) - F(x')")


def _localization(gate, run, check_id):
    result = run.localization
    if result is None or run.masks is None or not np.any(run.masks):
        gate.not_applicable(check_id, "the dataset has no ground-truth masks")
    return result


def _selection(result) -> str:
    sel = result["selection"]
    if sel.get("fallback"):
        return f"{sel['n_evaluated']} of {sel['n_explained']} images; {sel['fallback']}"
    return (f"{sel['n_evaluated']} of {sel['n_explained']} images: correctly classified "
            f"({sel['n_correct']}) with a mask covering >= {sel['min_mask_share']:.0%} of the brain "
            f"({sel['n_nontrivial_mask']})")


@pytest.mark.check("explanations.localization_energy")
def test_maps_point_at_the_atrophy(gate, run):
    result = _localization(gate, run, "explanations.localization_energy")
    gate.check("explanations.localization_energy", result["energy_pointing"].summary["mean"],
               detail=_selection(result), comparison=result["comparisons"]["energy_pointing"])


@pytest.mark.check("explanations.localization_auprc")
def test_maps_rank_the_atrophy_first(gate, run):
    result = _localization(gate, run, "explanations.localization_auprc")
    gate.check("explanations.localization_auprc", result["auprc"].summary["mean"], detail=_selection(result),
               comparison=result["comparisons"]["auprc"])


@pytest.mark.check("explanations.outside_brain_mass")
def test_maps_stay_inside_the_brain(gate, run):
    result = run.localization
    outside = None if result is None else result.get("outside_brain")
    if outside is None or not len(outside.per_sample):
        gate.not_applicable("explanations.outside_brain_mass", "the dataset has no brain masks and no slice "
                                                               "registered to the MNI152 template")
    gate.check("explanations.outside_brain_mass", outside.summary["mean"], detail=f"brain: {result['brain_source']}",
               comparison=result["comparisons"].get("outside_brain"))


@pytest.mark.check("explanations.prior_localization")
def test_maps_point_where_alzheimers_shows(gate, run):
    """The mask-free localisation: mass inside the AD evidence prior, over the best control. It gates where
    there are no lesion masks (users' data); beside masks it is reported, and localization_energy gates."""
    result = run.prior_localization
    if result is None or not result["applicable"]:
        gate.not_applicable("explanations.prior_localization", (result or {}).get("reason") or "no registration")
    sel = result["selection"]
    detail = (f"{sel['n_evaluated']} demented-stage slices of {sel['n_explained']} "
              f"({sel['n_registered']} registered to MNI152); prior covers {result['prior_area_share']:.0%} "
              "of the brain" + (f"; {sel['fallback']}" if sel["fallback"] else ""))
    has_masks = run.masks is not None and bool(np.any(run.masks))
    gate.check("explanations.prior_localization", result["energy"].summary["mean"], detail=detail,
               comparison=result["comparisons"]["energy"],
               not_gating="lesion masks are present, so localization_energy gates" if has_masks else None)
