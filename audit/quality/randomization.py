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

from audit.quality.base import (CITES, MetricResult, as_images, as_maps, centred_ranks, map_in_threads,
                                normalize_maps, spearman_from_ranks, ssim_pairs)
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


# "conv5_block3" -> "conv5": ResNet-style names carry their stage before "_block".
_STAGE_OF_BLOCK = re.compile(r"^(.+?)_block_?\d+[a-z]?$")


def _is_head(group: _Group) -> bool:
    """A head unit has no convolution kernel (rank-4 weights): dense layers, their norms and biases."""
    return not any(len(v.shape) == 4 for layer in group.layers for v in layer.weights)


def _stage_key(label: str) -> str:
    head, _, name = label.rpartition("/")
    match = _STAGE_OF_BLOCK.match(name)
    return f"{head}/{match.group(1)}" if head and match else (match.group(1) if match else label)


def backbone_stages(groups: list[_Group]) -> tuple[list[list[_Group]], int]:
    """Cascade stages, output first, and how many of them are head units.

    Each head unit (no convolution kernel, before the first one) is its own stage; below it, units of one
    backbone stage (``conv5_block1..3`` -> ``conv5``; ``block4`` alone) are re-initialised together, and
    other units (a stem conv) are a stage each. This is the granularity at which Adebayo et al.'s cascade
    is read: "head", then "head + conv5", "head + conv5 + conv4", ...
    """
    n_head = 0
    while n_head < len(groups) and _is_head(groups[n_head]):
        n_head += 1
    stages: list[list[_Group]] = [[g] for g in groups[:n_head]]
    previous = None
    for group in groups[n_head:]:
        key = _stage_key(group.label)
        if key == previous and key != group.label:
            stages[-1].append(group)
        else:
            stages.append([group])
        previous = key
    return stages, n_head


def gate_stage_index(n_stages: int, n_head: int, fraction: float = 0.5) -> int:
    """Index of the stage the sanity check is judged at: the head plus the top ``fraction`` of the
    backbone's stages re-initialised (at least one backbone stage when there is one)."""
    n_backbone = n_stages - n_head
    if n_backbone <= 0:
        return n_stages - 1
    return n_head - 1 + max(1, int(np.ceil(fraction * n_backbone)))


def _stage_label(stage: list[_Group]) -> str:
    if len(stage) == 1:
        return stage[0].label
    return _stage_key(stage[-1].label)


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


