"""Turn each stage's figures into audit.json values: plain JSON, with images as ``Artefact`` placeholders.

Nothing here writes a file: an overlay, a gallery image or the heatmap sample is returned as an
``Artefact`` (its relative path and its content), and ``audit.writer`` writes them all and puts the paths
in their place. Only figures the run computed appear (the gate computes what its checks ask for).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from audit.schema_io import CONTROL_FIGURES, STABILITY_CONTROL_PREFIX
from model.errors import AlzAuditError
from model.manifest import Manifest


@dataclass(frozen=True)
class Artefact:
    """A file audit.json names: a PNG (``image``: uint8 gray or RGB), an ``.npz`` (``arrays``), or a
    copy of ``source``. ``relative`` is its path under the audit folder, as audit.json records it."""

    relative: str
    image: np.ndarray | None = None
    arrays: dict | None = None
    source: Path | None = None


def to_jsonable(value):
    from audit.quality.base import to_jsonable as convert

    return convert(value)


def summary(result) -> dict | None:
    if result is None:
        return None
    return to_jsonable(result).get("summary") if hasattr(result, "to_dict") else result


def to_uint8(image: np.ndarray, scale: float) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3:
        image = image[..., 0]
    return np.clip(image * (255.0 / scale), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------- figures
def figures_section(run, *, compute: bool = False) -> dict:
    """The ``figures`` block from whatever the run has computed (or everything, with ``compute``)."""
    def have(name: str) -> bool:
        return compute or run.has(name)

    def safely(name: str, build):
        if not have(name):
            return None
        try:
            return build()
        except AlzAuditError as exc:
            run.errors[name] = str(exc)
            if compute:
                raise
            return None

    figures = {
        "performance": safely("performance", lambda: to_jsonable(run.performance)),
        "agreement": safely("agreement", lambda: {"between": ["gradcam", "integrated_gradients"],
                                                   **{k: summary(v) for k, v in run.agreement.items()
                                                      if k not in ("controls", "comparisons")}}),
        "stability": safely("stability", lambda: stability_section(run)),
        "faithfulness": safely("faithfulness", lambda: faithfulness_section(run.faithfulness)),
        "randomization": safely("randomization", lambda: randomization_section(run.randomization)),
        "localization": safely("localization", lambda: localization_section(run.localization)),
        "prior_localization": safely("prior_localization", lambda: prior_section(run)),
        "convergence": safely("convergence", lambda: {"completeness_error": summary(run.convergence),
                                                      "steps": run.config.ig_steps, **ig_effort(run.ig)}),
        "leakage": safely("leakage", lambda: leakage_section(run.leakage)),
    }
    figures["controls"] = controls_section(run, have)
    figures["change"] = None
    if run.baseline is not None:
        try:
            figures["change"] = change_section(run)
        except AlzAuditError as exc:
            run.errors["change"] = str(exc)
    return figures


def controls_section(run, have) -> dict | None:
    """Every figure beside its control maps: ``{figure: comparison}`` (audit.quality.skill), for the report."""
    out: dict = {}
    for key, (_, stage, comparison_key) in CONTROL_FIGURES.items():
        if not have(stage) or stage in run.errors:
            continue
        try:
            result = getattr(run, stage)
        except Exception:  # noqa: BLE001 - its own check records the error
            continue
        comparison = (result or {}).get("comparisons", {}).get(comparison_key) if isinstance(result, dict) else None
        if comparison is not None:
            out[key] = to_jsonable(comparison)
    if have("stability") and "stability" not in run.errors:
        try:
            for sigma, comparison in run.stability.get("comparisons", {}).items():
                out[f"{STABILITY_CONTROL_PREFIX}{sigma}"] = to_jsonable(comparison)
        except Exception:  # noqa: BLE001
            pass
    return out or None


def ig_effort(result) -> dict:
    """How many intervals the adaptive IG spent per image, and how many images met the tolerance."""
    used = np.asarray(getattr(result, "steps_used", [result.steps] * len(result.delta)))
    panel_steps = getattr(result, "panel_steps", None)
    return {"tolerance": getattr(result, "tolerance", None), "scheme": getattr(result, "scheme", "trapezoid"),
            "panels": int(panel_steps.shape[1]) if panel_steps is not None else 1,
            "steps_used_mean": float(used.mean()) if used.size else None,
            "steps_used_max": int(used.max()) if used.size else None,
            "gradient_evaluations": int(getattr(result, "gradient_evaluations", (used + 1).sum())),
            "n_converged": int(np.sum(getattr(result, "converged", []))), "n_images": int(len(result.delta))}


def stability_section(run) -> dict:
    from audit.explain.overlay import overlay

    result, scale = run.stability, run.contract.input_scale
    out = {}
    for key, ssim in result["ssim"].items():
        example = result.get("examples", {}).get(key)
        paths = None
        if example:
            images = {"clean": to_uint8(example["image"], scale), "noisy": to_uint8(example["noisy_image"], scale)}
            paths = {name: Artefact(f"stability/{key}_{name}.png", image) for name, image in images.items()}
            for name, source in (("clean_map", "clean"), ("noisy_map", "noisy")):
                paths[name] = Artefact(f"stability/{key}_{name}.png",
                                       overlay(images[source], np.asarray(example[name], dtype=np.float32)))
        out[key] = {"ssim": summary(ssim), "flip_rate": float(np.mean(result["flip_rate"][key].per_sample)),
                    "example": paths}
    return out


def faithfulness_section(result: dict) -> dict:
    curves = result.get("curves") or {}
    return {"deletion_auc": summary(result["deletion_auc"]), "insertion_auc": summary(result["insertion_auc"]),
            "random_deletion_auc": summary(result["deletion_auc_random"]),
            "random_insertion_auc": summary(result["insertion_auc_random"]),
            "deletion_gain": summary(result["deletion_gain"]), "insertion_gain": summary(result["insertion_gain"]),
            "score": summary(result.get("score")),
            "curves": {"fraction": curves.get("fraction"), "deletion": curves.get("deletion"),
                       "insertion": curves.get("insertion"), "random_deletion": curves.get("deletion_random"),
                       "random_insertion": curves.get("insertion_random"),
                       "controls": curves.get("controls")} if curves else None}


def randomization_section(result: dict) -> dict:
    """The cascade per stage beside the edge control; ``passed`` is filled from the gate's verdict."""
    from audit.quality.randomization import SIMILARITIES
    from audit.stages.quality import randomization_similarity

    stages = []
    for name in result.get("order", []):
        stage = result["stages"][name]
        row = {"layer": name, **{k: (summary(stage[k]) or {}).get("mean") for k in SIMILARITIES if k in stage}}
        row["controls"] = {c: {k: (summary(v[name][k]) or {}).get("mean") for k in SIMILARITIES}
                           for c, v in (result.get("controls") or {}).items() if name in v}
        stages.append(row)
    best = result.get("max_similarity", {}).get("spearman")
    final = result.get("final_similarity", {}).get("spearman")
    return {"stages": stages, "max_similarity": None if best is None else float(best),
            "final_similarity": None if final is None else float(final),
            "gate_stage": result.get("gate_stage"), "gate_similarity": randomization_similarity(result),
            "gate_similarities": to_jsonable(result.get("gate_similarity")),
            "control_gate_similarity": to_jsonable(result.get("control_gate_similarity")), "passed": None}


