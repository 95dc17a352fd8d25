"""Replay adaptive IG rules on a node grid: one gradient pass per model, then any rule for free.

For each model: s(alpha) = sum over pixels of (x - x') * dF/dx and F(alpha) at the nodes of the
trapezoid, graded (alpha = t^2) and alpha = t^3 rules with 128 intervals, on 32 test slices (black
baseline, logit). Every adaptive rule whose nodes lie on that grid (start 16, doubling to 64 or 128,
1..8 panels) is then replayed on the scalars alone: the completeness error of a rule is exact from s
and F, so the replay gives the same gradients per image, steps and errors as ``integrated_gradients``
would (checked against the real runs of ``bench_explainers.py --sections ig-schemes``). It cannot give
maps: that is what the benchmark's map-error column is for.

    .venv/bin/python benchmarks/ig_replay.py out/a/run/model.keras:out/a/data/split_manifest.csv [more ...]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

MAPS = {"trapezoid": (lambda t: t, lambda t: np.ones_like(t)), "graded": (lambda t: t * t, lambda t: 2 * t),
        "t^3": (lambda t: t ** 3, lambda t: 3 * t * t)}
GRID = 128


def grid_pass(model_path: str, data: str, n_images: int, batch: int) -> dict:
    from audit.explain import predict
    from bench_explainers import path_scores, scheme_images

    args = argparse.Namespace(ig_model=model_path, ig_data=data, ig_scheme_images=n_images, batch=batch)
    model, images, _ = scheme_images(args)
    targets = predict(model, images).argmax(axis=1).astype(np.int32)
    t = np.arange(GRID + 1) / GRID
    alphas = np.unique(np.concatenate([phi(t) for phi, _ in MAPS.values()]))
    s, f, _ = path_scores(model, images, targets, alphas, batch)
    return {"alphas": alphas, "s": s, "f": f}


def replay(grid: dict, scheme: str, panels: int, lo: int, hi: int, tol: float) -> tuple[float, float, int]:
    """(gradients per image, worst completeness error, images not within tol) of the adaptive rule."""
    phi, dphi = MAPS[scheme]
    t = np.arange(GRID + 1) / GRID
    at = np.minimum(np.searchsorted(grid["alphas"], phi(t)), len(grid["alphas"]) - 1)
    if not np.array_equal(grid["alphas"][at], phi(t)):
        raise ValueError(f"the grid lacks the {scheme} nodes")
    s, f, weight = grid["s"][:, at], grid["f"][:, at], dphi(t)
    delta = f[:, -1] - f[:, 0]
    width = GRID // panels
    costs, worst, missed = [], 0.0, 0
    for i in range(len(delta)):
        level = [lo // panels] * panels
        while True:
            errors = np.empty(panels)
            for p in range(panels):
                step = width // level[p]
                idx = np.arange(p * width, (p + 1) * width + 1, step)
                g = s[i, idx] * weight[idx]
                errors[p] = step / GRID * (g.sum() - 0.5 * (g[0] + g[-1])) - (f[i, idx[-1]] - f[i, idx[0]])
            total = abs(errors.sum()) / abs(delta[i])
            room = [p for p in range(panels) if level[p] * 2 * panels <= hi]
            if total <= tol or not room:
                break
            pick = [p for p in room if abs(errors[p]) > tol * abs(delta[i]) / panels]
            for p in pick or [max(room, key=lambda p: abs(errors[p]))]:
                level[p] *= 2
        costs.append(sum(level) + 1)
        worst, missed = max(worst, total), missed + (total > tol)
    return float(np.mean(costs)), worst, missed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", help="MODEL.keras:MANIFEST.csv (test slices of the manifest)")
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--tolerance", type=float, default=0.05)
    args = p.parse_args()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    grids = [grid_pass(*spec.rsplit(":", 1), args.images, args.batch) for spec in args.models]
    print(f"adaptive IG replayed, tolerance {args.tolerance:g}, start 16: gradients per image, worst error, "
          f"images not within tolerance; models in the order given")
    for scheme in MAPS:
        for panels in (1, 2, 4, 8):
            for hi in (64, 128):
                cells = [replay(g, scheme, panels, 16, hi, args.tolerance) for g in grids]
                print(f"  {scheme:9s} {panels} panel{'s' if panels > 1 else ' '} <= {hi:3d} | "
                      + " | ".join(f"{c:5.1f} {w:6.2%} {m}" for c, w, m in cells)
                      + f" | mean {np.mean([c for c, _, _ in cells]):.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
