"""Explanations of the classifier's decisions: Grad-CAM, Grad-CAM++, Integrated Gradients, SmoothGrad.

All take raw-intensity images ``(N, H, W, 1)`` and return float32 heatmaps ``(N, H, W)`` in [0, 1] at
input resolution (a constant map -> zeros); they work on flat, nested-backbone, Sequential, reloaded
``.keras`` and ``mixed_float16`` models alike.
"""
from __future__ import annotations

from audit.explain.gradcam import class_activation_maps, gradcam, gradcam_plus_plus
from audit.explain.ig import IGResult, integrated_gradients
from audit.explain.layers import candidate_layers, default_layer, find_layer, inline_nested, predict
from audit.explain.normalise import normalise_maps
from audit.explain.overlay import overlay
from audit.explain.smoothgrad import saliency, smoothgrad

__all__ = [
    "IGResult", "candidate_layers", "class_activation_maps", "default_layer", "find_layer", "gradcam",
    "gradcam_plus_plus", "inline_nested", "integrated_gradients", "normalise_maps", "overlay", "predict",
    "saliency", "smoothgrad",
]
