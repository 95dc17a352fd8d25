"""Augmented twins as augmenters make them: any angle in ±15°, shifts up to 10%, zoom ±10%, flips,
brightness/contrast (clipped to 0..255), JPEG re-encoding, and combinations of all of them.

Shared by tests/test_leakage.py and benchmarks/bench_leakage.py. Half of the geometric twins go through
PIL (``Image.rotate``: nearest-neighbour resampling, black corners — what a user trying it by hand does),
half through OpenCV (bilinear, black or edge-replicated border — Keras' ``fill_mode="nearest"``).
"""
from __future__ import annotations

import cv2
import numpy as np

FAMILIES = ("flip", "rotate", "shift", "zoom", "intensity", "jpeg", "combo")


def random_angle(rng: np.random.Generator, limit: float = 15.0) -> float:
    """Uniform in ±``limit`` degrees, at least 0.5° away from every multiple of 5 (the old variant grid)."""
    while True:
        angle = float(rng.uniform(-limit, limit))
        if abs(angle - 5 * round(angle / 5)) >= 0.5:
            return angle


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    assert ok
    return cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)


def make_twin(image: np.ndarray, rng: np.random.Generator, family: str) -> tuple[np.ndarray, dict]:
    """A twin of the uint8 slice ``image`` from one family; returns it and the parameters drawn."""
    if family not in FAMILIES:
        raise ValueError(f"unknown twin family {family!r}")
    h, w = image.shape
    p = {"family": family, "flip": "", "angle": 0.0, "tx": 0.0, "ty": 0.0, "zoom": 1.0, "gain": 1.0, "bias": 0.0,
         "quality": None}
    if family == "flip":
        p["flip"] = str(rng.choice(["h", "v", "hv"]))
    elif family == "rotate":
        p["angle"] = random_angle(rng)
    elif family == "shift":
        p["tx"], p["ty"] = (float(v) for v in rng.uniform(-0.1, 0.1, 2))
    elif family == "zoom":
        p["zoom"] = float(rng.uniform(0.9, 1.1))
    elif family == "intensity":
        p["gain"], p["bias"] = float(rng.uniform(0.75, 1.3)), float(rng.uniform(-25, 25))
    elif family == "jpeg":
        p["quality"] = int(rng.choice([50, 70, 80, 90]))
    else:  # combo: everything at once
        p["flip"] = str(rng.choice(["", "h", "v", "hv"]))
        p["angle"] = random_angle(rng)
        p["tx"], p["ty"] = (float(v) for v in rng.uniform(-0.1, 0.1, 2))
        p["zoom"] = float(rng.uniform(0.9, 1.1))
        p["gain"], p["bias"] = float(rng.uniform(0.8, 1.2)), float(rng.uniform(-15, 15))
        p["quality"] = 80
    out = np.ascontiguousarray(image)
    if p["flip"] in ("h", "hv"):
        out = out[:, ::-1]
    if p["flip"] in ("v", "hv"):
        out = out[::-1, :]
    out = np.ascontiguousarray(out)
    if p["angle"] or p["tx"] or p["ty"] or p["zoom"] != 1.0:
        p["pil"] = bool(rng.random() < 0.5) and p["zoom"] == 1.0
        if p["pil"]:
            from PIL import Image

            out = np.asarray(Image.fromarray(out).rotate(p["angle"], translate=(p["tx"] * w, p["ty"] * h)))
        else:
            matrix = cv2.getRotationMatrix2D((w / 2, h / 2), p["angle"], p["zoom"])
            matrix[:, 2] += (p["tx"] * w, p["ty"] * h)
            border = cv2.BORDER_CONSTANT if rng.random() < 0.5 else cv2.BORDER_REPLICATE
            out = cv2.warpAffine(out, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=border)
    if p["gain"] != 1.0 or p["bias"]:
        out = np.clip(out.astype(np.float32) * p["gain"] + p["bias"], 0, 255).astype(np.uint8)
    if p["quality"]:
        out = jpeg(out, p["quality"])
    return np.ascontiguousarray(out), p
