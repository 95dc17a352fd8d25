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

from model.classes import CLASSES, REFERENCE_CLASS
from model.contract import ModelContract, read_contract
from model.errors import AlzAuditError
from model.fileio import atomic_path, atomic_write_bytes
from model.manifest import Manifest


@dataclass
class AuditConfig:
    split: str = "test"
    seed: int = 0
    batch_size: int = 32
    gradcam_images: int = 0          # 0 = all images of the split
    ig_images: int = 64
    ig_steps: int = 128              # fixed intervals, or the most an image may get when ig_tolerance > 0
    ig_tolerance: float = 0.05       # adaptive IG: double each image's intervals (ig_min_steps, 2x, ...) until
                                     # its completeness error is within this; 0 = fixed ig_steps everywhere
    ig_scheme: str = "graded"        # IG nodes (audit.explain.ig.SCHEMES): graded = trapezoid after alpha = t^2
    ig_min_steps: int = 16           # intervals every image starts with when ig_tolerance > 0
    ig_panels: int = 4               # adaptive IG: path pieces refined apart, each by its own exact error
    stability_images: int = 64
    stability_draws: int = 5
    sigmas: tuple = (0.02, 0.05)
    faithfulness_images: int = 64
    faithfulness_steps: int = 20
    randomization_images: int = 32
    randomization_gate_fraction: float = 0.5   # judge the cascade once head + this share of backbone stages are random
    min_mask_share: float = 0.01     # localisation: masks covering less of the brain than this are not evaluated
    budget_minutes: float = 0.0      # > 0: the gate shrinks the sampled stages to fit (audit.plan)
    strategy: str = "auto"           # tf.distribute strategy for the heavy arrays (audit.distribute); not in
                                     # cache keys: distributed arrays equal single-device ones within 1e-5
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
    from audit.binding import file_sha256

    return file_sha256(path)


_FINGERPRINT: tuple | None = None


