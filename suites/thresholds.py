"""Load and validate the gate's TOML: a typo or a wrong type is an error, never a silently skipped check."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from model.errors import AlzAuditError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEVICE_KINDS = ("cpu", "gpu", "mps")
# section -> key -> kind: "rule" (one {min|max}), "by_sigma", "by_device", "ig_scheme" (a name in
# audit.explain.ig.SCHEMES), or a Python type for settings.
SCHEMA: dict[str, dict[str, object]] = {
    "gate": {"fail_on_warn": bool},
    "performance": {k: "rule" for k in ("accuracy", "balanced_accuracy", "macro_f1", "per_class_recall", "ece")},
    "data": {k: "rule" for k in ("leakage_rate", "subject_overlap", "class_coverage", "unreadable_fraction",
                                 "train_overlap")},
    "explanations": {k: "rule" for k in ("agreement_spearman", "faithfulness_deletion_gain",
                                         "faithfulness_insertion_gain", "faithfulness_score",
                                         "randomization_max_similarity", "ig_completeness_error",
                                         "localization_energy", "localization_auprc", "outside_brain_mass",
                                         "prior_localization")},
    "stability": {"ssim": "by_sigma", "max_flip_rate": "rule"},
    "throughput": {"inference": "by_device", "gradcam": "by_device"},
    "drift": {k: "rule" for k in ("prediction_agreement", "max_probability_difference", "heatmap_ssim",
                                  "changed_verdicts")},
    "change": {k: "change" for k in ("accuracy", "balanced_accuracy", "per_class_recall", "ece",
                                     "localization_energy", "localization_auprc", "faithfulness_score",
                                     "agreement_spearman", "stability_ssim")},
    "audit": {"gradcam_images": int, "ig_images": int, "ig_steps": int, "stability_images": int,
              "stability_draws": int, "faithfulness_images": int, "faithfulness_steps": int,
              "faithfulness_points": "fractions",
              "randomization_images": int, "gallery_per_class": int, "batch_size": int,
              "ig_scheme": "ig_scheme", "ig_min_steps": int, "ig_panels": int,
              "randomization_gate_fraction": "share", "min_mask_share": "share", "ig_tolerance": "share",
              "budget_minutes": float, "explainer": "explainer"},
}


# Checks whose figure is also computed for the control maps, so a rule may judge skill over them.
SKILL_CHECKS = frozenset({
    "explanations.agreement_spearman", "explanations.faithfulness_deletion_gain",
    "explanations.faithfulness_insertion_gain", "explanations.faithfulness_score",
    "explanations.localization_energy",
    "explanations.localization_auprc", "explanations.outside_brain_mass", "explanations.prior_localization",
    "stability.ssim"})


def sigma_id(sigma) -> str:
    """Check-id segment of a noise level: 0.02 -> ``sigma_0_02``."""
    return "sigma_" + f"{float(sigma):g}".replace(".", "_").replace("-", "m")


@dataclass(frozen=True)
class Rule:
    """One threshold. ``basis="value"`` judges the figure itself; ``basis="skill"`` (``{ skill_min = X }``)
    judges the lower 95% bound of the figure's skill over the best control map (audit.quality.skill)."""

    threshold: float
    direction: str      # "min" | "max"
    severity: str       # "fail" | "warn"
    basis: str = "value"  # "value" | "skill" | "delta" (candidate - baseline, judged on its CI bound)

    def passes(self, value: float) -> bool:
        return value >= self.threshold if self.direction == "min" else value <= self.threshold


