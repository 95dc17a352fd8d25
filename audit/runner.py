"""The audit runner: predictions and every explanation-quality figure over one split, computed lazily.

Each figure is a cached property, so the gate computes only what its checks ask for and a crash in one
stage (recorded as ERROR) leaves the others intact. Expensive arrays (predictions, Grad-CAM maps) are
cached on disk keyed by the model file's and the manifest's hashes. ``run_audit`` computes everything.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from model.classes import CLASSES
from model.contract import ModelContract, read_contract
from model.errors import AlzAuditError
from model.fileio import atomic_path, atomic_write_bytes
from model.manifest import Manifest, load_dataset
from model.splits import ensure_split


@dataclass
class AuditConfig:
    split: str = "test"
    seed: int = 0
    batch_size: int = 32
    gradcam_images: int = 0          # 0 = all images of the split
    ig_images: int = 64
    ig_steps: int = 64
    stability_images: int = 64
    stability_draws: int = 5
    sigmas: tuple = (0.02, 0.05)
    faithfulness_images: int = 64
    faithfulness_steps: int = 20
    randomization_images: int = 32
    gallery_per_class: int = 2
    layer: str | None = None
    heatmap_sample: int = 32
    cache: bool = True
    progress: bool = True

    @classmethod
    def from_settings(cls, settings: dict, **overrides) -> "AuditConfig":
        known = {k: v for k, v in settings.items() if k in cls.__dataclass_fields__}
        return cls(**{**known, **overrides})


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stratified_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` indices (all when n <= 0 or n >= len), proportional per class with at least one of each."""
    labels = np.asarray(labels)
    if n <= 0 or n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.maximum(1, np.floor(counts / counts.sum() * n)).astype(int)
    while quota.sum() > n:
        quota[np.argmax(quota)] -= 1
    leftover = n - quota.sum()
    for i in np.argsort(-counts)[:leftover]:
        quota[i] = min(quota[i] + 1, counts[i])
    picks = [rng.choice(np.flatnonzero(labels == c), size=min(q, cnt), replace=False)
             for c, q, cnt in zip(classes, quota, counts)]
    return np.sort(np.concatenate(picks))