def software_fingerprint() -> tuple:
    """(TensorFlow, Keras, alzaudit version, hash of alzaudit's own source): part of every cache key, so an
    upgrade or a fix (even without a version bump) recomputes cached arrays instead of reusing them."""
    global _FINGERPRINT
    if _FINGERPRINT is None:
        import keras
        import tensorflow as tf

        try:
            from importlib.metadata import version

            own = version("alzaudit")
        except Exception:  # noqa: BLE001 - running from a source tree
            own = "source"
        digest = hashlib.sha256()
        root = Path(__file__).resolve().parents[1]
        for package in ("audit", "model"):
            for source in sorted((root / package).rglob("*.py")):
                digest.update(source.relative_to(root).as_posix().encode())
                digest.update(source.read_bytes())
        _FINGERPRINT = (tf.__version__, keras.__version__, own, digest.hexdigest()[:16])
    return _FINGERPRINT


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
        self.baseline: AuditRun | None = None  # the model accepted last time (--baseline), same images
        self.plan: dict | None = None           # the cost plan the gate printed (audit.plan)

    def make_plan(self) -> str:
        """Time one batch of each kind of work, fit ``budget_minutes`` if set, and return the plan as text."""
        from dataclasses import asdict

        from audit.plan import fit_budget, measure_costs, plan_stages, plan_table

        costs = measure_costs(self)
        n, n_sigmas = len(self.inputs), len(self.config.sigmas)
        if self.config.budget_minutes > 0:
            self.config = fit_budget(n, self.config, costs, n_sigmas, self.config.budget_minutes)
            if self.baseline is not None:
                self.baseline.config = self.config
        plans = plan_stages(n, self.config, costs, n_sigmas)
        self.plan = {"budget_minutes": self.config.budget_minutes or None,
                     "seconds_per_image": {k: round(v, 5) for k, v in asdict(costs).items()},
                     "stages": [p.to_dict() for p in plans],
                     "estimated_seconds": round(sum(p.seconds for p in plans), 1)}
        text = plan_table(plans)
        if self.baseline is not None:
            text += "\n(x2: the baseline model is audited on the same images)"
        budget = self.config.budget_minutes
        if budget and self.plan["estimated_seconds"] > budget * 60:
            text += (f"\nthe {budget:g}-minute budget cannot be met without going below the minimum samples the "
                     "confidence intervals need; running at the minimum")
        return text

    def with_baseline(self, baseline_path: str | Path, *, unsafe: bool = False) -> "AuditRun":
        """Attach a baseline model audited on exactly this run's split (its arrays cached beside ours)."""
        self.baseline = AuditRun(baseline_path, self.manifest, self.out_dir / "baseline", self.config,
                                 input_scale=self.input_scale, classes=self.classes, unsafe=unsafe)
        self.baseline.contract  # noqa: B018 - load it now: a bad file is a usage error, not a late crash
        return self

    def change_of(self, figure: str) -> dict | None:
        """The paired delta candidate − baseline of one figure (audit.compare), computed once; None when
        there is no baseline or the figure cannot be computed on this data (e.g. no masks)."""
        if self.baseline is None:
            return None
        cache = self.__dict__.setdefault("_changes", {})
        if figure not in cache:
            from audit.compare import compare_runs

            cache[figure] = compare_runs(self, self.baseline, seed=self.config.seed, figures=[figure]).get(figure)
        return cache[figure]

    @property
    def change(self) -> dict | None:
        """Every delta computed so far (the cheap prediction figures always), McNemar and changed predictions."""
        if self.baseline is None:
            return None
        from audit.compare import CHEAP_FIGURES, prediction_changes

        for figure in CHEAP_FIGURES:
            self.change_of(figure)
        out = {k: v for k, v in self.__dict__.get("_changes", {}).items() if v is not None}
        return {**out, **prediction_changes(self, self.baseline)}

    # ------------------------------------------------------------------------------ inputs
    @cached_property
    def model(self):
        if self._model is not None:
            return self._model
        from audit.distribute import load_model

        return load_model(self.model_path, self.strategy, unsafe=self.unsafe)

    @cached_property
    def strategy(self):
        """The tf.distribute strategy of the heavy arrays, or None for today's single-device path."""
        from audit.distribute import get_strategy, kind

        strategy = get_strategy(self.config.strategy)
        return None if kind(strategy) == "one" else strategy

    @cached_property
    def model_sha256(self) -> str:
        return sha256_file(self.model_path)

    @cached_property
    def contract(self) -> ModelContract:
        return read_contract(self.model, input_scale=self.input_scale, classes=self.classes,
                             source=str(self.model_path))

    @cached_property
    def _resolved(self):
        from audit.binding import resolve_data

        return resolve_data(self.model_path, self.data, seed=self.config.seed)

    @cached_property
    def manifest(self) -> Manifest:
        """The manifest evaluated: the model's run split unless --data brings a split (audit.binding)."""
        return self._resolved[0]

    @cached_property
    def split_source(self):
        return self._resolved[1]

    @cached_property
    def train_overlap(self) -> dict | None:
        """Evaluated images the model was trained on, by content hash; None when no run manifest is known."""
        from audit.binding import run_manifest_of, train_overlap

        return self._timed("train_overlap", lambda: train_overlap(self.split, run_manifest_of(self.model_path),
                                                                  self.image_hashes))

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

    @cached_property
    def subjects(self) -> list:
        """Subject ID per image of the split (None where unknown): the bootstrap's resampling unit."""
        return [s.subject_id for s in self.split.samples]

    def control_maps(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Control maps (random smooth, brain-uniform, edge, centre) for images ``idx``; see quality.controls."""
        from audit.quality.controls import control_maps

        brain = self.brain_masks[idx] if self.brain_masks is not None else None
        return control_maps(self.inputs[idx], brain_masks=brain, seed=self.config.seed, keys=idx)

    def compare(self, value, controls: dict, idx: np.ndarray, *, higher_is_better: bool) -> dict:
        """Model vs controls on images ``idx``: skill over the best control with a subject bootstrap CI."""
        from audit.quality.skill import compare_to_controls

        per_sample = lambda r: getattr(r, "per_sample", r)  # noqa: E731 - MetricResult or array
        return compare_to_controls(per_sample(value), {k: per_sample(v) for k, v in controls.items()},
                                   higher_is_better=higher_is_better, subjects=[self.subjects[i] for i in idx],
                                   seed=self.config.seed)

    @cached_property
    def image_hashes(self) -> list[str | None]:
        """SHA-256 of each evaluated file's bytes, read once for the cache keys and the train overlap."""
        from audit.binding import content_hashes

        return content_hashes(s.path for s in self.split.samples)

    @cached_property
    def images_sha256(self) -> str:
        """One hash over the evaluated split: each image's bytes with its label, in order."""
        digest = hashlib.sha256()
        for sample, content in zip(self.split.samples, self.image_hashes):
            digest.update(f"{content}|{sample.label}|{sample.subject_id}\n".encode())
        return digest.hexdigest()

    def _cache_path(self, name: str, *extra) -> Path:
        """Keyed by everything that changes the array: image contents, the model file, the versions of
        TensorFlow, Keras and alzaudit's own code, and the settings — so a cache can never go stale."""
        key = hashlib.sha256("|".join(map(str, (self.model_sha256, self.images_sha256, self.manifest.content_hash(),
                                                self.config.split, self.input_scale, self.classes,
                                                self.contract.height, self.contract.width, self.config.batch_size,
                                                *software_fingerprint(), *extra))).encode()).hexdigest()[:16]
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
            return predict(self.model, self.inputs, batch_size=self.config.batch_size,
                           strategy=self.strategy)[:, self.contract.to_canonical]

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

        return predict(self.model, x, batch_size=max(self.config.batch_size, 64), strategy=self.strategy)

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

        return gradcam(self.model, x, targets, layer=self.layer, batch_size=self.config.batch_size,
                       strategy=self.strategy)

    def explainer(self, model, x, targets=None):
        """Grad-CAM at the audited layer for any model of the same architecture (randomization)."""
        from audit.explain import gradcam

        return gradcam(model, x, targets, layer=self.layer, batch_size=self.config.batch_size,
                       strategy=self.strategy if model is self.model else None)

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

    @property
    def disease_mask(self) -> np.ndarray:
        """True for images whose stage has visible evidence (every stage but REFERENCE_CLASS)."""
        return self.labels != CLASSES.index(REFERENCE_CLASS)

    def _sample_disease(self, n: int, salt: int) -> np.ndarray:
        """Like ``_sample``, over the images of the demented stages only (all images if there are none)."""
        keep = np.flatnonzero(self.disease_mask)
        if not len(keep):
            return self._sample(n, salt)
        return keep[stratified_indices(self.labels[keep], n, self.config.seed + salt)]

    @cached_property
    def ig_indices(self) -> np.ndarray:
        return self._sample(self.config.ig_images, 1)

    @cached_property
    def ig(self):
        from audit.explain import integrated_gradients

        idx = self.ig_indices
        return self._timed("ig", lambda: integrated_gradients(
            self.model, self.inputs[idx], self.model_targets[idx], **self.ig_settings))

    @property
    def ig_settings(self) -> dict:
        """The ``integrated_gradients`` options of every IG the audit computes (the IG stage, the gallery)."""
        config = self.config
        return dict(steps=config.ig_steps, tolerance=config.ig_tolerance or None,
                    min_steps=min(config.ig_min_steps, config.ig_steps), max_steps=config.ig_steps,
                    scheme=config.ig_scheme, panels=config.ig_panels, batch_size=max(config.batch_size, 64),
                    strategy=self.strategy)

    def _gradcam_for(self, idx: np.ndarray) -> np.ndarray:
        position = {int(j): i for i, j in enumerate(self.gradcam_indices)}
        if all(int(j) in position for j in idx):
            return self.gradcam_maps[[position[int(j)] for j in idx]]
        return self.gradcam(self.inputs[idx], self.model_targets[idx])

    @cached_property
    def agreement(self) -> dict:
        """Grad-CAM vs IG, beside each control map vs IG: a map that merely follows the brain or its
        edges agrees with IG too, so only the margin over the best control says the methods concur."""
        from audit.quality.agreement import agreement

        idx = self.ig_indices
        control_maps = self.control_maps(idx)
        brain = control_maps["brain_uniform"]  # correlate inside the brain: brain-vs-background is trivial
        result = dict(agreement(self._gradcam_for(idx), self.ig.heatmaps, region=brain))
        controls = {name: agreement(maps, self.ig.heatmaps, region=brain) for name, maps in control_maps.items()}
        result["controls"] = controls
        result["comparisons"] = {"spearman": self.compare(result["spearman"], {k: v["spearman"] for k, v in
                                                                                controls.items()}, idx,
                                                          higher_is_better=True)}
        return result

    @cached_property
    def stability(self) -> dict:
        from audit.quality.controls import image_only_explainers
        from audit.quality.stability import stability

        idx = self._sample(self.config.stability_images, 2)
        result = self._timed("stability", lambda: stability(
            self.model, self.explainer, self.inputs[idx], sigmas=self.config.sigmas,
            draws=self.config.stability_draws, seed=self.config.seed, targets=self.model_targets[idx],
            clean_maps=self._gradcam_for(idx), predict_fn=self.predict_fn,
            intensity_range=self.contract.input_scale, batch_size=max(self.config.batch_size, 64),
            control_explainers=image_only_explainers(self.config.seed)))
        result["comparisons"] = {key: self.compare(ssim, result["controls"][key], idx, higher_is_better=True)
                                 for key, ssim in result["ssim"].items()}
        result["indices"] = idx
        return result

    @cached_property
    def faithfulness(self) -> dict:
        from audit.quality.faithfulness import faithfulness

        # Deletion and insertion blur what the map ranks first; for the reference stage that *adds*
        # evidence (a blurred brain looks less atrophic), so only the demented stages are measured.
        idx = self._sample_disease(self.config.faithfulness_images, 3)
        result = self._timed("faithfulness", lambda: faithfulness(
            self.logit_fn, self.inputs[idx], self._gradcam_for(idx), self.model_targets[idx],
            steps=self.config.faithfulness_steps, seed=self.config.seed,
            batch_size=max(self.config.batch_size, 64), control_maps=self.control_maps(idx),
            scale_by_spread=True))
        controls = result["controls"]
        result["comparisons"] = {
            curve: self.compare(result[curve], {k: v[curve] for k, v in controls.items()}, idx,
                                higher_is_better=curve != "deletion_auc")
            for curve in ("deletion_auc", "insertion_auc", "score")}
        result["indices"] = idx
        return result

    def logit_fn(self, x: np.ndarray) -> np.ndarray:
        """Model-order class logits for a batch: the score Grad-CAM and IG explain, so faithfulness is
        measured on the same quantity (a saturated softmax hides how early the evidence is removed)."""
        from audit.explain.layers import logit_model, predict

        return predict(logit_model(self.model), x, batch_size=max(self.config.batch_size, 64),
                       strategy=self.strategy)

    @cached_property
    def randomization(self) -> dict:
        from audit.quality.controls import edge_maps
        from audit.quality.randomization import cascading_randomization

        idx = self._sample(self.config.randomization_images, 4)
        return self._timed("randomization", lambda: cascading_randomization(
            self.model, self.explainer, self.inputs[idx], self.model_targets[idx], seed=self.config.seed,
            original_maps=self._gradcam_for(idx), control_explainers={"edge": lambda _m, x, _t: edge_maps(x)},
            gate_fraction=self.config.randomization_gate_fraction))

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
        """Against the atrophy masks, beside the control maps; None without masks.

        Pointing at the evidence is asked only of correctly classified images whose mask covers at least
        ``min_mask_share`` of the brain (a wrong prediction has no reason to point at the atrophy, and a
        few-pixel mask makes every figure noise). The outside-brain mass is taken over every explained image.
        """
        from audit.quality.localization import localization

        if self.masks is None and self.brain_masks is None:
            return None
        idx = self.gradcam_indices
        shape = (len(idx), *self.images.shape[1:])
        masks = self.masks[idx] if self.masks is not None else np.zeros(shape, bool)
        brain = self.brain_masks[idx] if self.brain_masks is not None else None
        maps, controls = self.gradcam_maps, self.control_maps(idx)
        result = localization(maps, np.zeros(shape, bool), brain_masks=brain)  # outside-brain over all images

        pixels = shape[1] * shape[2]
        brain_area = (brain if brain is not None else controls["brain_uniform"] > 0).reshape(len(idx), pixels).sum(axis=1)
        mask_area = (masks > 0.5).reshape(len(idx), pixels).sum(axis=1)
        correct = self.predicted[idx] == self.labels[idx]
        # The reference stage's evidence is the absence of atrophy: its masks mark natural-range changes
        # that are not why a slice is NonDemented, so its slices are not asked to point at them.
        nontrivial = ((mask_area >= self.config.min_mask_share * np.maximum(brain_area, 1)) & (mask_area > 0)
                      & self.disease_mask[idx])
        chosen = np.flatnonzero(correct & nontrivial)
        fallback = None
        if len({self.subjects[i] for i in idx[chosen]}) < 2 or len(chosen) < 10:
            # A model that gets (almost) nothing right cannot be excused from pointing at the evidence.
            fallback = (f"only {len(chosen)} correctly classified slice(s) with a non-trivial mask: every slice "
                        "with a non-trivial mask was evaluated instead")
            chosen = np.flatnonzero(nontrivial)
        inside = localization(maps[chosen], masks[chosen])
        result.update({k: inside[k] for k in ("energy_pointing", "pointing_game", "auprc", "auprc_chance",
                                              "n_evaluated")})
        result["indices"] = [int(i) for i in idx[chosen]]
        result["n_excluded_empty_mask"] = int((mask_area == 0).sum())
        result["selection"] = {"n_explained": int(len(idx)), "n_correct": int(correct.sum()),
                               "n_nontrivial_mask": int(nontrivial.sum()), "n_evaluated": int(len(chosen)),
                               "n_reference_excluded": int((~self.disease_mask[idx]).sum()),
                               "reference_class": REFERENCE_CLASS,
                               "min_mask_share": self.config.min_mask_share, "fallback": fallback}
        control_results = {}
        for name, cmaps in controls.items():
            c_all = localization(cmaps, np.zeros(shape, bool), brain_masks=brain)
            c_in = localization(cmaps[chosen], masks[chosen])
            control_results[name] = {"energy_pointing": c_in["energy_pointing"], "auprc": c_in["auprc"],
                                     "outside_brain": c_all.get("outside_brain")}
        result["controls"] = control_results
        comparisons = {}
        for key, higher in (("energy_pointing", True), ("auprc", True)):
            comparisons[key] = self.compare(result[key], {k: v[key] for k, v in control_results.items()},
                                            idx[chosen], higher_is_better=higher)
        if result.get("outside_brain") is not None:
            has_brain = brain.reshape(len(idx), pixels).any(axis=1)
            comparisons["outside_brain"] = self.compare(
                result["outside_brain"], {k: v["outside_brain"] for k, v in control_results.items()},
                idx[has_brain], higher_is_better=False)
        result["comparisons"] = comparisons
        return result

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
                                                   **{k: _summary(v) for k, v in run.agreement.items()
                                                      if k not in ("controls", "comparisons")}}),
        "stability": safely("stability", lambda: _stability_section(run)),
        "faithfulness": safely("faithfulness", lambda: _faithfulness_section(run.faithfulness)),
        "randomization": safely("randomization", lambda: _randomization_section(run.randomization)),
        "localization": safely("localization", lambda: _localization_section(run.localization)),
        "convergence": safely("convergence", lambda: {"completeness_error": _summary(run.convergence),
                                                      "steps": run.config.ig_steps,
                                                      **_ig_effort(run.ig)}),
        "leakage": safely("leakage", lambda: _leakage_section(run.leakage)),
    }
    figures["controls"] = _controls_section(run, have)
    figures["change"] = None
    if run.baseline is not None:
        try:
            figures["change"] = _change_section(run)
        except AlzAuditError as exc:
            run.errors["change"] = str(exc)
    return figures


