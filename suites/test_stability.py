"""Stability of Grad-CAM under input noise, and of the predictions themselves."""
import numpy as np
import pytest


@pytest.mark.check("stability.ssim.{sigma_id}")
def test_maps_are_stable_under_noise(gate, run, sigma):
    from audit.quality.stability import sigma_key
    from suites.thresholds import sigma_id

    summary = run.stability["ssim"][sigma_key(sigma)].summary
    gate.check(f"stability.ssim.{sigma_id(sigma)}", summary["mean"],
               detail=f"{summary['n']} images x {run.config.stability_draws} draws",
               comparison=run.stability["comparisons"][sigma_key(sigma)])


@pytest.mark.check("stability.max_flip_rate")
def test_predictions_do_not_flip_under_noise(gate, run):
    rates = {key: float(np.mean(result.per_sample)) for key, result in run.stability["flip_rate"].items()}
    worst = max(rates, key=rates.get)
    gate.check("stability.max_flip_rate", rates[worst], detail=f"at sigma {worst}")
