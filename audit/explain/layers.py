"""Find layers by path through nested models and build the gradient models explainers differentiate.

Why this exists: ``keras.Model(outer.input, backbone.get_layer(name).output)`` raises "Graph
disconnected" when the backbone is nested as one layer, and top-level-only layer scans find no conv
layer at all. Here the outer graph is re-traced with public Keras API (``clone_model`` reusing the
same layer objects, so no weights are copied and later training is seen), calling a nested model
through a two-output twin ``input -> [activation at path, nested output]``. The classifier head's
softmax is bypassed by recomputing its logits from the head's own input; the caller's model is never
mutated. Built models are cached per model object (weakly, so they die with it).
"""
from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from model.errors import AlzAuditError, ParameterError

_CACHE: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()
_CONV_TYPES = ("Conv1D", "Conv2D", "Conv3D", "SeparableConv2D", "DepthwiseConv2D", "Conv2DTranspose")


def cached(model, key: tuple, factory: Callable[[], Any]) -> Any:
    """Memoise ``factory()`` per (model object, key); entries vanish when the model is collected."""
    entry = _CACHE.setdefault(model, {})
    if key not in entry:
        entry[key] = factory()
    return entry[key]


# ---------------------------------------------------------------------------------------------- lookup
def _sublayers(layer) -> list:
    """The layers of a nested Functional/Sequential model (empty for a plain layer)."""
    import keras

    return list(layer.layers) if isinstance(layer, keras.Model) else []


def _output_rank(layer) -> int | None:
    try:
        return len(layer.output.shape)
    except Exception:  # not called yet, or called several times with different ranks
        return None


def iter_layers(model, prefix: str = "") -> list[tuple[str, Any]]:
    """Every layer in forward order as ``(path, layer)``, descending into nested models.

    A nested model appears after its own layers, so "the last match" is the deepest, latest one.
    """
    import keras

    found = []
    for layer in _sublayers(model):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        path = f"{prefix}{layer.name}"
        found.extend(iter_layers(layer, prefix=f"{path}/"))
        found.append((path, layer))
    return found


def candidate_layers(model) -> list[str]:
    """Paths of the layers with a 4-D ``(N, H, W, C)`` output: the ones Grad-CAM can use."""
    return [path for path, layer in iter_layers(model) if _output_rank(layer) == 4]


def _list_for_error(paths: list[str], limit: int = 12) -> str:
    if not paths:
        return "none"
    shown = paths[-limit:]
    more = f"… {len(paths) - limit} earlier, " if len(paths) > limit else ""
    return more + ", ".join(shown)


def find_layer(model, path: str):
    """Resolve ``"outer/inner/layer"`` one model at a time; a one-line error lists candidates."""
    current = model
    parts = [p for p in str(path).split("/") if p]
    if not parts:
        raise ParameterError("layer", f"empty layer path; 4-D layers in {model.name}: "
                            f"{_list_for_error(candidate_layers(model))}")
    for depth, name in enumerate(parts):
        names = [layer.name for layer in _sublayers(current)]
        if name not in names:
            where = "/".join(parts[:depth]) or model.name
            raise AlzAuditError(
                f"--layer: no layer '{name}' in {where} (path '{path}'); 4-D layers you can use: "
                f"{_list_for_error(candidate_layers(model))}")
        current = current.get_layer(name)
        if depth < len(parts) - 1 and not _sublayers(current):
            raise ParameterError("layer", f"'{'/'.join(parts[:depth + 1])}' is a {type(current).__name__}, "
                                f"not a nested model, so '{path}' cannot go inside it")
    return current


def default_layer(model) -> str:
    """The last layer with a 4-D output at or after the last convolution, searched recursively.

    Requiring a convolution keeps preprocessing layers (rescaling, 1 -> 3 channels) from being
    mistaken for a feature map in a model that has no convolutional part.
    """
    layers = iter_layers(model)
    conv_at = [i for i, (_, layer) in enumerate(layers) if type(layer).__name__ in _CONV_TYPES]
    if not conv_at:
        kinds = ", ".join(f"{p} ({type(layer).__name__})" for p, layer in layers[-8:]) or "no layers"
        raise AlzAuditError(f"model {model.name} has no convolutional layer, so Grad-CAM has no feature map to "
                            f"use (its last layers: {kinds}); explain with method 'ig', or pass a 4-D layer as layer")
    # A nested model's output is its last inner layer's: name that layer, not the model.
    four_d = [path for path, layer in layers[conv_at[0]:] if _output_rank(layer) == 4 and not _sublayers(layer)]
    if not four_d:
        raise AlzAuditError(f"model {model.name} has no layer with a 4-D output after its convolutions")
    return four_d[-1]