def _change_section(run: AuditRun) -> dict:
    """Deltas with CIs, McNemar, changed predictions, and side-by-side Grad-CAMs where the maps differ most."""
    from audit.explain.overlay import overlay
    from audit.quality.base import ssim_pairs

    change = to_jsonable(run.change)
    base = run.baseline
    shared = np.intersect1d(run.gradcam_indices, base.gradcam_indices)
    examples = []
    if len(shared):
        cand_maps, base_maps = run._gradcam_for(shared), base._gradcam_for(shared)
        ssim = ssim_pairs(cand_maps, base_maps)
        for row in np.argsort(ssim)[:4]:
            i = int(shared[row])
            image = run.images[i]
            stem = f"change/{i:05d}"
            examples.append({"path": str(run.split.samples[i].path), "ssim": float(ssim[row]),
                             "true": CLASSES[run.labels[i]], "candidate": CLASSES[run.predicted[i]],
                             "baseline": CLASSES[base.predicted[i]],
                             "original": _write_png(run, f"{stem}_original.png", image),
                             "candidate_map": _write_png(run, f"{stem}_candidate.png", overlay(image, cand_maps[row])),
                             "baseline_map": _write_png(run, f"{stem}_baseline.png", overlay(image, base_maps[row]))})
        change["map_ssim_mean"] = float(np.mean(ssim))
    change["examples"] = examples
    change["baseline_model"] = {"path": str(base.model_path), "sha256": base.model_sha256}
    return change


