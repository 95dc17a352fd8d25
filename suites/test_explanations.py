"""Explanation checks: agreement, faithfulness, randomization sanity, IG convergence, localization."""
import numpy as np
import pytest

from audit.runner import randomization_similarity


@pytest.mark.check("explanations.agreement_spearman")
def test_gradcam_and_ig_agree(gate, run):
    summary = run.agreement["spearman"].summary
    gate.check("explanations.agreement_spearman", summary["mean"], detail=f"{summary['n']} images")


@pytest.mark.check("explanations.faithfulness_deletion_gain")
def test_gradcam_is_faithful(gate, run):
    gain = run.faithfulness["deletion_gain"].summary
    gate.check("explanations.faithfulness_deletion_gain", gain["mean"], detail=f"{gain['n']} images")


@pytest.mark.check("explanations.randomization_max_similarity")
def test_maps_depend_on_the_learned_weights(gate, run):
    result = run.randomization
    gate.check("explanations.randomization_max_similarity", randomization_similarity(result),
               detail=f"{len(result.get('order', []))} stages; highest at stage "
                      f"{result.get('max_similarity', {}).get('spearman_stage')}")


@pytest.mark.check("explanations.ig_completeness_error")
def test_integrated_gradients_converged(gate, run):
    summary = run.convergence.summary
    gate.check("explanations.ig_completeness_error", summary["median"],
               detail=f"{run.config.ig_steps} steps, {summary['n']} images")


def _localization(run):
    result = run.localization
    if result is None or run.masks is None or not np.any(run.masks):
        pytest.skip("no ground-truth masks in this dataset: localization not applicable")
    return result


@pytest.mark.check("explanations.localization_energy")
def test_maps_point_at_the_atrophy(gate, run):
    result = _localization(run)
    summary = result["energy_pointing"].summary
    gate.check("explanations.localization_energy", summary["mean"], detail=f"{summary['n']} images with masks")


@pytest.mark.check("explanations.localization_auprc")
def test_maps_rank_the_atrophy_first(gate, run):
    result = _localization(run)
    gate.check("explanations.localization_auprc", result["auprc"].summary["mean"])


@pytest.mark.check("explanations.outside_brain_mass")
def test_maps_stay_inside_the_brain(gate, run):
    result = run.localization
    if result is None or result.get("outside_brain") is None:
        pytest.skip("no brain masks in this dataset: outside-brain mass not applicable")
    gate.check("explanations.outside_brain_mass", result["outside_brain"].summary["mean"])
