"""The audit on several GPUs or hosts: a ``tf.distribute`` strategy and the heavy arrays computed under it.

Why: predictions, Grad-CAM over a whole split and Integrated Gradients rows (image x alpha) are the
audit's GPU-bound work, and each row is independent of the others, so a batch can be split across
replicas and gathered back in order with results equal to one device's (measured: within 1e-5, see
``tests/test_distribute.py``). Everything else an audit computes (control maps, SSIM, bootstrap CIs,
leakage hashes) is NumPy/SciPy/OpenCV on the host CPU and is not distributed.

Use::

    strategy = get_strategy("mirrored")          # before TensorFlow starts, for "multiworker"
    model = load_model("model.keras", strategy)   # variables mirrored on every replica
    probs = predict(model, images, strategy=strategy)
    maps = gradcam(model, images, targets, strategy=strategy)
    ig = integrated_gradients(model, images, targets, strategy=strategy, tolerance=0.05)

``batch_size`` stays per replica, so a batch that fits one device fits each device. The functions are
the ordinary explainers (``audit.explain``) and ``model.evaluate.predict`` with ``strategy`` passed
through; ``strategy=None`` is the unchanged single-device path. On several workers every worker must
make the same calls on the same arrays (each computes the inputs itself; only the chief should write).
"""
from __future__ import annotations

import os

from audit.explain.gradcam import class_activation_maps, gradcam, gradcam_plus_plus
from audit.explain.ig import IGResult, integrated_gradients
from model.distribute import (STRATEGIES, STRATEGY_HELP, describe, get_strategy, is_chief, kind, remove_write_dir,
                              replicas, tf_config, write_dir)
from model.evaluate import predict

__all__ = [
    "IGResult", "STRATEGIES", "STRATEGY_HELP", "class_activation_maps", "describe", "get_strategy", "gradcam",
    "gradcam_plus_plus", "integrated_gradients", "is_chief", "kind", "load_model", "predict", "remove_write_dir",
    "replicas", "tf_config", "write_dir",
]


def load_model(path: str | os.PathLike, strategy=None, *, unsafe: bool = False):
    """``model.network.load_model`` inside ``strategy.scope()``, so every replica holds its own copy of the
    weights (a model loaded outside the scope still works, but replicas on other GPUs then read the
    weights across devices at every step)."""
    from model.network import load_model as load

    if strategy is None:
        return load(path, unsafe=unsafe)
    with strategy.scope():
        return load(path, unsafe=unsafe)

