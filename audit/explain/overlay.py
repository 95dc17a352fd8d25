"""Blend a heatmap over its image for people to look at (RGB uint8, OpenCV colormaps)."""
from __future__ import annotations

import numpy as np

from audit.explain.normalise import normalise_maps
from model.errors import AlzAuditError, ParameterError


def colormap_names() -> list[str]:
    import cv2

    return sorted(name[len("COLORMAP_"):].lower() for name in dir(cv2) if name.startswith("COLORMAP_"))


def overlay(image, heatmap, colormap: str = "jet", alpha: float = 0.4) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)``: the image in gray with ``colormap(heatmap)`` blended at ``alpha``.

    ``image``: ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` raw intensities in [0, 255] (clipped);
    ``heatmap``: ``(h, w)``, scaled to [0, 1] here if it is not already (NaN -> 0) and resized
    bilinearly to the image size when they differ.
    """
    import cv2

    if not 0.0 <= alpha <= 1.0:
        raise ParameterError("alpha", f"must be in [0, 1], got {alpha}")
    code = getattr(cv2, f"COLORMAP_{str(colormap).upper()}", None)
    if code is None:
        raise ParameterError("colormap", f"unknown colormap '{colormap}' (choose {', '.join(colormap_names())})")
    gray = np.asarray(image, dtype=np.float64)
    if gray.ndim == 3 and gray.shape[2] == 1:
        gray = gray[..., 0]
    if gray.ndim == 2:
        rgb = np.repeat(gray[..., None], 3, axis=2)
    elif gray.ndim == 3 and gray.shape[2] == 3:
        rgb = gray
    else:
        raise AlzAuditError(f"overlay: image must be (H, W), (H, W, 1) or (H, W, 3), got {gray.shape}")
    rgb = np.clip(np.nan_to_num(rgb), 0, 255)

    heat = np.asarray(heatmap, dtype=np.float64)
    if heat.ndim == 3 and heat.shape[2] == 1:
        heat = heat[..., 0]
    if heat.ndim != 2:
        raise AlzAuditError(f"overlay: heatmap must be (H, W), got {heat.shape}")
    heat = np.nan_to_num(heat, nan=0.0, posinf=0.0, neginf=0.0)
    if heat.size and (heat.min() < 0 or heat.max() > 1):
        heat = normalise_maps(heat)
    if heat.shape != rgb.shape[:2]:
        heat = cv2.resize(heat.astype(np.float32), (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    colored = cv2.applyColorMap(np.round(np.clip(heat, 0, 1) * 255).astype(np.uint8), code)
    colored = cv2.cvtColor(colored, cv2.COLOR_BGR2RGB).astype(np.float64)
    return np.clip(np.round((1.0 - alpha) * rgb + alpha * colored), 0, 255).astype(np.uint8)
