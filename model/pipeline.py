"""Images in: decode grayscale, resize to the model's input size, batch, augment the training split.

Slices are decoded once with OpenCV (the same decoder the audit uses, so training and audit see the same
pixels), held in memory as uint8 (34,000 Kaggle slices at 224² are ~1.7 GB), and fed through ``tf.data``
with prefetching. Augmentation follows the reference method: rotation ±15°, shifts 10%, horizontal and
vertical flips, fill "nearest" — on the training split only.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

from model.errors import ParameterError
from model.fileio import read_grayscale
from model.manifest import Manifest, Sample


def load_slice(path, size: tuple[int, int]) -> np.ndarray:
    """One grayscale slice resized to ``size`` = (height, width) with area averaging, uint8."""
    import cv2

    image = read_grayscale(path)
    if image.shape != size:
        interpolation = cv2.INTER_AREA if image.shape[0] >= size[0] else cv2.INTER_LINEAR
        image = cv2.resize(image, (size[1], size[0]), interpolation=interpolation)
    return image


def load_slices(samples: Sequence[Sample] | Manifest, size: tuple[int, int], *, progress: bool = False,
                description: str = "loading slices") -> np.ndarray:
    """All slices as one ``(N, H, W)`` uint8 array; errors name the unreadable file."""
    samples = list(samples)
    out = np.empty((len(samples), *size), dtype=np.uint8)

    def work(i: int) -> None:
        out[i] = load_slice(samples[i].path, size)

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = pool.map(work, range(len(samples)))
        if progress and len(samples) > 200:
            from rich.progress import track

            for _ in track(futures, total=len(samples), description=description, transient=True):
                pass
        else:
            for _ in futures:
                pass
    return out


def load_masks(samples: Sequence[Sample], size: tuple[int, int], column: str = "mask_path") -> np.ndarray | None:
    """Binary masks resized (nearest) to ``size``; None when no sample has one; zeros where missing."""
    import cv2

    paths = [s.mask_path if column == "mask_path" else s.extra.get(column) for s in samples]
    if not any(paths):
        return None
    out = np.zeros((len(samples), *size), dtype=bool)
    for i, path in enumerate(paths):
        if path:
            mask = read_grayscale(path)
            out[i] = cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST) > 127
    return out


FLIPS = ("horizontal_and_vertical", "horizontal", "none")


def augmenter(seed: int = 0, noise: float = 0.0, flip: str = "horizontal_and_vertical", intensity: bool = False):
    """The reference method's augmentation as Keras preprocessing layers (seeded).

    ``noise`` (a fraction of the [0, 255] range, off by default) adds Gaussian noise on top: not in the
    reference method, but it makes predictions robust to the noise the stability check applies.
    ``flip``: the reference method flips both ways; "horizontal" keeps only the left-right mirror, the
    one an axial slice can show (no scanner shows a brain upside down).
    ``intensity``: scanner augmentation, per image: a gamma curve (log-gamma in [-0.3, 0.3], TorchIO's
    RandomGamma default), a gain (log-gain in [-0.2, 0.2]) and a smooth bias field (a 4 x 4 log-gain grid,
    SD 0.1, interpolated): every scan differs in these, so a model trained on few subjects otherwise reads
    the scanner along with the anatomy. All three are multiplicative: the background stays black.
    """
    import keras
    from keras import layers

    import tensorflow as tf

    if flip not in FLIPS:
        raise ParameterError("flip", f"'{flip}' (use {', '.join(FLIPS)})")
    steps = [layers.RandomRotation(15.0 / 360.0, fill_mode="nearest", seed=seed),
             layers.RandomTranslation(0.1, 0.1, fill_mode="nearest", seed=seed + 1)]
    if flip != "none":
        steps.append(layers.RandomFlip(flip, seed=seed + 2))
    geometry = keras.Sequential(steps, name="augmentation")
    if noise <= 0 and not intensity:
        return geometry

    def scanner(x):
        batch = tf.shape(x)[0]
        log_gamma = tf.random.uniform([batch, 1, 1, 1], -0.3, 0.3, seed=seed + 4)
        log_gain = tf.random.uniform([batch, 1, 1, 1], -0.2, 0.2, seed=seed + 5)
        field = tf.image.resize(tf.random.normal([batch, 4, 4, 1], stddev=0.1, seed=seed + 6), tf.shape(x)[1:3],
                                method="bilinear")
        unit = tf.clip_by_value(x / 255.0, 0.0, 1.0)
        return 255.0 * tf.pow(unit, tf.exp(log_gamma)) * tf.exp(log_gain + field)

    def augment(x, training=True):
        x = geometry(x, training=training)
        if intensity:
            x = scanner(x)
        if noise > 0:
            x = x + tf.random.normal(tf.shape(x), stddev=noise * 255.0, seed=seed + 3)
        return x

    return augment


def make_dataset(images: np.ndarray, labels: np.ndarray | None = None, *, batch_size: int = 32,
                 training: bool = False, augment: bool = True, seed: int = 0, input_scale: float = 255.0,
                 channels: int = 1, noise: float = 0.0, rows: int | None = None,
                 flip: str = "horizontal_and_vertical", intensity: bool = False):
    """A batched, prefetched ``tf.data.Dataset`` of float32 ``(B, H, W, C)`` (and int labels).

    ``training`` shuffles (seeded, reshuffled each epoch) and, with ``augment``, applies the augmenter.
    ``rows`` keeps only the first ``rows`` examples of each (shuffled) epoch; None keeps all.
    """
    import tensorflow as tf

    data = (images, labels) if labels is not None else (images,)
    ds = tf.data.Dataset.from_tensor_slices(data)
    if training:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    if rows is not None and rows < len(images):
        ds = ds.take(rows)
    ds = ds.batch(batch_size)
    aug = augmenter(seed, noise, flip, intensity) if (training and augment) else None
    scale = tf.constant(input_scale / 255.0, tf.float32)

    def to_float(x, *rest):
        x = tf.cast(x, tf.float32)[..., None]
        if aug is not None:
            x = tf.clip_by_value(aug(x, training=True), 0.0, 255.0)
        x = x * scale
        if channels == 3:
            x = tf.repeat(x, 3, axis=-1)
        return (x, *rest) if rest else x

    # Random augmentation under op determinism (which training enables) runs sequentially anyway: tf.data
    # rewrites the parallel map into a plain one, and that rewrite logs a spurious C++ error (it copies
    # ParallelMapDatasetV2's use_unbounded_threadpool attribute onto MapDataset). Asking for the sequential
    # map directly gives the same batches without the rewrite.
    parallel = None if aug is not None and _op_determinism_enabled() else tf.data.AUTOTUNE
    ds = ds.map(to_float, num_parallel_calls=parallel)
    return ds.prefetch(tf.data.AUTOTUNE)


def _op_determinism_enabled() -> bool:
    try:
        from tensorflow.python.framework import config

        return bool(config.is_op_determinism_enabled())
    except (ImportError, AttributeError):  # a TensorFlow without it: keep the parallel map
        return False