class Thresholds:
    """The parsed file: rules by check id (``"performance.accuracy"``, ``"stability.ssim.sigma_0_02"``,
    ``"throughput.inference.cpu"``) and the audit settings."""

    def __init__(self, path: str | Path, raw: dict):
        self.path = Path(path)
        self.raw = raw
        self.rules: dict[str, Rule] = {}
        self.settings: dict = dict(raw.get("audit", {}))
        self.fail_on_warn = bool(raw.get("gate", {}).get("fail_on_warn", False))
        for section, keys in raw.items():
            for key, value in keys.items():
                kind = SCHEMA[section][key]
                if kind == "rule":
                    self.rules[f"{section}.{key}"] = self._rule(f"{section}.{key}", value)
                elif kind == "change":
                    self.rules[f"{section}.{key}"] = self._change_rule(f"{section}.{key}", value)
                elif kind == "by_sigma":
                    for sigma, rule in value.items():
                        self.rules[f"{section}.{key}.{sigma_id(sigma)}"] = self._rule(f"{section}.{key}.{sigma}", rule)
                elif kind == "by_device":
                    for device, rule in value.items():
                        self.rules[f"{section}.{key}.{device}"] = self._rule(f"{section}.{key}.{device}", rule)

    @property
    def sigmas(self) -> list[float]:
        return sorted(float(s) for s in self.raw.get("stability", {}).get("ssim", {}))

    def rule(self, check_id: str) -> Rule | None:
        return self.rules.get(check_id)

    def _change_rule(self, where: str, value) -> Rule:
        """``{ min_delta = X }``: the CI's lower bound of candidate − baseline must be >= X (not worse by more
        than -X, with confidence); ``{ max_delta = X }``: its upper bound must be <= X (for lower-is-better)."""
        key, threshold, severity = self._parse(where, value, ("min_delta", "max_delta"), "{ min_delta = -0.01 }")
        return Rule(threshold, key.split("_")[0], severity, "delta")

    def _rule(self, where: str, value) -> Rule:
        key, threshold, severity = self._parse(where, value, ("min", "max", "skill_min"), "{ min = 0.8 }")
        if key == "skill_min":
            if ".".join(where.split(".")[:2]) not in SKILL_CHECKS:
                raise AlzAuditError(f"{self.path}: '{where}' has no controls to measure skill against; use min/max "
                                    f"(skill_min works for: {', '.join(sorted(SKILL_CHECKS))})")
            return Rule(threshold, "min", severity, "skill")
        return Rule(threshold, key, severity)

    def _parse(self, where: str, value, keys: tuple[str, ...], example: str) -> tuple[str, float, str]:
        """(the one bound key given, its number, severity) of a rule table; one clear error otherwise."""
        if not isinstance(value, dict):
            raise AlzAuditError(f"{self.path}: '{where}' must be a table like {example}, got {value!r}")
        bounds = [k for k in keys if k in value]
        extra = set(value) - {*keys, "severity"}
        if len(bounds) != 1 or extra:
            raise AlzAuditError(f"{self.path}: '{where}' needs exactly one of {'/'.join(keys)} (and optionally "
                                f"severity), got keys {', '.join(sorted(value))}")
        threshold = value[bounds[0]]
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise AlzAuditError(f"{self.path}: '{where}.{bounds[0]}' must be a number, got {threshold!r}")
        severity = value.get("severity", "fail")
        if severity not in ("fail", "warn"):
            raise AlzAuditError(f"{self.path}: '{where}.severity' must be \"fail\" or \"warn\", got {severity!r}")
        return bounds[0], float(threshold), severity


def load_thresholds(path: str | Path | None = None) -> Thresholds:
    from suites import DEFAULT_THRESHOLDS

    path = Path(path) if path else DEFAULT_THRESHOLDS
    if not path.is_file():
        raise AlzAuditError(f"{path}: thresholds file not found")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise AlzAuditError(f"{path}: not valid TOML ({exc})") from None
    for section, keys in raw.items():
        if section not in SCHEMA:
            raise AlzAuditError(f"{path}: unknown section [{section}] (known: {', '.join(SCHEMA)})")
        if not isinstance(keys, dict):
            raise AlzAuditError(f"{path}: '{section}' must be a table")
        for key, value in keys.items():
            if key not in SCHEMA[section]:
                raise AlzAuditError(f"{path}: unknown key '{section}.{key}' "
                                    f"(known in [{section}]: {', '.join(SCHEMA[section])})")
            kind = SCHEMA[section][key]
            if isinstance(kind, type):
                allowed = (int, float) if kind is float else kind
                if not isinstance(value, allowed) or (kind in (int, float) and isinstance(value, bool)):
                    raise AlzAuditError(f"{path}: '{section}.{key}' must be {kind.__name__}, got {value!r}")
                if kind is float and value < 0:
                    raise AlzAuditError(f"{path}: '{section}.{key}' must be >= 0, got {value}")
            elif kind == "share":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                    raise AlzAuditError(f"{path}: '{section}.{key}' must be a share in [0, 1], got {value!r}")
                if kind is int and value < 0:
                    raise AlzAuditError(f"{path}: '{section}.{key}' must be >= 0, got {value}")
            elif kind == "fractions":
                if (not isinstance(value, list) or not value
                        or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value)
                        or any(not 0.0 < v < 1.0 for v in value) or sorted(set(value)) != value):
                    raise AlzAuditError(f"{path}: '{section}.{key}' must be increasing fractions strictly between 0 "
                                        f"and 1, got {value!r}")
            elif kind == "ig_scheme":
                from audit.explain.ig import SCHEMES

                if not isinstance(value, str) or value not in SCHEMES:
                    raise AlzAuditError(f"{path}: '{section}.{key}' must be one of {', '.join(SCHEMES)}, got {value!r}")
            elif kind == "explainer":
                from audit.stages.explanations import EXPLAINERS

                if not isinstance(value, str) or value not in EXPLAINERS:
                    raise AlzAuditError(f"{path}: '{section}.{key}' must be one of {', '.join(EXPLAINERS)}, got {value!r}")
            elif kind == "by_sigma":
                if not isinstance(value, dict):
                    raise AlzAuditError(f"{path}: '{section}.{key}' must map noise levels to rules")
                for sigma in value:
                    try:
                        ok = 0.0 <= float(sigma) <= 1.0
                    except ValueError:
                        ok = False
                    if not ok:
                        raise AlzAuditError(f"{path}: '{section}.{key}': noise level '{sigma}' must be a number in [0, 1]")
            elif kind == "by_device":
                if not isinstance(value, dict) or set(value) - set(DEVICE_KINDS):
                    raise AlzAuditError(f"{path}: '{section}.{key}' must map device kinds "
                                        f"({', '.join(DEVICE_KINDS)}) to rules")
    return Thresholds(path, raw)