class AuditRun:
    """One audit of one model on one split; figures are computed on first access."""

    def __init__(self, model_path: str | Path, data: str | Path | Manifest, out_dir: str | Path,
                 config: AuditConfig | None = None, *, input_scale: float = 255.0,
                 classes: tuple[str, ...] = CLASSES, unsafe: bool = False, model=None):
        self.model_path = Path(model_path)
        self.data = data
        self.out_dir = Path(out_dir)
        self.config = config or AuditConfig()
        self.input_scale = input_scale
        self.classes = tuple(classes)
        self.unsafe = unsafe
        self._model = model
        self.timings: dict[str, float] = {}
        self.errors: dict[str, str] = {}

    # ------------------------------------------------------------------------------ inputs
    @cached_property
    def model(self):
        if self._model is not None:
            return self._model
        from model.network import load_model

        return load_model(self.model_path, unsafe=self.unsafe)

    @cached_property
    def model_sha256(self) -> str:
        return sha256_file(self.model_path)

    @cached_property
    def contract(self) -> ModelContract:
        return read_contract(self.model, input_scale=self.input_scale, classes=self.classes,
                             source=str(self.model_path))

    @cached_property
    def manifest(self) -> Manifest:
        manifest = self.data if isinstance(self.data, Manifest) else load_dataset(self.data)
        return ensure_split(manifest, seed=self.config.seed)

    @cached_property
    def split(self) -> Manifest:
        return self.manifest.split(self.config.split)

    @cached_property
    def images(self) -> np.ndarray:
        """uint8 ``(N, H, W)`` slices of the split at the model's input size."""
        from model.pipeline import load_slices

        return load_slices(self.split.samples, (self.contract.height, self.contract.width),
                           progress=self.config.progress, description="loading slices")

    @cached_property
    def inputs(self) -> np.ndarray:
        return self.contract.prepare(self.images)

    @cached_property
    def labels(self) -> np.ndarray:
        return np.array(self.split.label_indices())

    def _cache_path(self, name: str, *extra) -> Path:
        key = hashlib.sha256("|".join(map(str, (self.model_sha256, self.manifest.content_hash(),
                                                self.config.split, self.input_scale, self.classes,
                                                *extra))).encode()).hexdigest()[:16]
        return self.out_dir / "cache" / f"{name}-{key}.npy"

    def _timed(self, name: str, compute):
        """Run one figure's computation and record its wall time in ``timings`` (audit.json's run block)."""
        started = time.perf_counter()
        value = compute()
        self.timings[name] = time.perf_counter() - started
        return value

    def _cached_array(self, name: str, compute, *extra) -> np.ndarray:
        path = self._cache_path(name, *extra)
        if self.config.cache and path.is_file():
            return np.load(path)
        value = self._timed(name, compute)
        if self.config.cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as handle:
                    np.save(handle, value)
        return value

    # ------------------------------------------------------------------------- predictions
    @cached_property
    def probs(self) -> np.ndarray:
        """Canonical-order probabilities ``(N, 4)``."""
        from model.evaluate import predict

        def compute():
            return predict(self.model, self.inputs, batch_size=self.config.batch_size)[:, self.contract.to_canonical]

        return self._cached_array("probs", compute)

    @cached_property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @cached_property
    def model_targets(self) -> np.ndarray:
        """Predicted classes as the model's own output indices (what explainers take)."""
        return self.contract.model_index(self.predicted)

    def predict_fn(self, x: np.ndarray) -> np.ndarray:
        """Model-order probabilities for a batch of model inputs (for perturbation metrics)."""
        from model.evaluate import predict

        return predict(self.model, x, batch_size=max(self.config.batch_size, 64))

    @cached_property
    def performance(self) -> dict:
        from model.evaluate import Predictions, evaluate_predictions

        pred = Predictions(paths=[str(s.path) for s in self.split.samples],
                           subjects=[s.subject_id for s in self.split.samples], y_true=self.labels, probs=self.probs)
        return evaluate_predictions(pred, seed=self.config.seed)

    # ------------------------------------------------------------------------ explanations
    @cached_property
    def layer(self) -> str:
        from audit.explain.layers import resolve_layer

        return resolve_layer(self.model, self.config.layer)

    def gradcam(self, x: np.ndarray, targets: np.ndarray) -> np.ndarray:
        from audit.explain import gradcam

        return gradcam(self.model, x, targets, layer=self.layer, batch_size=self.config.batch_size)

    def explainer(self, model, x, targets=None):
        """Grad-CAM at the audited layer for any model of the same architecture (randomization)."""
        from audit.explain import gradcam

        return gradcam(model, x, targets, layer=self.layer, batch_size=self.config.batch_size)

    @cached_property
    def gradcam_indices(self) -> np.ndarray:
        return stratified_indices(self.labels, self.config.gradcam_images, self.config.seed)

    @cached_property
    def gradcam_maps(self) -> np.ndarray:
        """Grad-CAM of the predicted class for ``gradcam_indices`` (all images by default)."""
        idx = self.gradcam_indices
        return self._cached_array("gradcam", lambda: self.gradcam(self.inputs[idx], self.model_targets[idx]),
                                  self.layer, self.config.gradcam_images, self.config.seed)

    def _sample(self, n: int, salt: int) -> np.ndarray:
        return stratified_indices(self.labels, n, self.config.seed + salt)

    @cached_property
    def ig_indices(self) -> np.ndarray:
        return self._sample(self.config.ig_images, 1)

    @cached_property
    def ig(self):
        from audit.explain import integrated_gradients

        idx = self.ig_indices
        return self._timed("ig", lambda: integrated_gradients(
            self.model, self.inputs[idx], self.model_targets[idx], steps=self.config.ig_steps,
            batch_size=max(self.config.batch_size, 64)))

    def _gradcam_for(self, idx: np.ndarray) -> np.ndarray:
        position = {int(j): i for i, j in enumerate(self.gradcam_indices)}
        if all(int(j) in position for j in idx):
            return self.gradcam_maps[[position[int(j)] for j in idx]]
        return self.gradcam(self.inputs[idx], self.model_targets[idx])

    @cached_property
    def agreement(self) -> dict:
        from audit.quality.agreement import agreement

        return agreement(self._gradcam_for(self.ig_indices), self.ig.heatmaps)

    @cached_property
    def stability(self) -> dict:
        from audit.quality.stability import stability

        idx = self._sample(self.config.stability_images, 2)
        return self._timed("stability", lambda: stability(
            self.model, self.explainer, self.inputs[idx], sigmas=self.config.sigmas,
            draws=self.config.stability_draws, seed=self.config.seed, targets=self.model_targets[idx],
            clean_maps=self._gradcam_for(idx), predict_fn=self.predict_fn,
            intensity_range=self.contract.input_scale, batch_size=max(self.config.batch_size, 64)))

    @cached_property
    def faithfulness(self) -> dict:
        from audit.quality.faithfulness import faithfulness

        idx = self._sample(self.config.faithfulness_images, 3)
        return self._timed("faithfulness", lambda: faithfulness(
            self.predict_fn, self.inputs[idx], self._gradcam_for(idx), self.model_targets[idx],
            steps=self.config.faithfulness_steps, seed=self.config.seed,
            batch_size=max(self.config.batch_size, 64)))

    @cached_property
    def randomization(self) -> dict:
        from audit.quality.randomization import cascading_randomization

        idx = self._sample(self.config.randomization_images, 4)
        return self._timed("randomization", lambda: cascading_randomization(
            self.model, self.explainer, self.inputs[idx], self.model_targets[idx], seed=self.config.seed,
            original_maps=self._gradcam_for(idx)))

    @cached_property
    def masks(self) -> np.ndarray | None:
        from model.pipeline import load_masks

        return load_masks(self.split.samples, (self.contract.height, self.contract.width))

    @cached_property
    def brain_masks(self) -> np.ndarray | None:
        from model.pipeline import load_masks

        return load_masks(self.split.samples, (self.contract.height, self.contract.width), column="brain_mask_path")

    @cached_property
    def localization(self) -> dict | None:
        """Against the atrophy masks, for the images explained by Grad-CAM; None without masks."""
        from audit.quality.localization import localization

        if self.masks is None and self.brain_masks is None:
            return None
        idx = self.gradcam_indices
        masks = self.masks[idx] if self.masks is not None else np.zeros((len(idx), *self.images.shape[1:]), bool)
        brain = self.brain_masks[idx] if self.brain_masks is not None else None
        return localization(self.gradcam_maps, masks, brain_masks=brain)

    @cached_property
    def convergence(self):
        from audit.quality.convergence import convergence

        return convergence(self.ig.completeness_error)

    # ---------------------------------------------------------------------------- data
    @cached_property
    def leakage(self) -> dict:
        from audit.leakage import leakage_report

        return self._timed("leakage", lambda: leakage_report(self.manifest, seed=self.config.seed))

    # ------------------------------------------------------------------------- outputs


