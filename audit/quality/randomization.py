"""Model-parameter randomization sanity check (Adebayo et al. 2018), cascading and independent.

An explanation that stays the same when the model's learned weights are replaced by random ones cannot
be explaining the model: it is an edge detector of the input. Weights are re-initialised from the output
backwards, one stage (a head layer, a residual block, a conv group) at a time, on a clone of the model,
and the maps of each randomized model are compared with the original maps. Low similarity passes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from audit.quality.base import CITES, MetricResult, as_images, as_maps, normalize_maps, spearman_rows, ssim_pairs
from model.errors import AlzAuditError

Explainer = Callable[..., np.ndarray]

# "conv5_block3_1_conv" -> "conv5_block3", "block5_conv3" -> "block5", "block_16_project" -> "block_16",
# "block7a_expand_conv" -> "block7a": the unit a residual/conv block is named by.
_BLOCK = re.compile(r"^(.*?block_?\d+[a-z]?)(?=_|$)")
# The Keras attribute holding each variable's initializer.
_INITIALIZER_ATTR = {
    "kernel": "kernel_initializer", "bias": "bias_initializer", "gamma": "gamma_initializer",
    "beta": "beta_initializer", "moving_mean": "moving_mean_initializer",
    "moving_variance": "moving_variance_initializer", "depthwise_kernel": "depthwise_initializer",
    "pointwise_kernel": "pointwise_initializer", "embeddings": "embeddings_initializer",
}
DEFAULT_STAGES = 5


@dataclass
class _Group:
    label: str
    paths: list[str] = field(default_factory=list)
    layers: list[Any] = field(default_factory=list)


def _is_model(layer: Any) -> bool:
    return hasattr(layer, "layers") and isinstance(getattr(layer, "layers"), list)


def weighted_layers(model: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``(path, layer)`` of every layer that owns weights, output first, recursing into nested models."""
    out: list[tuple[str, Any]] = []
    for layer in reversed(model.layers):
        if _is_model(layer):
            out.extend(weighted_layers(layer, f"{prefix}{layer.name}/"))
        elif layer.weights:
            out.append((f"{prefix}{layer.name}", layer))
    return out


def _has_kernel(layer: Any) -> bool:
    return any("kernel" in v.name or "embeddings" in v.name for v in layer.weights)


def randomization_groups(model: Any) -> list[_Group]:
    """Group weighted layers into re-initialisation units, output first.

    Layers named by the same block (``conv5_block3_*``) form one unit; a normalisation layer (no kernel)
    joins the layer or block that feeds it, so a conv and its batch norm are randomized together.
    """
    groups: list[_Group] = []
    by_block: dict[str, _Group] = {}
    pending: list[tuple[str, Any]] = []
    for path, layer in weighted_layers(model):
        head, _, name = path.rpartition("/")
        match = _BLOCK.match(name)
        if match:
            label = f"{head}/{match.group(1)}" if head else match.group(1)
            group = by_block.get(label)
            if group is None:
                group = by_block[label] = _Group(label)
                groups.append(group)
            group.paths += [p for p, _ in pending]  # e.g. a "post_bn" fed by this block
            group.layers += [lay for _, lay in pending]
            pending = []
            group.paths.append(path)
            group.layers.append(layer)
        elif not _has_kernel(layer):
            pending.append((path, layer))
        else:
            members = pending + [(path, layer)]
            groups.append(_Group(path, [p for p, _ in members], [lay for _, lay in members]))
            pending = []
    if pending:
        if groups:
            groups[-1].paths += [p for p, _ in pending]
            groups[-1].layers += [lay for _, lay in pending]
        else:
            groups.append(_Group(pending[-1][0], [p for p, _ in pending], [lay for _, lay in pending]))
    return groups


def _stages(groups: list[_Group], n_stages: int | None) -> list[list[_Group]]:
    """Split groups into stages: the first ``n-1`` groups one by one, then all the rest as the last stage."""
    n = DEFAULT_STAGES if n_stages is None else int(n_stages)
    if n < 1:
        raise AlzAuditError(f"randomization: n_stages must be >= 1, got {n_stages}")
    if n >= len(groups):
        return [[g] for g in groups]
    return [[g] for g in groups[:n - 1]] + [groups[n - 1:]]


def clone_model(model: Any) -> Any | None:
    """An independent copy of ``model`` with the same weights, or None when Keras cannot clone it.

    Layers without weights (Lambda preprocessing, activations) are shared rather than rebuilt, which
    avoids Keras refusing to deserialize Python lambdas; nested models are cloned recursively.
    """
    import keras

    def clone_layer(layer: Any) -> Any:
        if not layer.weights:
            return layer
        return layer.__class__.from_config(layer.get_config())

    try:
        clone = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
        clone.set_weights(model.get_weights())
    except Exception:  # noqa: BLE001 - subclassed or exotic models: the caller falls back to restore
        return None
    return clone


def _initializer(layer: Any, var_name: str, seed: int) -> Any | None:
    attr = _INITIALIZER_ATTR.get(var_name, f"{var_name}_initializer")
    init = getattr(layer, attr, None)
    if init is None or not hasattr(init, "get_config"):
        return None
    config = init.get_config()
    if "seed" in config:
        config["seed"] = seed
    return init.__class__.from_config(config)