# ---------------------------------------------------------------------------------------------- head
@dataclass(frozen=True)
class Head:
    """How the class scores relate to the model output.

    ``kind``: ``"dense_softmax"`` (logits recomputed from the Dense input), ``"softmax_layer"``
    (logits = the softmax layer's input), ``"linear"`` (the output already is the logit) or
    ``"output"`` (no softmax to undo, e.g. sigmoid: the output itself is differentiated).
    """

    layer: Any
    kind: str


def _activation_name(layer) -> str:
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", "") if activation is not None else ""


def output_layer(model):
    """The layer that produces the model's (single) output."""
    import keras

    if len(model.outputs) != 1:
        raise AlzAuditError(f"model {model.name} has {len(model.outputs)} outputs; explainers need exactly one")
    history = getattr(model.outputs[0], "_keras_history", None)
    layer = getattr(history, "operation", None)
    if layer is None or isinstance(model, keras.Sequential):
        layer = model.layers[-1]
    return layer


def find_head(model) -> Head:
    """Classify the output layer; warn once when no pre-softmax logit can be derived."""
    import keras

    layer = output_layer(model)
    act = _activation_name(layer)
    if isinstance(layer, keras.layers.Dense) and act == "softmax":
        return Head(layer, "dense_softmax")
    if isinstance(layer, keras.layers.Softmax) or (isinstance(layer, keras.layers.Activation) and act == "softmax"):
        return Head(layer, "softmax_layer")
    if act in ("linear", "") and isinstance(layer, keras.layers.Dense):
        return Head(layer, "linear")
    warnings.warn(f"model {model.name}: output layer '{layer.name}' ({type(layer).__name__}, activation "
                  f"'{act or 'n/a'}') is not a softmax or linear Dense head; explaining its output as-is "
                  "instead of a pre-softmax logit", stacklevel=2)
    return Head(layer, "output")


def _dense_logits_layer(dense):
    """A weight-sharing twin of ``dense`` without its activation, computed in float32."""
    import keras

    class DenseLogits(keras.layers.Layer):
        def __init__(self):
            super().__init__(name=f"{dense.name}_logits", dtype="float32", trainable=False)
            self._source = [dense]  # a list: read the live kernel, don't re-own the layer's weights

        def call(self, x):
            source = self._source[0]
            y = keras.ops.matmul(keras.ops.cast(x, "float32"), keras.ops.cast(source.kernel, "float32"))
            if source.use_bias:
                y = y + keras.ops.cast(source.bias, "float32")
            return y

        def compute_output_shape(self, input_shape):
            return tuple(input_shape[:-1]) + (dense.units,)

    return DenseLogits()


# ---------------------------------------------------------------------------------------------- re-tracing
def _retrace(model, call: Callable):
    """Call ``model``'s own layers on a fresh Input through ``call(layer, *args, **kwargs)``.

    Returns ``(input, output)`` symbolic tensors; layers are reused (shared weights), never copied.
    """
    import keras

    input_shape(model)
    source = model.inputs[0]
    inputs = keras.Input(batch_shape=source.shape, dtype=source.dtype, name=source.name)
    if isinstance(model, keras.Sequential):
        x = inputs
        for layer in model.layers:
            x = call(layer, x)
        return inputs, x
    try:
        clone = keras.models.clone_model(model, input_tensors=_like_inputs(model, inputs),
                                         clone_function=lambda layer: layer, call_function=call)
    except ValueError as exc:
        if "Functional" not in str(exc) and "subclass" not in str(exc):
            raise
        raise AlzAuditError(f"model {model.name} ({type(model).__name__}) is a subclassed model; explainers "
                            "need a Functional or Sequential model") from None
    return inputs, clone.outputs[0]