# --------------------------------------------------------------------------- serialisation
def to_jsonable(value):
    from audit.quality.base import to_jsonable as convert

    return convert(value)


def _summary(result) -> dict | None:
    if result is None:
        return None
    return to_jsonable(result).get("summary") if hasattr(result, "to_dict") else result


def run_audit(model, manifest, config: AuditConfig | None = None, *, out_dir: str | Path = "out/audit",
              model_path: str | Path | None = None, **kwargs) -> dict:
    """Compute predictions and every figure over the split; returns the JSON-ready ``figures`` dict.

    ``model`` is a Keras model or a path; ``manifest`` a Manifest, a manifest CSV or a dataset folder.
    """
    if isinstance(model, (str, Path)):
        run = AuditRun(model, manifest, out_dir, config, **kwargs)
    else:
        if model_path is None:
            raise AlzAuditError("run_audit: give model_path when passing a loaded model (it keys the cache)")
        run = AuditRun(model_path, manifest, out_dir, config, model=model, **kwargs)
    return figures_section(run, compute=True)


def figures_section(run: AuditRun, *, compute: bool = False) -> dict:
    """The ``figures`` block of audit.json from whatever the run has computed (or everything)."""
    def have(name: str) -> bool:
        return compute or name in run.__dict__

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
                                                   **{k: _summary(v) for k, v in run.agreement.items()}}),
        "stability": safely("stability", lambda: _stability_section(run)),
        "faithfulness": safely("faithfulness", lambda: _faithfulness_section(run.faithfulness)),
        "randomization": safely("randomization", lambda: _randomization_section(run.randomization)),
        "localization": safely("localization", lambda: _localization_section(run.localization)),
        "convergence": safely("convergence", lambda: {"completeness_error": _summary(run.convergence),
                                                      "steps": run.config.ig_steps}),
        "leakage": safely("leakage", lambda: _leakage_section(run.leakage)),
    }
    return figures