# figure key in audit.json's "controls" block -> (runner property, path to its comparison)
_COMPARISONS = {
    "localization_energy": ("localization", ("energy_pointing",)),
    "localization_auprc": ("localization", ("auprc",)),
    "outside_brain_mass": ("localization", ("outside_brain",)),
    "deletion_auc": ("faithfulness", ("deletion_auc",)),
    "insertion_auc": ("faithfulness", ("insertion_auc",)),
    "faithfulness_score": ("faithfulness", ("score",)),
    "agreement_spearman": ("agreement", ("spearman",)),
}


def _controls_section(run: AuditRun, have) -> dict | None:
    """Every figure beside its control maps: ``{figure: comparison}`` (audit.quality.skill), for the report.

    Only figures the run computed appear (the gate computes what its checks ask for)."""
    out: dict = {}
    for key, (prop, path) in _COMPARISONS.items():
        if not have(prop) or prop in run.errors:
            continue
        try:
            result = getattr(run, prop)
        except Exception:  # noqa: BLE001 - its own check records the error
            continue
        comparison = (result or {}).get("comparisons", {}).get(path[0]) if isinstance(result, dict) else None
        if comparison is not None:
            out[key] = to_jsonable(comparison)
    if have("stability") and "stability" not in run.errors:
        try:
            for sigma, comparison in run.stability.get("comparisons", {}).items():
                out[f"stability_ssim_{sigma}"] = to_jsonable(comparison)
        except Exception:  # noqa: BLE001
            pass
    return out or None


