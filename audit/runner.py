"""The audit runner: one model on one split, every figure computed lazily by the stage that owns it.

``AuditRun`` holds the inputs (model, split, images, masks) and caches what the stages in
``audit/stages/`` return, so the gate computes only what its checks ask for and a crash in one stage
(recorded as ERROR) leaves the others intact. Predictions and Grad-CAM maps are also cached on disk
(``audit.cache``). Nothing here writes audit.json or images: that is ``audit.writer``'s job.
"""
from __future__ import annotations

import time
from functools import cached_property
from pathlib import Path

import numpy as np

from audit.cache import ArrayCache
from audit.config import AuditConfig
from audit.inputs import AuditInputs
from audit.sampling import stratified_indices
from audit.stages import anatomy, change, data, explanations, performance, quality
from model.classes import CLASSES
from model.errors import AlzAuditError
from model.manifest import Manifest

__all__ = ["AuditConfig", "AuditRun", "run_audit"]

# Stages whose sample sizes a plan may change: adopting a plan after one of them ran would mix configs.
_SAMPLED = ("ig", "agreement", "stability", "faithfulness", "randomization", "convergence")


class AuditRun(AuditInputs):
    """One audit of one model on one split; figures are computed on first access."""

    def __init__(self, model_path: str | Path, data: str | Path | Manifest, out_dir: str | Path,
                 config: AuditConfig | None = None, *, input_scale: float = 255.0,
                 classes: tuple[str, ...] = CLASSES, unsafe: bool = False, model=None):
        super().__init__(model_path, data, out_dir, config or AuditConfig(), input_scale=input_scale,
                         classes=classes, unsafe=unsafe, model=model)
        self.timings: dict[str, float] = {}
        self.errors: dict[str, str] = {}
        self.baseline: AuditRun | None = None  # the model accepted last time (--baseline), same images
        self.plan: dict | None = None           # the cost plan the gate printed (audit.plan)
        self._changes: dict[str, dict | None] = {}
        self._one_pass_maps: np.ndarray | None = None  # Grad-CAM maps made by the predictions' pass
        self.ig_probe: tuple | None = None  # (indices, IGResult, settings) the plan computed to learn IG's cost
        self.cache = ArrayCache(self.out_dir / "cache", self._cache_key, enabled=self.config.cache)

    def use_plan(self, plan) -> "AuditRun":
        """Adopt an ``audit.plan.AuditPlan``: its config (for the baseline too) and its record."""
        if any(self.has(name) for name in _SAMPLED):
            raise AlzAuditError("plan: adopt it before any sampled stage runs (its sample sizes would differ)")
        self.config, self.plan = plan.config, plan.record
        if self.baseline is not None:
            self.baseline.config = plan.config
        return self

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
        if figure not in self._changes:
            self._changes[figure] = change.change_of(self, figure)
        return self._changes[figure]

    @property
    def change(self) -> dict | None:
        """Every delta computed so far (the cheap prediction figures always), McNemar and changed predictions."""
        if self.baseline is None:
            return None
        from audit.compare import CHEAP_FIGURES, prediction_changes

        for figure in CHEAP_FIGURES:
            self.change_of(figure)
        out = {k: v for k, v in self._changes.items() if v is not None}
        return {**out, **prediction_changes(self, self.baseline)}

    def _cache_key(self) -> tuple:
        return (self.model_sha256, self.images_sha256, self.manifest.content_hash(), self.config.split,
                self.input_scale, self.classes, self.contract.height, self.contract.width, self.config.batch_size)

    def timed(self, name: str, compute):
        """Run one stage and record its wall time in ``timings`` (audit.json's run block)."""
        started = time.perf_counter()
        value = compute()
        self.timings[name] = time.perf_counter() - started
        return value

    # ------------------------------------------------------------------- model functions
    def predict_fn(self, x: np.ndarray) -> np.ndarray:
        """Model-order probabilities for a batch of model inputs (for perturbation metrics)."""
        from model.evaluate import predict

        return predict(self.model, x, batch_size=max(self.config.batch_size, 64), strategy=self.strategy)

    def logit_fn(self, x: np.ndarray) -> np.ndarray:
        """Model-order class logits: the score Grad-CAM and IG explain, so faithfulness measures the same."""
        from audit.explain.layers import logit_model, predict

        return predict(logit_model(self.model), x, batch_size=max(self.config.batch_size, 64),
                       strategy=self.strategy)

    def gradcam(self, x: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """The audited explainer's maps (Grad-CAM by default; see ``explanations.audited_maps``)."""
        return explanations.audited_maps(self, self.model, x, targets)

    def explainer(self, model, x, targets=None):
        """The audited explainer for any model of the same architecture (randomization)."""
        return explanations.audited_maps(self, model, x, targets)

    def gradcam_for(self, idx: np.ndarray) -> np.ndarray:
        """Grad-CAM maps of images ``idx``, from the cached maps where they cover them."""
        position = {int(j): i for i, j in enumerate(self.gradcam_indices)}
        if all(int(j) in position for j in idx):
            return self.gradcam_maps[[position[int(j)] for j in idx]]
        return self.gradcam(self.inputs[idx], self.model_targets[idx])

    control_maps = quality.control_maps
    compare = quality.compare

    # ------------------------------------------------------------------------ the stages
    @cached_property
    def probs(self) -> np.ndarray:
        """Canonical-order probabilities ``(N, 4)``; with a CAM explainer over every image, from the same
        pass as the maps (``explanations.maps_and_probabilities``)."""
        return self.cache.get("probs", self._predict)

    def _predict(self) -> np.ndarray:
        if explanations.one_pass_predictions(self):
            maps, probs = self.timed("probs_gradcam", lambda: explanations.maps_and_probabilities(self))
            self._one_pass_maps = maps
            return probs
        return self.timed("probs", lambda: performance.probabilities(self))

    @cached_property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @cached_property
    def model_targets(self) -> np.ndarray:
        """Predicted classes as the model's own output indices (what explainers take)."""
        return self.contract.model_index(self.predicted)

    @cached_property
    def performance(self) -> dict:
        return performance.performance(self)

    @cached_property
    def layer(self) -> str:
        from audit.explain.layers import resolve_layer

        return resolve_layer(self.model, self.config.layer)

    @cached_property
    def gradcam_indices(self) -> np.ndarray:
        return stratified_indices(self.labels, self.config.gradcam_images, self.config.seed)

    @cached_property
    def gradcam_maps(self) -> np.ndarray:
        """Grad-CAM of the predicted class for ``gradcam_indices`` (all images by default)."""
        def compute() -> np.ndarray:
            if self._one_pass_maps is not None:  # computed with the predictions
                return self._one_pass_maps
            return self.timed("gradcam", lambda: explanations.gradcam_maps(self))

        return self.cache.get("gradcam", compute,
                              self.layer, self.config.gradcam_images, self.config.seed,
                              *(() if self.config.explainer == "gradcam" else (self.config.explainer,)))

    @cached_property
    def ig_indices(self) -> np.ndarray:
        return explanations.ig_sample(self, self.config)

    @property
    def ig_settings(self) -> dict:
        return explanations.ig_settings(self)

    @cached_property
    def ig(self):
        return self.timed("ig", lambda: explanations.integrated_gradients(self))

    @cached_property
    def agreement(self) -> dict:
        return quality.agreement(self)

    @cached_property
    def stability(self) -> dict:
        return self.timed("stability", lambda: quality.stability(self))

    @cached_property
    def faithfulness(self) -> dict:
        return self.timed("faithfulness", lambda: quality.faithfulness(self))

    @cached_property
    def randomization(self) -> dict:
        return self.timed("randomization", lambda: quality.randomization(self))

    @cached_property
    def localization(self) -> dict | None:
        return quality.localization(self)

    @cached_property
    def registrations(self) -> list:
        return self.timed("registration", lambda: anatomy.registrations(self))

    @cached_property
    def registration_summary(self) -> dict:
        return anatomy.registration_summary(self)

    @cached_property
    def prior_maps(self) -> np.ndarray:
        return anatomy.prior_maps(self)

    @cached_property
    def template_brain(self) -> np.ndarray:
        return anatomy.template_brain(self)

    @cached_property
    def control_brain(self) -> np.ndarray:
        return anatomy.control_brain(self)

    @cached_property
    def prior_localization(self) -> dict:
        return quality.prior_localization(self)

    @cached_property
    def convergence(self):
        return quality.convergence(self)

    @cached_property
    def leakage(self) -> dict:
        return self.timed("leakage", lambda: data.leakage(self))

    @cached_property
    def train_overlap(self) -> dict | None:
        return self.timed("train_overlap", lambda: data.train_overlap(self))


def run_audit(model, manifest, config: AuditConfig | None = None, *, out_dir: str | Path = "out/audit",
              model_path: str | Path | None = None, **kwargs) -> dict:
    """Compute predictions and every figure over the split; returns the JSON-ready ``figures`` dict
    (the stability examples it names are written under ``out_dir``).

    ``model`` is a Keras model or a path; ``manifest`` a Manifest, a manifest CSV or a dataset folder.
    """
    from audit.writer import figures_document

    if isinstance(model, (str, Path)):
        run = AuditRun(model, manifest, out_dir, config, **kwargs)
    else:
        if model_path is None:
            raise AlzAuditError("model_path: give it when passing a loaded model (it keys the cache)")
        run = AuditRun(model_path, manifest, out_dir, config, model=model, **kwargs)
    return figures_document(run, compute=True)

