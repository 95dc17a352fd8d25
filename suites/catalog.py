"""What each check means and where it comes from: titles, groups, explanations and citations."""
from __future__ import annotations

YAGIS = "Yagis et al. 2021, Sci. Rep. 11:22544"
WEN = "Wen et al. 2020, Medical Image Analysis 63:101694"
SELVARAJU = "Selvaraju et al. 2017, ICCV (arXiv 1610.02391)"
SUNDARARAJAN = "Sundararajan et al. 2017, ICML (arXiv 1703.01365)"
ADEBAYO = "Adebayo et al. 2018, NeurIPS (arXiv 1810.03292)"
PETSIUK = "Petsiuk et al. 2018, BMVC (arXiv 1806.07421)"
ARUN = "Arun et al. 2021, Radiology: AI (arXiv 2008.02766)"
WANG = "Wang et al. 2020, CVPR-W (arXiv 1910.01279)"
GUO = "Guo et al. 2017, ICML (arXiv 1706.04599)"
FRISONI = "Frisoni et al. 2010, Nat Rev Neurol 6:67"
SCHELTENS = "Scheltens et al. 1992, J Neurol Neurosurg Psychiatry 55:967"

# id -> (title, group, meaning, cites). Per-sigma and per-device ids share their stem's entry.
CATALOG: dict[str, tuple[str, str, str, list[str]]] = {
    "performance.accuracy": ("Accuracy", "performance", "share of slices classified correctly", [WEN]),
    "performance.balanced_accuracy": ("Balanced accuracy", "performance",
                                      "mean recall over classes; not flattered by the majority class", [WEN]),
    "performance.macro_f1": ("Macro-F1", "performance", "unweighted mean F1 over the classes present", [WEN]),
    "performance.per_class_recall": ("Worst per-class recall", "performance",
                                     "lowest recall among classes with at least 5 test subjects", [WEN]),
    "performance.ece": ("Expected calibration error", "performance",
                        "gap between confidence and accuracy (15 bins); high = over/under-confident", [GUO]),
    "data.leakage_rate": ("Near-duplicate leakage", "data",
                          "share of val/test images with a near-duplicate twin in train: inflates accuracy",
                          [YAGIS, WEN]),
    "data.subject_overlap": ("Subjects across splits", "data",
                             "subjects with slices in more than one split: a slice-level leak", [YAGIS, WEN]),
    "data.class_coverage": ("Class coverage", "data", "stages present in the evaluated split", [WEN]),
    "data.train_overlap": ("Evaluated images the model was trained on", "data",
                           "evaluated images whose content (SHA-256 of the file) is in the model's own training "
                           "split: accuracy on them measures memory, not generalisation", [YAGIS, WEN]),
    "data.unreadable_fraction": ("Unreadable files", "data", "share of files skipped as corrupt or not images", []),
    "explanations.agreement_spearman": ("Grad-CAM / IG agreement", "explanations",
                                        "Spearman correlation of the Grad-CAM and IG maps inside the brain "
                                        "(28x28 grid), beside what each control map scores against IG; low = the "
                                        "methods disagree on the evidence", [SELVARAJU, SUNDARARAJAN, ADEBAYO]),
    "explanations.faithfulness_deletion_gain": ("Faithfulness (deletion)", "explanations",
                                                "how fast the class probability drops when pixels are removed in "
                                                "Grad-CAM order, against the same curve in each control map's order",
                                                [PETSIUK]),
    "explanations.faithfulness_insertion_gain": ("Faithfulness (insertion)", "explanations",
                                                 "how fast the class probability rises when pixels are revealed "
                                                 "in Grad-CAM order, against each control map's order", [PETSIUK]),
    "explanations.faithfulness_score": ("Faithfulness (insertion − deletion)", "explanations",
                                        "insertion AUC minus deletion AUC of the class logit (each image's curves "
                                        "scaled to the range its logit spans), in Grad-CAM order against each "
                                        "control map's order: both ends of the ranking in one figure", [PETSIUK]),
    "explanations.randomization_max_similarity": ("Randomization sanity check", "explanations",
                                                  "highest similarity of Grad-CAM maps to the trained model's once "
                                                  "the head and the top half of the backbone's stages are "
                                                  "re-initialised: high = the maps do not depend on what it learned "
                                                  "(an edge map scores 1.0)", [ADEBAYO]),
    "explanations.ig_completeness_error": ("IG convergence", "explanations",
                                           "median relative completeness error of Integrated Gradients",
                                           [SUNDARARAJAN]),
    "explanations.localization_energy": ("Localization (energy pointing game)", "explanations",
                                         "share of Grad-CAM mass inside the ground-truth atrophy masks, beside a "
                                         "random, brain-uniform, edge and centre-prior map", [WANG, ARUN]),
    "explanations.localization_auprc": ("Localization (AUPRC)", "explanations",
                                        "precision-recall of the map against the masks, beside the control maps",
                                        [ARUN]),
    "explanations.outside_brain_mass": ("Map mass outside the brain", "explanations",
                                         "share of Grad-CAM mass outside the brain (the brain masks, else the "
                                         "MNI152 brain registered to each slice): a shortcut signal", [ARUN]),
    "explanations.prior_localization": ("Localization without masks (AD evidence prior)", "explanations",
                                        "share of Grad-CAM mass inside where Alzheimer's disease shows on an axial "
                                        "slice (periventricular band, cortical ribbon, medial temporal lobe of the "
                                        "MNI152 template registered to each slice), beside a random, brain-uniform, "
                                        "edge and centre-prior map; gates when the data have no lesion masks",
                                        [FRISONI, SCHELTENS, WANG]),
    "stability.ssim": ("Stability under noise (SSIM)", "stability",
                       "mean SSIM between Grad-CAM maps of clean and noisy copies", [ARUN]),
    "stability.max_flip_rate": ("Prediction flips under noise", "stability",
                                "share of predictions changed by the noise (worst noise level)", [ARUN]),
    "drift.prediction_agreement": ("Prediction agreement", "drift", "same predicted class in both audits", []),
    "drift.max_probability_difference": ("Largest probability change", "drift",
                                         "max |p_A - p_B| over the heatmap sample", []),
    "drift.heatmap_ssim": ("Grad-CAM similarity", "drift", "mean SSIM between the two audits' maps", []),
    "drift.changed_verdicts": ("Changed verdicts", "drift", "checks whose status changed (throughput excluded)", []),
    **{f"change.{name}": (f"Change vs baseline: {name.replace('_', ' ')}", "change",
                          f"candidate minus baseline on the same images, paired subject bootstrap: {meaning}",
                          [WEN] if name in ("accuracy", "balanced_accuracy", "per_class_recall") else [])
       for name, meaning in (("accuracy", "share of slices classified correctly"),
                             ("balanced_accuracy", "mean recall over the stages present"),
                             ("per_class_recall", "the worst per-stage change of recall"),
                             ("ece", "expected calibration error (lower is better)"),
                             ("localization_energy", "localisation skill over the best control"),
                             ("localization_auprc", "localisation (AUPRC) skill over the best control"),
                             ("faithfulness_score", "faithfulness skill over the best control"),
                             ("agreement_spearman", "Grad-CAM/IG agreement skill over the best control"),
                             ("stability_ssim", "map SSIM under noise at the worst noise level"))},
    "throughput.inference": ("Inference throughput", "throughput", "images per second at batch 32", []),
    "throughput.gradcam": ("Grad-CAM throughput", "throughput", "explained images per second at batch 32", []),
}