def _like_inputs(model, tensor):
    """``tensor`` in the structure of ``model.input``: models saved by older Keras (e.g. 3.3) keep a
    one-element list as their input structure, and Keras 3.13 insists the structures match."""
    return [tensor] if isinstance(model.input, (list, tuple)) and not isinstance(tensor, (list, tuple)) else tensor


def _capturing_call(target, rest: list[str], captured: list) -> Callable:
    """A ``call_function`` that records ``target``'s output (or, for a path into ``target``, the
    activation its two-output twin returns) while passing the usual output on."""
    inner = _two_output(target, rest) if rest else None

    def call(layer, *args, **kwargs):
        if layer is target and inner is not None:
            activation, out = inner(*args, **kwargs)
            captured.append(activation)
            return out
        out = layer(*args, **kwargs)
        if layer is target:
            captured.append(out)
        return out

    return call


def _two_output(model, parts: list[str]):
    """``input -> [activation at parts, model output]`` for a (nested) model."""
    import keras

    captured: list = []
    inputs, output = _retrace(model, _capturing_call(model.get_layer(parts[0]), parts[1:], captured))
    return keras.Model(inputs, [captured[-1], output], name=f"{model.name}_with_{parts[-1]}")


def _build(model, parts: list[str] | None):
    """Input -> ([activation at ``parts``,] score) where score is the logit when one can be had."""
    import keras

    head = find_head(model)
    logits_layer = _dense_logits_layer(head.layer) if head.kind == "dense_softmax" else None
    captured: list = []
    scores: list = []
    base = _capturing_call(model.get_layer(parts[0]), parts[1:], captured) if parts else (
        lambda layer, *args, **kwargs: layer(*args, **kwargs))

    def call(layer, *args, **kwargs):
        if layer is head.layer and head.kind in ("dense_softmax", "softmax_layer"):
            scores.append(logits_layer(args[0]) if logits_layer is not None else args[0])
        return base(layer, *args, **kwargs)

    inputs, output = _retrace(model, call)
    score = scores[-1] if scores else output
    outputs = [captured[-1], score] if parts else score
    return keras.Model(inputs, outputs, name=f"{model.name}_explain")


def resolve_layer(model, layer: str | None) -> str:
    """The layer path to use (default search when None), checked to exist and to be 4-D."""
    path = default_layer(model) if layer is None else str(layer).strip("/")
    found = find_layer(model, path)
    if _output_rank(found) not in (4, None):
        raise ParameterError("layer", f"'{path}' has a {_output_rank(found)}-D output; Grad-CAM needs a 4-D "
                            f"(N, H, W, C) layer: {_list_for_error(candidate_layers(model))}")
    return path


def gradient_model(model, layer: str | None = None):
    """``(keras.Model input -> [activations (N,h,w,K), logits (N,C)], layer path)``, built once per model/layer.

    The activations are the exact tensors the logits are computed from, so ``tape.gradient(logit,
    activations)`` works for nested backbones too.
    """
    path = resolve_layer(model, layer)
    built = cached(model, ("gradient", path), lambda: _build(model, path.split("/")))
    return built, path


def logit_model(model):
    """``keras.Model`` input -> class logits (pre-softmax), or the raw output when there is no softmax."""
    return cached(model, ("logits",), lambda: _build(model, None))


def inline_nested(model):
    """A flat twin of ``model``: nested models unrolled into one graph of fresh layers, same weights.

    Each layer is re-created from its config and given a copy of the original's weights, so the twin
    is an ordinary flat model (every layer called once, as public tools expect); used to check that
    nesting a backbone does not change an explanation, and to benchmark both shapes.
    """
    import keras

    copies: list = []

    def call(layer, *args, **kwargs):
        if isinstance(layer, keras.Sequential):
            x = args[0]
            for inner in layer.layers:
                x = call(inner, x)
            return x
        if isinstance(layer, keras.Model):
            produced: dict = {}

            def inner_call(sub, *a, **k):
                produced[id(sub)] = out = call(sub, *a, **k)
                return out

            keras.models.clone_model(layer, input_tensors=_like_inputs(layer, args[0]),
                                     clone_function=lambda same: same, call_function=inner_call)
            return produced[id(output_layer(layer))]
        twin = layer.__class__.from_config(layer.get_config())
        out = twin(*args, **kwargs)
        copies.append((layer, twin))
        return out

    inputs, output = _retrace(model, call)
    flat = keras.Model(inputs, output, name=f"{model.name}_flat")
    for layer, twin in copies:
        twin.set_weights(layer.get_weights())
    return flat