def _stability_section(run: AuditRun) -> dict:
    from audit.explain.overlay import overlay

    result = run.stability
    out = {}
    for key, ssim in result["ssim"].items():
        example = result.get("examples", {}).get(key)
        paths = None
        if example:
            paths = {}
            images = {"clean": example["image"], "noisy": example["noisy_image"]}
            for name, image in images.items():
                paths[name] = _write_png(run, f"stability/{key}_{name}.png",
                                         _to_uint8(image, run.contract.input_scale))
            for name, source in (("clean_map", "clean"), ("noisy_map", "noisy")):
                base = _to_uint8(images[source], run.contract.input_scale)
                paths[name] = _write_png(run, f"stability/{key}_{name}.png",
                                         overlay(base, np.asarray(example[name], dtype=np.float32)))
        out[key] = {"ssim": _summary(ssim), "flip_rate": float(np.mean(result["flip_rate"][key].per_sample)),
                    "example": paths}
    return out


def _faithfulness_section(result: dict) -> dict:
    curves = result.get("curves") or {}
    return {"deletion_auc": _summary(result["deletion_auc"]), "insertion_auc": _summary(result["insertion_auc"]),
            "random_deletion_auc": _summary(result["deletion_auc_random"]),
            "random_insertion_auc": _summary(result["insertion_auc_random"]),
            "deletion_gain": _summary(result["deletion_gain"]), "insertion_gain": _summary(result["insertion_gain"]),
            "curves": {"fraction": curves.get("fraction"), "deletion": curves.get("deletion"),
                       "insertion": curves.get("insertion"), "random_deletion": curves.get("deletion_random"),
                       "random_insertion": curves.get("insertion_random")} if curves else None}


def randomization_similarity(result: dict) -> float | None:
    """The sanity check's figure: mean Spearman |map| similarity once the cascade has re-initialised
    every stage (Adebayo et al.'s full cascade). The per-stage curve goes into the report: the head-only
    stage stays fairly similar for any CAM method, since the activations themselves are unchanged."""
    final = result.get("final_similarity", {}).get("spearman")
    return None if final is None else float(final)


def _randomization_section(result: dict) -> dict:
    stages = []
    for name in result.get("order", []):
        stage = result["stages"][name]
        stages.append({"layer": name, "spearman": (_summary(stage["spearman"]) or {}).get("mean"),
                       "ssim": (_summary(stage["ssim"]) or {}).get("mean")})
    best = result.get("max_similarity", {}).get("spearman")
    return {"stages": stages, "max_similarity": None if best is None else float(best),
            "final_similarity": randomization_similarity(result), "passed": None}


def _localization_section(result: dict | None) -> dict | None:
    if result is None:
        return None
    return {"energy_pointing": _summary(result.get("energy_pointing")), "hit_rate": _summary(result.get("pointing_game")),
            "auprc": _summary(result.get("auprc")), "outside_brain": _summary(result.get("outside_brain")),
            "n_evaluated": result.get("n_evaluated"), "n_empty_masks": result.get("n_excluded_empty_mask")}


def _leakage_section(report: dict) -> dict:
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


def _to_uint8(image: np.ndarray, scale: float) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3:
        image = image[..., 0]
    return np.clip(image * (255.0 / scale), 0, 255).astype(np.uint8)


def _write_png(run: AuditRun, relative: str, image: np.ndarray) -> str:
    import cv2

    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise AlzAuditError(f"{relative}: could not encode PNG")
    atomic_write_bytes(run.out_dir / relative, data.tobytes())
    return relative


