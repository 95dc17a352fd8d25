"""A model's input/output contract, read from the model itself plus the options that cannot be.

Models trained here take ``(S, S, 1)`` raw [0, 255] pixels and output the four stages in CLASSES order.
Models trained elsewhere are gated as they are: 1 or 3 input channels and the input size come from the
model; the input scale (255 or 1) and the class order (e.g. Keras' alphabetical directory order) come
from options.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from model.classes import CLASSES, canonical_class
from model.errors import AlzAuditError, ParameterError

ALPHABETICAL_ORDER = tuple(sorted(CLASSES))  # what image_dataset_from_directory gives


@dataclass(frozen=True)
class ModelContract:
    height: int
    width: int
    channels: int
    input_scale: float = 255.0
    classes: tuple[str, ...] = field(default=CLASSES)

    @property
    def to_canonical(self) -> np.ndarray:
        """Column permutation: ``probs_model[:, to_canonical]`` is in CLASSES order."""
        return np.array([self.classes.index(c) for c in CLASSES])

    def model_index(self, canonical_index: np.ndarray) -> np.ndarray:
        """Map canonical class indices to the model's output indices (explainer targets)."""
        order = np.array([self.classes.index(c) for c in CLASSES])
        return order[np.asarray(canonical_index, dtype=int)]

    def prepare(self, gray: np.ndarray) -> np.ndarray:
        """(N, H, W) uint8 slices at the model's size -> float32 model input."""
        x = gray.astype(np.float32)[..., None]
        if self.input_scale != 255.0:
            x = x * (self.input_scale / 255.0)
        if self.channels == 3:
            x = np.repeat(x, 3, axis=-1)
        return x

    def to_dict(self) -> dict:
        return {"input_shape": [self.height, self.width, self.channels], "input_scale": self.input_scale,
                "classes": list(self.classes)}


def parse_classes(text: str | None) -> tuple[str, ...]:
    """``--classes``: ``alphabetical``, ``canonical`` or a comma-separated list of class names/aliases."""
    if not text or text == "canonical":
        return CLASSES
    if text == "alphabetical":
        return ALPHABETICAL_ORDER
    names = [n.strip() for n in text.split(",") if n.strip()]
    mapped = [canonical_class(n) for n in names]
    unknown = [n for n, m in zip(names, mapped) if m is None]
    if unknown:
        raise ParameterError("classes", f"unknown class name(s) {', '.join(unknown)} (known: {', '.join(CLASSES)})")
    if sorted(mapped) != sorted(CLASSES):
        raise ParameterError("classes", f"must name each of the four stages once, got {', '.join(names)}")
    return tuple(mapped)


def read_contract(model, *, input_scale: float = 255.0, classes: tuple[str, ...] = CLASSES,
                  source: str = "model") -> ModelContract:
    """Input size and channels from the model; a clear error when outputs and classes disagree."""
    shape = tuple(model.input_shape) if not isinstance(model.input_shape, list) else tuple(model.input_shape[0])
    if len(shape) != 4:
        raise AlzAuditError(f"{source}: expects input of shape {shape}; an image model needs (H, W, C)")
    _, height, width, channels = shape
    if channels not in (1, 3):
        raise AlzAuditError(f"{source}: input has {channels} channels; only 1 (grayscale) or 3 (RGB) are supported")
    if height is None or width is None:
        raise AlzAuditError(f"{source}: input size is not fixed {shape}; give the model a fixed (H, W)")
    outputs = model.output_shape[-1] if not isinstance(model.output_shape, list) else None
    if outputs != len(classes):
        raise AlzAuditError(f"{source}: the model has {outputs} outputs but {len(classes)} classes were given "
                            f"({', '.join(classes)}); set classes to the model's class order")
    if input_scale not in (1.0, 255.0):
        raise ParameterError("input_scale", f"{input_scale} (use 255 for raw pixels or 1 for [0, 1])")
    return ModelContract(int(height), int(width), int(channels), float(input_scale), tuple(classes))