def localization_section(result: dict | None) -> dict | None:
    if result is None:
        return None
    return {"energy_pointing": summary(result.get("energy_pointing")), "hit_rate": summary(result.get("pointing_game")),
            "auprc": summary(result.get("auprc")), "outside_brain": summary(result.get("outside_brain")),
            "n_evaluated": result.get("n_evaluated"), "n_empty_masks": result.get("n_excluded_empty_mask"),
            "selection": to_jsonable(result.get("selection")), "brain_source": result.get("brain_source")}


def prior_section(run) -> dict:
    """The mask-free localisation: registration to the template, and the map's mass inside the AD prior."""
    result = run.prior_localization
    return {"applicable": result["applicable"], "reason": result.get("reason"),
            "energy": summary(result.get("energy")), "prior_area_share": result.get("prior_area_share"),
            "regions": result.get("regions"),
            "selection": to_jsonable(result["selection"]), "registration": to_jsonable(run.registration_summary)}


def leakage_section(report: dict) -> dict:
    overlap = report.get("subject_overlap") or {}
    n_overlap = sum((v.get("count", 0) if isinstance(v, dict) else len(v)) for v in overlap.values()) \
        if isinstance(overlap, dict) else int(overlap or 0)
    by_class = report.get("rate_by_class") or {}
    if any(isinstance(v, dict) for v in by_class.values()):  # {pair: {class: rate}} -> worst pair per class
        flat: dict = {}
        for rates in by_class.values():
            for name, rate in (rates or {}).items():
                if rate is not None:
                    flat[name] = max(flat.get(name, 0.0), float(rate))
        by_class = flat
    return {**{k: report.get(k) for k in ("rate", "max_rate", "subjects_known", "pairs", "grid_png")},
            "rate_by_class": by_class, "subject_overlap": n_overlap,
            "n_cross_label_pairs": int(report.get("n_cross_label_pairs") or 0)}


def change_section(run) -> dict:
    """Deltas with CIs, McNemar, changed predictions, and side-by-side Grad-CAMs where the maps differ most."""
    from audit.explain.overlay import overlay
    from audit.stages.change import change_examples

    change = to_jsonable(run.change)
    base = run.baseline
    examples, mean_ssim = change_examples(run)
    if mean_ssim is not None:
        change["map_ssim_mean"] = mean_ssim
    change["examples"] = [
        {**{k: e[k] for k in ("path", "ssim", "true", "candidate", "baseline")},
         "original": Artefact(f"change/{e['index']:05d}_original.png", e["image"]),
         "candidate_map": Artefact(f"change/{e['index']:05d}_candidate.png", overlay(e["image"], e["candidate_map"])),
         "baseline_map": Artefact(f"change/{e['index']:05d}_baseline.png", overlay(e["image"], e["baseline_map"]))}
        for e in examples]
    change["baseline_model"] = {"path": str(base.model_path), "sha256": base.model_sha256}
    return change