def gallery_section(run: AuditRun) -> list[dict]:
    """Per class, up to k correct and k misclassified slices with Grad-CAM, Grad-CAM++ and IG overlays."""
    from audit.explain import gradcam_plus_plus, integrated_gradients
    from audit.explain.overlay import overlay

    k = run.config.gallery_per_class
    if k <= 0:
        return []
    rng = np.random.default_rng(run.config.seed + 5)
    chosen: list[tuple[int, bool]] = []
    for c in range(len(CLASSES)):
        for correct in (True, False):
            pool = np.flatnonzero((run.labels == c) & ((run.predicted == c) == correct))
            chosen += [(int(i), correct) for i in rng.permutation(pool)[:k]]
    if not chosen:
        return []
    idx = np.array([i for i, _ in chosen])
    x, targets = run.inputs[idx], run.model_targets[idx]
    cam = run._gradcam_for(idx)
    campp = gradcam_plus_plus(run.model, x, targets, layer=run.layer, batch_size=run.config.batch_size)
    ig = integrated_gradients(run.model, x, targets, steps=run.config.ig_steps,
                              batch_size=max(run.config.batch_size, 64)).heatmaps
    items = []
    for row, (i, correct) in enumerate(chosen):
        stem = f"gallery/{CLASSES[run.labels[i]]}_{i:05d}"
        base = run.images[i]
        items.append({
            "class": CLASSES[run.labels[i]], "correct": correct, "true": CLASSES[run.labels[i]],
            "predicted": CLASSES[run.predicted[i]], "probability": float(run.probs[i, run.predicted[i]]),
            "path": str(run.split.samples[i].path),
            "original": _write_png(run, f"{stem}_original.png", base),
            "gradcam": _write_png(run, f"{stem}_gradcam.png", overlay(base, cam[row])),
            "gradcam_pp": _write_png(run, f"{stem}_gradcampp.png", overlay(base, campp[row])),
            "ig": _write_png(run, f"{stem}_ig.png", overlay(base, ig[row])),
        })
    return items


def heatmap_sample(run: AuditRun) -> str:
    """A compact, fixed sample (first N images by path) of probabilities and Grad-CAM maps at 32x32,
    for comparing audits across TensorFlow versions (``alzaudit drift``)."""
    import cv2

    order = np.argsort([str(s.path) for s in run.split.samples])[: run.config.heatmap_sample]
    maps = run._gradcam_for(order)
    small = np.stack([cv2.resize(m, (32, 32), interpolation=cv2.INTER_AREA) for m in maps]).astype(np.float16)
    relative = "heatmap_sample.npz"
    path = run.out_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, paths=np.array([Path(run.split.samples[i].path).name for i in order]),
                            probs=run.probs[order].astype(np.float32), maps=small)
    return relative


def model_section(run: AuditRun) -> dict:
    from model.network import backbone_layer

    info = {"path": str(run.model_path), "sha256": None, "classes": list(run.classes)}
    try:
        info["sha256"] = run.model_sha256
        model = run.model
        backbone = backbone_layer(model)
        info.update(architecture=model.name, backbone=backbone.name if backbone is not None else None,
                    n_params=int(model.count_params()), input_shape=[run.contract.height, run.contract.width,
                                                                     run.contract.channels],
                    input_scale=int(run.contract.input_scale), layer=run.layer,
                    summary=_layer_summary(model))
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
            target = run.out_dir / "training_curves.png"
            atomic_write_bytes(target, curves.read_bytes())
            info["training_curves"] = "training_curves.png"
    return info


def _layer_summary(model) -> str:
    rows = []
    for layer in model.layers:
        try:
            shape = tuple(layer.output.shape)
        except Exception:
            shape = "?"
        rows.append(f"{layer.name:<22} {type(layer).__name__:<22} {str(shape):<22} {layer.count_params():>10,}")
    return "\n".join(rows)


def data_section(run: AuditRun) -> dict:
    from model.summary import summary_dict

    try:
        manifest = run.manifest
    except AlzAuditError as exc:
        run.errors["data"] = str(exc)
        return {"path": str(run.data), "split": run.config.split, "counts": {}}
    info = summary_dict(manifest)
    not_estimable = (run.performance.get("not_estimable") if "performance" in run.__dict__ else None) or []
    return {"path": str(run.data if not isinstance(run.data, Manifest) else run.data.root),
            "manifest_sha256": manifest.content_hash(), "layout": manifest.layout, "split": run.config.split,
            "counts": info["counts"], "subjects": info["subjects"], "subjects_known": info["subjects_known"],
            "synthetic": any(s.extra.get("synthetic") in ("1", 1, True) for s in manifest.samples[:50]),
            "has_masks": manifest.has_masks, "skipped": info["skipped"][:200], "warnings": info["warnings"],
            "not_estimable": not_estimable}