def _ig_effort(result) -> dict:
    """How many intervals the adaptive IG spent per image, and how many images met the tolerance."""
    used = np.asarray(getattr(result, "steps_used", [result.steps] * len(result.delta)))
    panel_steps = getattr(result, "panel_steps", None)
    return {"tolerance": getattr(result, "tolerance", None), "scheme": getattr(result, "scheme", "trapezoid"),
            "panels": int(panel_steps.shape[1]) if panel_steps is not None else 1,
            "steps_used_mean": float(used.mean()) if used.size else None,
            "steps_used_max": int(used.max()) if used.size else None,
            "gradient_evaluations": int(getattr(result, "gradient_evaluations", (used + 1).sum())),
            "n_converged": int(np.sum(getattr(result, "converged", []))), "n_images": int(len(result.delta))}


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
            "score": _summary(result.get("score")),
            "curves": {"fraction": curves.get("fraction"), "deletion": curves.get("deletion"),
                       "insertion": curves.get("insertion"), "random_deletion": curves.get("deletion_random"),
                       "random_insertion": curves.get("insertion_random"),
                       "controls": curves.get("controls")} if curves else None}


def randomization_similarity(result: dict) -> float | None:
    """The sanity check's figure: the highest mean Spearman |map| similarity at the gate stage (head + the
    top half of the backbone's stages re-initialised) or any later one. After the *whole* cascade any
    gradient method scores ≈ 0.1, so judging there could never fail; at the gate stage an explanation
    that ignores the learned weights (an edge map: ≈ 1.0) still fails."""
    gate = result.get("gate_similarity", {}).get("spearman")
    return None if gate is None else float(gate)


