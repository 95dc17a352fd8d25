"""The classifier: a backbone nested as one layer, inside a model that takes raw grayscale pixels.

Input contract (DESIGN.md): float32 ``(N, H, W, 1)`` raw intensities in [0, 255]. Everything else the
backbone needs (1 -> 3 channels, its own ``preprocess_input``) lives inside the saved model, so a
``.keras`` file is self-contained and explainers see raw pixels. Only built-in Keras layers are used, so
models load with ``safe_mode=True``.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

from model.classes import CLASSES
from model.errors import AlzAuditError, ParameterError

BACKBONES = ("resnet50", "small")
# Small datasets give few steps per epoch; Keras' default 0.99 leaves BatchNorm's moving statistics far
# from the batch statistics for many epochs, and validation collapses while training accuracy climbs.
BN_MOMENTUM = 0.9
# ResNet50's ``preprocess_input`` ("caffe" mode): RGB -> BGR, then subtract the ImageNet BGR means.
# The three channels are copies of one grayscale channel, so the flip is a no-op and only the means matter.
_IMAGENET_BGR_MEANS = (103.939, 116.779, 123.68)
IMAGENET_HINT = (
    "download resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 on a machine with internet and pass "
    "its path with --weights PATH (or copy it into ~/.keras/models/), or train from scratch with --weights none")


def build_classifier(backbone: str = "resnet50", weights: str | os.PathLike | None = "imagenet",
                     input_size: int = 224, n_classes: int = len(CLASSES), *, dropout: float = 0.5,
                     seed: int | None = None):
    """ResNet50 (or the small CPU backbone) + GlobalAveragePooling -> Dropout(0.5) -> Dense(softmax).

    ``weights``: ``"imagenet"`` (Keras' own download/cache), ``None`` (random init) or a local weights
    file for the backbone. The backbone is nested as one layer (``"resnet50"`` or ``"small_resnet"``),
    the transfer-learning shape that breaks most public Grad-CAM tools.
    """
    import keras
    from keras import layers

    if backbone not in BACKBONES:
        raise ParameterError("backbone", f"unknown backbone '{backbone}' (choose {', '.join(BACKBONES)})")
    if isinstance(weights, str) and weights.lower() in ("none", ""):
        weights = None
    if input_size < 32:
        raise ParameterError("input_size", f"{input_size} is too small (at least 32)")
    if seed is not None:
        keras.utils.set_random_seed(seed)

    inputs = keras.Input((input_size, input_size, 1), name="image")
    if backbone == "resnet50":
        rgb = layers.Concatenate(name="gray_to_rgb")([inputs, inputs, inputs])
        x = layers.Normalization(mean=list(_IMAGENET_BGR_MEANS), variance=[1.0, 1.0, 1.0],
                                 name="resnet50_preprocess")(rgb)
        net = _resnet50(weights, input_size)
    else:
        if weights not in (None,) and str(weights) != "imagenet":
            _check_weights_file(weights)
        if weights == "imagenet":
            raise ParameterError("weights", "imagenet: the small backbone has no ImageNet weights; use weights none")
        x = layers.Rescaling(1.0 / 255.0, name="scale_01")(inputs)
        net = small_resnet(input_size)
        if weights is not None:
            _load_weights(net, weights)
    x = net(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", dtype="float32", name="predictions")(x)
    model = keras.Model(inputs, outputs, name=f"alzaudit_{backbone}")
    return model


def _resnet50(weights, input_size: int):
    import keras

    if weights is not None and weights != "imagenet":
        _check_weights_file(weights)
    try:
        return keras.applications.ResNet50(include_top=False, weights=weights if weights is None else str(weights),
                                           input_shape=(input_size, input_size, 3))
    except AlzAuditError:
        raise
    except Exception as exc:  # download failure offline, or a weights file of the wrong shape
        if weights == "imagenet":
            raise AlzAuditError(f"could not get the ImageNet weights for ResNet50 ({type(exc).__name__}: {exc}); "
                                f"{IMAGENET_HINT}") from None
        raise AlzAuditError(f"{weights}: not ResNet50 (include_top=False) weights ({type(exc).__name__}: {exc})") from None


def _check_weights_file(weights) -> None:
    path = Path(weights)
    if not path.is_file():
        raise AlzAuditError(f"{path}: weights file not found (give a path, 'imagenet' or 'none')")


def _load_weights(net, weights) -> None:
    try:
        net.load_weights(str(weights))
    except Exception as exc:
        raise AlzAuditError(f"{weights}: could not load weights into the backbone ({type(exc).__name__}: {exc})") from None


def small_resnet(input_size: int = 128, width: int = 32):
    """A compact ResNet-style CNN (~0.6 M parameters) for CPU demos and tests.

    Stem (5x5/2) then four residual stages (widths 32-64-128-128, strides 1-2-2-1); the last 4-D
    output is ``block4_out`` at 1/8 of the input (16x16 at 128²), the default Grad-CAM layer. Keeping
    the last stage at 1/8 rather than 1/16 gives Grad-CAM a grid fine enough to tell the atrophy from
    the background, at the same cost (the last stage is narrower instead).
    """
    import keras
    from keras import layers

    inputs = keras.Input((input_size, input_size, 1), name="small_input")
    x = layers.Conv2D(width, 5, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    for stage, (mult, stride) in enumerate(((1, 1), (2, 2), (4, 2), (4, 1)), start=1):
        x = _residual_block(x, width * mult, stride, f"block{stage}")
    return keras.Model(inputs, x, name="small_resnet")


def _residual_block(x, filters: int, stride: int, name: str):
    from keras import layers

    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_proj")(x)
        shortcut = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_proj_bn")(shortcut)
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn1")(y)
    y = layers.Activation("relu", name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn2")(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def backbone_layer(model):
    """The nested backbone model of a classifier built here (None for other models)."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            return layer
    return None


def load_model(path: str | os.PathLike, *, unsafe: bool = False):
    """Load a Keras model with ``safe_mode=True`` unless ``unsafe``; one-line errors for bad files.

    ``safe_mode`` refuses to deserialise Lambda layers (arbitrary Python bytecode): loading such a file
    runs code from it, so it takes an explicit ``--unsafe-load``.
    """
    path = Path(path)
    if not path.exists():
        raise AlzAuditError(f"{path}: model file not found")
    if path.is_dir():
        raise AlzAuditError(f"{path}: a folder, not a model file (a TF SavedModel is not loadable by Keras 3; "
                            "re-save it as .keras)")
    if path.suffix == ".keras" and not zipfile.is_zipfile(path):
        raise AlzAuditError(f"{path}: not a Keras model file (a .keras file is a zip archive; this one is not)")
    if path.suffix not in (".keras", ".h5", ".hdf5"):
        raise AlzAuditError(f"{path}: unsupported model file type '{path.suffix}' (use .keras or .h5)")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    try:
        return keras.models.load_model(path, compile=False, safe_mode=not unsafe)
    except Exception as exc:
        text = " ".join(str(exc).split())
        if "safe_mode" in text or "Lambda" in text or "lambda" in text:
            raise AlzAuditError(
                f"{path}: the model contains a Lambda layer or custom code, which runs arbitrary Python when "
                "loaded; refusing under safe mode. Pass --unsafe-load only if you trust where the file came from") from None
        saved = saved_keras_version(path)
        if saved and saved != keras.__version__:
            raise AlzAuditError(
                f"{path}: saved with Keras {saved}, which this Keras {keras.__version__} (TensorFlow "
                f"{_tf_version()}) cannot load ({type(exc).__name__}: {text[:200]}); audit it with the Keras/"
                f"TensorFlow it was saved with, or load it there and re-save it, e.g. in an environment with "
                f"keras=={saved}") from None
        if "Could not locate class" in text or "custom" in text.lower():
            raise AlzAuditError(f"{path}: the model uses a custom layer or object that is not registered "
                                f"({text[:300]}); import the code that defines it or re-save with built-in layers") from None
        raise AlzAuditError(f"{path}: could not load the Keras model ({type(exc).__name__}: {text[:300]})") from None


def saved_keras_version(path: str | os.PathLike) -> str | None:
    """The Keras version recorded in a ``.keras`` file's metadata.json (None when absent)."""
    import json

    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("metadata.json")).get("keras_version")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def _tf_version() -> str:
    try:
        import tensorflow as tf

        return tf.__version__
    except ImportError:
        return "not installed"
