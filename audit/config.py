"""What one audit computes and how much of it: sample sizes, IG settings, the device strategy.

Settings come from the thresholds file's ``[audit]`` table (``AuditConfig.from_settings``); a budget
(``audit.plan``) returns a new config with smaller samples, never edits one in place.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
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
    ig_min_steps: int = 8            # intervals every image starts with when ig_tolerance > 0 (docs/metrics.md)
    ig_panels: int = 4               # adaptive IG: path pieces refined apart, each by its own exact error
    # 96 slices x 2 noise draws: the SSIM's CI is set by subjects and slices, not by draws (a slice's
    # draw-to-draw variance is a fifth of the between-subject variance or less), so this is narrower than
    # 64 x 5 at 60% of the Grad-CAMs (benchmarks/stability_variance.py, docs/measurements.md).
    stability_images: int = 96
    stability_draws: int = 2
    sigmas: tuple = (0.02, 0.05)
    faithfulness_images: int = 64
    faithfulness_steps: int = 0          # N > 0: N equal steps; 0: the points below
    # Inner points of the deletion/insertion curves (fractions of the pixels moved; 0 and 1 are always there):
    # 42 passes per image instead of 192 at 20 equal steps, skill within 0.001-0.008 of the 20-step figure and
    # CI no wider on five demo-recipe models (benchmarks/faithfulness_variance.py, docs/measurements.md).
    faithfulness_points: tuple = (0.1, 0.2, 0.4, 0.7)
    randomization_images: int = 32
    randomization_gate_fraction: float = 0.5   # judge the cascade once head + this share of backbone stages are random
    min_mask_share: float = 0.01     # localisation: masks covering less of the brain than this are not evaluated
    budget_minutes: float = 0.0      # > 0: the gate shrinks the sampled stages to fit (audit.plan)
    strategy: str = "auto"           # tf.distribute strategy for the heavy arrays (audit.distribute); not in
                                     # cache keys: distributed arrays equal single-device ones within 1e-5
    gallery_per_class: int = 2
    layer: str | None = None
    explainer: str = "gradcam"       # the audited explainer (audit.stages.explanations.EXPLAINERS); "edge" and
                                     # "centre" are reference explainers the gate must fail (its calibration)
    heatmap_sample: int = 32
    cache: bool = True
    progress: bool = True

    @classmethod
    def from_settings(cls, settings: dict, **overrides) -> "AuditConfig":
        known = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()
                 if k in cls.__dataclass_fields__}
        return cls(**{**known, **overrides})

    # The sample sizes recorded in audit.json's run block (what the figures' CIs rest on).
    SAMPLE_SIZE_FIELDS = ("gradcam_images", "ig_images", "ig_steps", "ig_tolerance", "ig_scheme", "ig_min_steps",
                          "ig_panels", "stability_images", "stability_draws", "faithfulness_images",
                          "faithfulness_steps", "faithfulness_points", "randomization_images")

    def faithfulness_fractions(self) -> tuple:
        """Every point of the deletion/insertion curves, 0 and 1 included."""
        if self.faithfulness_steps > 0:
            return tuple(i / self.faithfulness_steps for i in range(self.faithfulness_steps + 1))
        return (0.0, *(float(p) for p in self.faithfulness_points), 1.0)

    def sample_sizes(self) -> dict:
        return {k: getattr(self, k) for k in self.SAMPLE_SIZE_FIELDS}
