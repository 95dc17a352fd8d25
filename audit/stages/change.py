"""Change stage: the candidate against the model accepted last time (``--baseline``), on the same images.

Paired deltas with subject CIs come from ``audit.compare``; this stage also picks the slices whose
Grad-CAM changed most, for the report to show side by side.
"""
from __future__ import annotations

import numpy as np

from model.classes import CLASSES

N_CHANGE_EXAMPLES = 4


def change_of(run, figure: str) -> dict | None:
    """The paired delta candidate − baseline of one figure; None when the figure cannot be computed."""
    from audit.compare import compare_runs

    return compare_runs(run, run.baseline, seed=run.config.seed, figures=[figure]).get(figure)


def change_examples(run) -> tuple[list[dict], float | None]:
    """The shared slices whose candidate and baseline Grad-CAMs agree least (SSIM), with both maps, and
    the mean SSIM over every shared slice (None when the two audits explained no slice in common)."""
    from audit.quality.base import ssim_pairs

    base = run.baseline
    shared = np.intersect1d(run.gradcam_indices, base.gradcam_indices)
    if not len(shared):
        return [], None
    cand_maps, base_maps = run.gradcam_for(shared), base.gradcam_for(shared)
    ssim = ssim_pairs(cand_maps, base_maps)
    examples = []
    for row in np.argsort(ssim)[:N_CHANGE_EXAMPLES]:
        i = int(shared[row])
        examples.append({"index": i, "path": str(run.split.samples[i].path), "ssim": float(ssim[row]),
                         "true": CLASSES[run.labels[i]], "candidate": CLASSES[run.predicted[i]],
                         "baseline": CLASSES[base.predicted[i]], "image": run.images[i],
                         "candidate_map": cand_maps[row], "baseline_map": base_maps[row]})
    return examples, float(np.mean(ssim))