# What each explanation check can and cannot detect (the report and README print it beside the verdict):
# a PASS means no more than its first half.
SCOPE: dict[str, tuple[str, str]] = {
    "explanations.agreement_spearman": (
        "whether Grad-CAM and IG rank the same pixels, more than a content-free map ranks them like IG",
        "whether either points at the disease: useless models agree best (an untrained model scored +0.58 over "
        "the best control, a brightness model +0.85), so it only warns"),
    "explanations.faithfulness_score": (
        "whether the map ranks first the pixels the model's own logit depends on",
        "whether that dependence is on the disease: it measures fidelity to the model's function, whatever "
        "it learned (random-weight models pass it)"),
    "explanations.faithfulness_deletion_gain": (
        "the deletion half of the faithfulness score", "as the faithfulness score; warn only"),
    "explanations.faithfulness_insertion_gain": (
        "the insertion half of the faithfulness score", "as the faithfulness score; warn only"),
    "explanations.randomization_max_similarity": (
        "maps that do not depend on the learned weights (an edge detector, a copy of the image)",
        "whether the learned weights encode the disease: a model that learned a shortcut passes"),
    "explanations.ig_completeness_error": (
        "an Integrated Gradients sum that has not converged (its maps would be numerical noise)",
        "anything about the model or what it looks at"),
    "explanations.localization_energy": (
        "map mass on the ground-truth atrophy, beyond a random, brain-uniform, edge and centre map",
        "nothing on data without lesion masks (Kaggle, OASIS): it is then not applicable"),
    "explanations.localization_auprc": (
        "whether the atrophy's pixels rank first in the map", "as localisation energy; warn only"),
    "explanations.prior_localization": (
        "maps that do not look where Alzheimer's shows on an axial slice (around the ventricles, the medial "
        "temporal lobe): edge maps, the brain's outline, a centre prior, a marker; no masks needed",
        "atrophy from other causes in the same places; cortical evidence (reported, not gated); slices that do "
        "not register to the template (refused, and counted)"),
    "explanations.outside_brain_mass": (
        "map mass off the brain: markers, text, the frame (brain masks, else the registered MNI152 brain)",
        "misplaced attention inside the brain"),
}


def expected_check_ids(sigmas, device: str) -> list[str]:
    """Every check the gate must decide for these noise levels and this device (drift checks belong to
    ``alzaudit drift``): the list a complete audit.json covers."""
    from suites.thresholds import sigma_id

    ids = []
    for check_id, (_, group, _, _) in CATALOG.items():
        if group == "drift":
            continue
        if check_id == "stability.ssim":
            ids += [f"stability.ssim.{sigma_id(s)}" for s in sigmas]
        elif group == "throughput":
            ids.append(f"{check_id}.{device}")
        else:
            ids.append(check_id)
    return ids


def describe(check_id: str) -> tuple[str, str, str, list[str]]:
    """Catalog entry for an id, resolving ``stability.ssim.sigma_0_02`` / ``throughput.inference.cpu``."""
    if check_id in CATALOG:
        return CATALOG[check_id]
    stem = ".".join(check_id.split(".")[:2])
    title, group, meaning, cites = CATALOG[stem]
    return f"{title} [{check_id.split('.', 2)[2]}]", group, meaning, cites