def reinitialize(layers: list[Any], rng: np.random.Generator) -> None:
    """Re-initialise the layers' variables in place with each layer's own (seeded) initializer.

    A variable without a known initializer gets a seeded normal with the original values' std
    (absolute values for variances, which must stay positive).
    """
    for layer in layers:
        for var in layer.weights:
            name = var.name.rpartition("/")[2]
            shape = tuple(var.shape)
            init = _initializer(layer, name, int(rng.integers(2**31 - 1)))
            if init is not None:
                value = np.asarray(init(shape, dtype=var.dtype))
            else:
                current = np.asarray(var.numpy() if hasattr(var, "numpy") else var)
                value = rng.normal(0.0, float(current.std()), shape)
                if "variance" in name:
                    value = np.abs(value) + 1e-3
            var.assign(np.asarray(value).astype(str(var.dtype)))


def _similarity(original: np.ndarray, maps: np.ndarray) -> dict[str, MetricResult]:
    cites = [CITES["adebayo2018"], CITES["arun2021"]]
    return {
        "spearman": MetricResult("randomization_spearman", spearman_rows(original, maps), False, cites),
        "ssim": MetricResult("randomization_ssim", ssim_pairs(original, maps), False,
                             cites + [CITES["wang2004"]]),
    }


def _explain(explainer: Explainer, model: Any, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return normalize_maps(np.abs(np.nan_to_num(as_maps(explainer(model, images, targets)))))


def _run(model: Any, explainer: Explainer, images: np.ndarray, targets: np.ndarray, *, n_stages: int | None,
         seed: int, original_maps: np.ndarray | None, cascading: bool) -> dict[str, Any]:
    x = as_images(images)
    if len(x) == 0:
        raise AlzAuditError("randomization: no images given")
    tgt = np.asarray(targets, dtype=np.int64).reshape(len(x))
    if not weighted_layers(model):
        raise AlzAuditError("randomization: the model has no weights to re-initialise")
    original = _explain(explainer, model, x, tgt) if original_maps is None else \
        normalize_maps(np.abs(as_maps(original_maps)))

    work = clone_model(model)
    cloned = work is not None
    snapshot = model.get_weights()
    if work is None:  # fall back to randomizing the caller's model and restoring it afterwards
        work = model
    stages = _stages(randomization_groups(work), n_stages)  # the clone's own layers
    result: dict[str, Any] = {"mode": "cascading" if cascading else "independent", "cloned": cloned,
                              "stages": {}, "order": []}
    try:
        for i, stage in enumerate(stages):
            if not cascading:
                work.set_weights(snapshot)
            paths = [p for g in stage for p in g.paths]
            reinitialize([lay for g in stage for lay in g.layers], np.random.default_rng([seed, i]))
            maps = _explain(explainer, work, x, tgt)
            label = stage[-1].label
            result["stages"][label] = {**_similarity(original, maps), "layers": paths}
            result["order"].append(label)
    finally:
        if not cloned:
            model.set_weights(snapshot)
    result["max_similarity"] = _aggregate(result, max)
    last = result["stages"][result["order"][-1]]
    result["final_similarity"] = {k: last[k].mean for k in ("spearman", "ssim")}
    return result


def _aggregate(result: dict[str, Any], pick: Callable) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("spearman", "ssim"):
        label = pick(result["order"], key=lambda s: result["stages"][s][key].mean)
        out[key] = result["stages"][label][key].mean
        out[f"{key}_stage"] = label
    return out


def cascading_randomization(model: Any, explainer: Explainer, images: np.ndarray, targets: np.ndarray, *,
                            n_stages: int | None = None, seed: int = 0,
                            original_maps: np.ndarray | None = None) -> dict[str, Any]:
    """Re-initialise a clone's weights cumulatively from the head down, comparing maps at each stage.

    Maps are always explained for the ORIGINAL ``targets``. Default stages: the top four units (head
    layer, last blocks) one by one, then everything below as a last stage. Returns ``{"mode", "cloned",
    "order": [stage names], "stages": {name: {"spearman", "ssim": MetricResult (lower better),
    "layers": [paths]}}, "max_similarity": {"spearman", "ssim", "spearman_stage", "ssim_stage"},
    "final_similarity": {"spearman", "ssim"}}``; a stage is named by the last unit it re-initialised.
    """
    return _run(model, explainer, images, targets, n_stages=n_stages, seed=seed, original_maps=original_maps,
                cascading=True)


def independent_randomization(model: Any, explainer: Explainer, images: np.ndarray, targets: np.ndarray, *,
                              n_stages: int | None = None, seed: int = 0,
                              original_maps: np.ndarray | None = None) -> dict[str, Any]:
    """Like :func:`cascading_randomization`, but each stage re-initialises only its own units."""
    return _run(model, explainer, images, targets, n_stages=n_stages, seed=seed, original_maps=original_maps,
                cascading=False)


def passes_sanity(result: dict[str, Any], max_similarity: float = 0.5, *, metric: str = "spearman",
                  which: str = "max") -> bool:
    """True when the maps changed enough: the (max or final) mean similarity is at most the threshold."""
    if which not in ("max", "final"):
        raise AlzAuditError(f"passes_sanity: which must be 'max' or 'final', got {which!r}")
    value = result[f"{which}_similarity"][metric]
    return value is not None and value <= max_similarity