# ------------------------------------------------------------------- gallery and sample
def gallery_section(run) -> list[dict]:
    """Per class, up to k correct and k misclassified slices with Grad-CAM, Grad-CAM++ and IG overlays."""
    from audit.explain.overlay import overlay
    from audit.stages.explanations import gallery

    items = []
    for item in run.timed("gallery", lambda: gallery(run)):
        stem, base = f"gallery/{item['true']}_{item['index']:05d}", item["image"]
        items.append({"class": item["true"], "correct": item["correct"], "true": item["true"],
                      "predicted": item["predicted"], "probability": item["probability"], "path": item["path"],
                      "original": Artefact(f"{stem}_original.png", base),
                      "gradcam": Artefact(f"{stem}_gradcam.png", overlay(base, item["gradcam"])),
                      "gradcam_pp": Artefact(f"{stem}_gradcampp.png", overlay(base, item["gradcam_pp"])),
                      "ig": Artefact(f"{stem}_ig.png", overlay(base, visible(item["ig"])))})
    return items


def visible(heatmap: np.ndarray, percentile: float = 99.0) -> np.ndarray:
    """A map rescaled for the eye: values at or above its ``percentile`` of non-zero pixels are full scale.

    IG's attribution sits on few pixels, so a max-scaled overlay is nearly blank; only the picture changes,
    never a figure."""
    heatmap = np.asarray(heatmap, dtype=np.float32)
    positive = heatmap[heatmap > 0]
    if not positive.size:
        return heatmap
    top = float(np.percentile(positive, percentile))
    return np.clip(heatmap / top, 0.0, 1.0) if top > 0 else heatmap


def heatmap_sample_section(run) -> Artefact:
    """The cross-version drift sample (``alzaudit drift``) as an ``.npz`` artefact."""
    from audit.stages.explanations import heatmap_sample

    return Artefact("heatmap_sample.npz", arrays=heatmap_sample(run))


# ---------------------------------------------------------------------- model and data
def model_section(run) -> dict:
    import json

    from model.network import backbone_layer

    info: dict[str, Any] = {"path": str(run.model_path.resolve()), "sha256": None, "classes": list(run.classes)}
    try:
        info["sha256"] = run.model_sha256
        model = run.model
        backbone = backbone_layer(model)
        info.update(architecture=model.name, backbone=backbone.name if backbone is not None else None,
                    n_params=int(model.count_params()), input_shape=[run.contract.height, run.contract.width,
                                                                     run.contract.channels],
                    input_scale=int(run.contract.input_scale), layer=run.layer,
                    summary=layer_summary(model))
    except AlzAuditError as exc:
        run.errors["model"] = str(exc)
    config = run.model_path.parent / "config.json"
    if config.is_file():
        try:
            info["training"] = json.loads(config.read_text()).get("config")
        except (OSError, json.JSONDecodeError):
            info["training"] = None
        curves = run.model_path.parent / "training_curves.png"
        if curves.is_file():
            info["training_curves"] = Artefact("training_curves.png", source=curves)
    return info


def layer_summary(model) -> str:
    rows = []
    for layer in model.layers:
        try:
            shape = tuple(layer.output.shape)
        except Exception:
            shape = "?"
        rows.append(f"{layer.name:<22} {type(layer).__name__:<22} {str(shape):<22} {layer.count_params():>10,}")
    return "\n".join(rows)


def data_section(run) -> dict:
    from audit.stages.data import split_grouping
    from model.summary import summary_dict

    try:
        manifest = run.manifest
    except AlzAuditError as exc:
        run.errors["data"] = str(exc)
        return {"path": str(run.data or run.model_path), "split": run.config.split, "counts": {}}
    info = summary_dict(manifest)
    not_estimable = (run.performance.get("not_estimable") if run.has("performance") else None) or []
    overlap = run.train_overlap if run.has("train_overlap") else None
    given = manifest.root if run.data is None else run.data if not isinstance(run.data, Manifest) else run.data.root
    return {"path": str(Path(given).resolve()),
            "split_source": run.split_source.to_dict(),
            "train_overlap": None if overlap is None else {k: overlap[k] for k in ("count", "n_evaluated",
                                                                                 "n_training", "run_manifest")},
            "split_grouping": split_grouping(manifest),
            "manifest_sha256": manifest.content_hash(), "layout": manifest.layout, "split": run.config.split,
            "counts": info["counts"], "subjects": info["subjects"], "subjects_known": info["subjects_known"],
            "synthetic": any(s.extra.get("synthetic") in ("1", 1, True) for s in manifest.samples[:50]),
            "has_masks": manifest.has_masks, "skipped": info["skipped"][:200],
            "warnings": info["warnings"] + run.split_source.warnings,
            "not_estimable": not_estimable}