def _randomization_section(result: dict) -> dict:
    from audit.quality.randomization import SIMILARITIES

    stages = []
    for name in result.get("order", []):
        stage = result["stages"][name]
        row = {"layer": name, **{k: (_summary(stage[k]) or {}).get("mean") for k in SIMILARITIES if k in stage}}
        row["controls"] = {c: {k: (_summary(v[name][k]) or {}).get("mean") for k in SIMILARITIES}
                           for c, v in (result.get("controls") or {}).items() if name in v}
        stages.append(row)
    best = result.get("max_similarity", {}).get("spearman")
    final = result.get("final_similarity", {}).get("spearman")
    return {"stages": stages, "max_similarity": None if best is None else float(best),
            "final_similarity": None if final is None else float(final),
            "gate_stage": result.get("gate_stage"), "gate_similarity": randomization_similarity(result),
            "gate_similarities": to_jsonable(result.get("gate_similarity")),
            "control_gate_similarity": to_jsonable(result.get("control_gate_similarity")), "passed": None}


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
    campp = gradcam_plus_plus(run.model, x, targets, layer=run.layer, batch_size=run.config.batch_size,
                              strategy=run.strategy)
    ig = integrated_gradients(run.model, x, targets, **run.ig_settings).heatmaps
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


def split_grouping(manifest: Manifest) -> dict:
    """How the split keeps subjects apart: subjects per split and those found in more than one split."""
    from model.splits import subject_overlap, subjects_by_split

    per_split = subjects_by_split(manifest.samples)
    shared = {pair: len(ids) for pair, ids in subject_overlap(manifest).items()}
    return {"subjects_known": manifest.subjects_known, "subjects_per_split": {k: len(v) for k, v in per_split.items()},
            "shared_subjects": shared, "subject_level": bool(per_split) and not shared}


def data_section(run: AuditRun) -> dict:
    from model.summary import summary_dict

    try:
        manifest = run.manifest
    except AlzAuditError as exc:
        run.errors["data"] = str(exc)
        return {"path": str(run.data or run.model_path), "split": run.config.split, "counts": {}}
    info = summary_dict(manifest)
    not_estimable = (run.performance.get("not_estimable") if "performance" in run.__dict__ else None) or []
    overlap = run.__dict__.get("train_overlap")
    return {"path": str(manifest.root if run.data is None else run.data if not isinstance(run.data, Manifest)
                        else run.data.root),
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
