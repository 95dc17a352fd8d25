"""Per-image [0, 1] scaling of heatmaps that never divides by zero.

Public toolkits divide by ``max - min`` unguarded, so a blank image (constant map) gives NaN that then
poisons every metric averaged over it. Here a constant map becomes all zeros, and non-finite values are
treated as 0 before scaling.
"""
from __future__ import annotations

import numpy as np

# A map whose range is below this fraction of its magnitude is constant up to float rounding.
_RELATIVE_EPS = 1e-6
_ABSOLUTE_EPS = 1e-12


def normalise_maps(maps: np.ndarray) -> np.ndarray:
    """Min-max scale each map of ``(N, H, W)`` (or one ``(H, W)``) to [0, 1] as float32.

    A constant (or all non-finite) map becomes all zeros, never NaN.
    """
    maps = np.asarray(maps)
    single = maps.ndim == 2
    batch = np.nan_to_num(maps[None] if single else maps, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float64)
    if batch.ndim != 3:
        raise ValueError(f"heatmaps must be (N, H, W) or (H, W), got shape {maps.shape}")
    flat = batch.reshape(len(batch), -1)
    if flat.shape[1] == 0:
        out = np.zeros(batch.shape, np.float32)
        return out[0] if single else out
    low = flat.min(axis=1)
    high = flat.max(axis=1)
    span = high - low
    scale = np.maximum(np.abs(high), np.abs(low))
    flat_ok = span > np.maximum(_RELATIVE_EPS * scale, _ABSOLUTE_EPS)
    safe_span = np.where(flat_ok, span, 1.0)
    out = (batch - low[:, None, None]) / safe_span[:, None, None]
    out = np.where(flat_ok[:, None, None], np.clip(out, 0.0, 1.0), 0.0).astype(np.float32)
    return out[0] if single else out


def normalise_maps_tf(maps):
    """The same scaling inside a TensorFlow graph (float32 ``(N, H, W)``), so compiled explainers return
    finished heatmaps without a second pass over them on the host."""
    import tensorflow as tf

    maps = tf.cast(maps, tf.float32)
    maps = tf.where(tf.math.is_finite(maps), maps, tf.zeros_like(maps))
    low = tf.reduce_min(maps, axis=(1, 2), keepdims=True)
    high = tf.reduce_max(maps, axis=(1, 2), keepdims=True)
    span = high - low
    scale = tf.maximum(tf.abs(high), tf.abs(low))
    flat_ok = span > tf.maximum(_RELATIVE_EPS * scale, _ABSOLUTE_EPS)
    scaled = tf.clip_by_value(tf.math.divide_no_nan(maps - low, tf.where(flat_ok, span, tf.ones_like(span))), 0.0, 1.0)
    return tf.where(flat_ok, scaled, tf.zeros_like(scaled))