def hog_descriptors(maps: np.ndarray) -> list[np.ndarray]:
    """Each map's HOG descriptor (9 orientations, cells of a sixteenth of the side, 2x2 blocks)."""
    from skimage.feature import hog

    maps = as_maps(maps)
    cell = max(2, min(maps.shape[1:]) // 16)
    return map_in_threads(lambda m: hog(m, orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(2, 2),
                                        feature_vector=True), maps)


def hog_similarity(a: np.ndarray, b: np.ndarray, a_descriptors: list[np.ndarray] | None = None) -> np.ndarray:
    """Pearson correlation of the HOG descriptors of each pair of maps (Adebayo et al. 2018), shape (N,).

    HOG compares the maps' edge structure rather than their pixel ranks; two constant maps are
    identical (1.0), a constant against a varying map shares nothing (0.0). ``a_descriptors``:
    ``hog_descriptors(a)`` when the caller already has them.
    """
    first = hog_descriptors(a) if a_descriptors is None else a_descriptors
    second = hog_descriptors(b)
    out = np.empty(len(second), dtype=np.float64)
    for i, (ha, hb) in enumerate(zip(first, second)):
        sa, sb = ha.std(), hb.std()
        if sa == 0 or sb == 0:
            out[i] = 1.0 if sa == sb else 0.0
        else:
            out[i] = float(np.clip(np.mean((ha - ha.mean()) * (hb - hb.mean())) / (sa * sb), -1.0, 1.0))
    return out


SIMILARITIES = ("spearman", "spearman_signed", "ssim", "hog")


@dataclass(frozen=True)
class SimilarityReference:
    """The maps every cascade stage is compared with, with their ranks and HOG descriptors worked out once
    (not once per stage)."""

    maps: np.ndarray
    signed: np.ndarray
    ranks: tuple
    signed_ranks: tuple
    hog: list


def similarity_reference(original: np.ndarray, original_signed: np.ndarray) -> SimilarityReference:
    return SimilarityReference(original, original_signed, centred_ranks(original), centred_ranks(original_signed),
                               hog_descriptors(original))


def map_similarities(original: np.ndarray, maps: np.ndarray, original_signed: np.ndarray,
                     signed: np.ndarray, reference: SimilarityReference | None = None) -> dict[str, MetricResult]:
    """Adebayo et al.'s four similarities: Spearman of |maps| and of signed maps, SSIM and HOG.
    ``reference``: ``similarity_reference(original, original_signed)``, when comparing it many times."""
    if reference is not None and (reference.maps is not original or reference.signed is not original_signed):
        raise ValueError("map_similarities: reference was built from other maps")
    ref = reference or similarity_reference(original, original_signed)
    cites = [CITES["adebayo2018"], CITES["arun2021"]]
    return {
        "spearman": MetricResult("randomization_spearman", spearman_from_ranks(ref.ranks, centred_ranks(maps)),
                                 False, cites),
        "spearman_signed": MetricResult("randomization_spearman_signed",
                                        spearman_from_ranks(ref.signed_ranks, centred_ranks(signed)), False, cites),
        "ssim": MetricResult("randomization_ssim", ssim_pairs(ref.maps, maps), False, cites + [CITES["wang2004"]]),
        "hog": MetricResult("randomization_hog", hog_similarity(ref.maps, maps, ref.hog), False, cites),
    }


def _explain(explainer: Explainer, model: Any, images: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(|map| scaled to [0, 1], the signed map as the explainer returned it)."""
    raw = np.nan_to_num(as_maps(explainer(model, images, targets)))
    return normalize_maps(np.abs(raw)), raw


def _run(model: Any, explainer: Explainer, images: np.ndarray, targets: np.ndarray, *, n_stages: int | None,
         seed: int, original_maps: np.ndarray | None, cascading: bool,
         control_explainers: dict[str, Explainer] | None = None, gate_fraction: float = 0.5) -> dict[str, Any]:
    x = as_images(images)
    if len(x) == 0:
        raise AlzAuditError("randomization: no images given")
    tgt = np.asarray(targets, dtype=np.int64).reshape(len(x))
    if not weighted_layers(model):
        raise AlzAuditError("randomization: the model has no weights to re-initialise")
    if original_maps is None:
        original, original_signed = _explain(explainer, model, x, tgt)
    else:
        original_signed = np.nan_to_num(as_maps(original_maps))
        original = normalize_maps(np.abs(original_signed))
    controls = control_explainers or {}
    reference = similarity_reference(original, original_signed)
    control_reference = {name: similarity_reference(*_explain(fn, model, x, tgt)) for name, fn in controls.items()}

    work = clone_model(model)
    cloned = work is not None
    snapshot = model.get_weights()
    if work is None:  # fall back to randomizing the caller's model and restoring it afterwards
        work = model
    groups = randomization_groups(work)  # the clone's own layers
    if n_stages is None:
        stages, n_head = backbone_stages(groups)
    else:
        stages, n_head = _stages(groups, n_stages), min(1, len(groups))
    gate_index = gate_stage_index(len(stages), n_head, gate_fraction)
    result: dict[str, Any] = {"mode": "cascading" if cascading else "independent", "cloned": cloned,
                              "stages": {}, "order": [], "controls": {name: {} for name in controls}}
    last_control: dict[str, tuple] = {}
    try:
        for i, stage in enumerate(stages):
            if not cascading:
                work.set_weights(snapshot)
            paths = [p for g in stage for p in g.paths]
            reinitialize([lay for g in stage for lay in g.layers], np.random.default_rng([seed, i]))
            maps, signed = _explain(explainer, work, x, tgt)
            label = _stage_label(stage)
            result["stages"][label] = {**map_similarities(original, maps, original_signed, signed, reference),
                                       "layers": paths}
            result["order"].append(label)
            for name, fn in controls.items():  # weight-insensitive controls through the same cascade
                c_maps, c_signed = _explain(fn, work, x, tgt)
                c_ref, seen = control_reference[name], last_control.get(name)
                if seen is not None and np.array_equal(seen[0], c_maps) and np.array_equal(seen[1], c_signed):
                    figures = seen[2]  # the stage before's very maps (an edge map ignores the weights): same figures
                else:
                    figures = map_similarities(c_ref.maps, c_maps, c_ref.signed, c_signed, c_ref)
                last_control[name] = (c_maps, c_signed, figures)
                result["controls"][name][label] = figures
    finally:
        if not cloned:
            model.set_weights(snapshot)
    result["max_similarity"] = _aggregate(result, max)
    last = result["stages"][result["order"][-1]]
    result["final_similarity"] = {k: last[k].mean for k in SIMILARITIES}
    result["gate_stage"] = result["order"][gate_index]
    result["n_head_stages"] = n_head
    judged = result["order"][gate_index:]
    result["gate_similarity"] = {k: max(result["stages"][s][k].mean for s in judged) for k in SIMILARITIES}
    result["control_gate_similarity"] = {
        name: {k: max(per_stage[s][k].mean for s in judged) for k in SIMILARITIES}
        for name, per_stage in result["controls"].items()}
    return result


def _aggregate(result: dict[str, Any], pick: Callable) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in SIMILARITIES:
        label = pick(result["order"], key=lambda s: result["stages"][s][key].mean)
        out[key] = result["stages"][label][key].mean
        out[f"{key}_stage"] = label
    return out


def cascading_randomization(model: Any, explainer: Explainer, images: np.ndarray, targets: np.ndarray, *,
                            n_stages: int | None = None, seed: int = 0, original_maps: np.ndarray | None = None,
                            control_explainers: dict[str, Explainer] | None = None,
                            gate_fraction: float = 0.5) -> dict[str, Any]:
    """Re-initialise a clone's weights cumulatively from the head down, comparing maps at each stage.

    Maps are always explained for the ORIGINAL ``targets``. Default stages: each head unit, then the
    backbone's stages (``backbone_stages``); ``n_stages=k`` instead takes the top ``k-1`` units one by one
    and everything below as a last stage. Similarities per stage: ``spearman`` (of |maps|),
    ``spearman_signed``, ``ssim`` and ``hog`` (MetricResults, lower better). The check is judged at
    ``gate_stage`` (head + the top ``gate_fraction`` of backbone stages): ``gate_similarity`` is the
    highest mean similarity at that stage or any later one, so a map that only changes once the whole
    network is random fails. ``control_explainers`` (e.g. an edge map, which ignores the weights) run
    through the same cascade: ``controls`` / ``control_gate_similarity`` show the test's power.

    Returns ``{"mode", "cloned", "order", "stages": {name: {<similarities>, "layers"}}, "controls",
    "max_similarity", "final_similarity", "gate_stage", "gate_similarity", "control_gate_similarity",
    "n_head_stages"}``.
    """
    return _run(model, explainer, images, targets, n_stages=n_stages, seed=seed, original_maps=original_maps,
                cascading=True, control_explainers=control_explainers, gate_fraction=gate_fraction)


def independent_randomization(model: Any, explainer: Explainer, images: np.ndarray, targets: np.ndarray, *,
                              n_stages: int | None = None, seed: int = 0,
                              original_maps: np.ndarray | None = None,
                              control_explainers: dict[str, Explainer] | None = None) -> dict[str, Any]:
    """Like :func:`cascading_randomization`, but each stage re-initialises only its own units."""
    return _run(model, explainer, images, targets, n_stages=n_stages, seed=seed, original_maps=original_maps,
                cascading=False, control_explainers=control_explainers)


def passes_sanity(result: dict[str, Any], max_similarity: float = 0.5, *, metric: str = "spearman",
                  which: str = "max") -> bool:
    """True when the maps changed enough: the (max, final or gate) mean similarity is at most the threshold."""
    if which not in ("max", "final", "gate"):
        raise AlzAuditError(f"passes_sanity: which must be 'max', 'final' or 'gate', got {which!r}")
    value = result[f"{which}_similarity"][metric]
    return value is not None and value <= max_similarity