# ---------------------------------------------------------------------------------------------- model contract
def input_shape(model) -> tuple:
    """The model's input shape without the batch axis; one-line error unless it has exactly one input."""
    try:
        inputs = list(model.inputs)
    except (AttributeError, ValueError):  # a subclassed model that was never called symbolically
        inputs = []
    if len(inputs) != 1:
        raise AlzAuditError(f"model {getattr(model, 'name', model)} has {len(inputs) or 'no symbolic'} inputs; "
                            "explainers need a Functional or Sequential model with exactly one image input")
    return tuple(inputs[0].shape[1:])


def check_images(model, images) -> np.ndarray:
    """Images as float32 ``(N, H, W, C)`` matching the model input; one-line errors otherwise.

    ``(N, H, W)`` gains the channel axis when the model takes one channel; a single ``(H, W, C)``
    image is not guessed at (pass a batch of one).
    """
    array = np.asarray(images, dtype=np.float32)
    expected = input_shape(model)
    if array.ndim == len(expected) and expected and expected[-1] == 1:
        array = array[..., None]
    if array.ndim != len(expected) + 1:
        raise AlzAuditError(f"images: expected a batch shaped (N, {', '.join(str(d) for d in expected)}), "
                            f"got shape {array.shape}")
    for got, want in zip(array.shape[1:], expected, strict=True):
        if want is not None and got != want:
            raise AlzAuditError(f"images: shape {array.shape[1:]} does not match the model input {expected}")
    if array.shape[0] == 0:
        raise AlzAuditError("images: empty batch")
    if not np.isfinite(array).all():
        raise AlzAuditError("images: contain NaN or infinite values")
    return array


def check_targets(targets, n_images: int, n_classes: int) -> np.ndarray:
    """Target classes as int32 ``(N,)``; -1 means "the predicted class" (``targets=None``)."""
    if targets is None:
        return np.full(n_images, -1, np.int32)
    array = np.asarray(targets)
    if array.ndim == 0:
        array = np.full(n_images, int(array))
    if array.shape != (n_images,) or not np.issubdtype(array.dtype, np.integer):
        raise AlzAuditError(f"targets: expected None, one class index or {n_images} integer class indices, "
                            f"got {np.asarray(targets).dtype} of shape {np.asarray(targets).shape}")
    if array.min() < 0 or array.max() >= n_classes:
        raise AlzAuditError(f"targets: class indices must be in 0..{n_classes - 1}, got {array.min()}..{array.max()}")
    return array.astype(np.int32)


def n_outputs(model) -> int:
    return int(model.outputs[0].shape[-1])


def predict(model, images, *, batch_size: int = 32, strategy=None) -> np.ndarray:
    """Model outputs (probabilities for a softmax head) as float32 ``(N, C)``, one compiled call per batch.

    ``model.predict`` carries per-call overhead; a cached ``tf.function`` does not. ``strategy`` (a
    ``tf.distribute.Strategy``) splits each batch across its replicas, ``batch_size`` images per replica,
    rows returned in order; ``None`` runs on one device as before.
    """
    import tensorflow as tf

    images = check_images(model, images)

    def factory():
        spec = tf.TensorSpec((None,) + input_shape(model), tf.float32)
        ref = weakref.ref(model)  # the cache value must not keep its own key alive

        @tf.function(autograph=False, input_signature=[spec])
        def forward(x):
            return tf.cast(ref()(x, training=False), tf.float32)

        return forward

    forward = cached(model, ("predict",), factory)
    if strategy is not None:
        from model.distribute import distributed, global_batch

        twin = distributed(forward, forward, strategy, 1)
        step = global_batch(batch_size, strategy)
        out = [twin(images[i:i + step])[0].numpy() for i in range(0, len(images), step)]
        return np.concatenate(out, axis=0)
    out = [forward(tf.constant(images[i:i + batch_size])).numpy() for i in range(0, len(images), batch_size)]
    return np.concatenate(out, axis=0)
