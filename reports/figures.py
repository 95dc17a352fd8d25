"""Matplotlib (Agg) figures drawn from the numbers in audit.json, returned as PNG bytes.

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, never pyplot, so no GUI backend or
global figure state is involved. Each function returns None when its data is missing. Labels come from
audit.json, so ``$`` is escaped (matplotlib would parse it as mathtext) and long names are shortened.
"""
from __future__ import annotations

import functools
import io
import math
from typing import Any, Callable

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from audit.schema_io import CONTROL_NAMES

DPI = 130
WIDE = (6.8, 2.6)      # full text width of an A4 page with 14 mm margins
HALF = (3.35, 2.7)     # two side by side
STYLE = {
    "font.family": "DejaVu Sans", "font.size": 7, "axes.titlesize": 8, "axes.labelsize": 7,
    "legend.fontsize": 6.5, "xtick.labelsize": 6.5, "ytick.labelsize": 6.5, "axes.grid": True,
    "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False, "text.usetex": False,
}


def label(text: Any, width: int = 22) -> str:
    """A safe, short axis/legend label: mathtext disabled by escaping ``$``."""
    text = " ".join(str(text).split())
    if len(text) > width:
        text = text[: width - 1] + "…"
    return text.replace("$", r"\$")


def _floats(values: Any) -> np.ndarray:
    """A float array with None (not computed) as NaN, so lines simply break there."""
    return np.array([math.nan if v is None else float(v) for v in values], dtype=float)


def _figure(draw: Callable[..., Figure | None]) -> Callable[..., bytes | None]:
    """Run ``draw`` under the report style and encode its figure as PNG bytes."""
    @functools.wraps(draw)
    def wrapper(*args: Any, **kwargs: Any) -> bytes | None:
        with matplotlib.rc_context(STYLE):
            fig = draw(*args, **kwargs)
            if fig is None:
                return None
            FigureCanvasAgg(fig)
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=DPI)  # layout already tight: one draw, not two
        return buf.getvalue()
    return wrapper


@_figure
def confusion_figure(confusion: list[list[int]] | None, classes: list[str]) -> Figure | None:
    """Counts and row-normalised (recall) confusion matrices side by side.

    A class absent from the split has a row of zero counts: its normalised row is undefined, so it is
    printed as "—" and the class is labelled "(absent)" rather than shown as a recall of 0.
    """
    if not confusion:
        return None
    counts = np.array(confusion, dtype=float)
    k = counts.shape[0]
    if counts.ndim != 2 or counts.shape != (k, k):
        raise ValueError(f"confusion matrix is {counts.shape}, not square")
    names = [label(c, 16) for c in classes[:k]] + [str(i) for i in range(len(classes), k)]
    rows = counts.sum(axis=1, keepdims=True)
    absent = rows[:, 0] == 0
    row_names = [f"{n} (absent)" if absent[i] else n for i, n in enumerate(names)]
    normed = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    fig = Figure(figsize=(6.8, 3.0))
    axes = fig.subplots(1, 2)
    for ax, matrix, title, fmt in ((axes[0], counts, "Counts", "{:.0f}"),
                                   (axes[1], normed, "Normalised by true class", "{:.2f}")):
        ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(float(matrix.max()), 1e-9))
        ax.grid(False)
        ax.set_title(title)
        ax.set_xticks(range(k), names, rotation=30, ha="right")
        ax.set_yticks(range(k), row_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        top = float(matrix.max()) or 1.0
        for i in range(k):
            for j in range(k):
                undefined = absent[i] and matrix is normed
                ax.text(j, i, "—" if undefined else fmt.format(matrix[i, j]), ha="center", va="center", fontsize=6.5,
                        color="white" if matrix[i, j] > 0.6 * top else "black")
    fig.tight_layout()
    return fig


@_figure
def roc_figure(roc: dict[str, dict[str, Any]] | None) -> Figure | None:
    """One-vs-rest ROC curve per class with its AUC in the legend."""
    if not roc:
        return None
    fig = Figure(figsize=HALF)
    ax = fig.subplots()
    for name, curve in roc.items():
        auc = curve.get("auc")
        text = f"{label(name, 18)} (AUC {auc:.3f})" if isinstance(auc, (int, float)) else label(name, 18)
        fpr, tpr = _floats(curve.get("fpr") or []), _floats(curve.get("tpr") or [])
        n = min(len(fpr), len(tpr))
        ax.plot(fpr[:n], tpr[:n], lw=1.2, label=text)
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate",
           title="ROC (one vs rest)")
    ax.legend(loc="lower right", frameon=False)
    fig.tight_layout()
    return fig


@_figure
def reliability_figure(reliability: dict[str, Any] | None, ece: float | None) -> Figure | None:
    """Reliability diagram: accuracy per confidence bin against the diagonal, with the ECE in the title."""
    if not reliability:
        return None
    conf = _floats(reliability.get("bin_confidence") or [])
    acc = _floats(reliability.get("bin_accuracy") or [])
    # Without counts every bin is drawn; with counts, empty bins are left out.
    count = _floats(reliability.get("bin_count") or [1] * len(conf))
    n = min(len(conf), len(acc), len(count))
    if n == 0:
        return None
    conf, acc, count = conf[:n], acc[:n], count[:n]
    width = 0.9 / n
    fig = Figure(figsize=HALF)
    ax = fig.subplots()
    shown = count > 0
    ax.bar(conf[shown], acc[shown], width=width, color="#4c78a8", edgecolor="white", label="accuracy")
    ax.bar(conf[shown], conf[shown] - acc[shown], bottom=acc[shown], width=width, color="#e45756",
           alpha=0.35, label="gap to confidence")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
    title = "Reliability" + (f" (ECE {ece:.3f})" if isinstance(ece, (int, float)) else "")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="confidence", ylabel="accuracy", title=title)
    ax.legend(loc="upper left", frameon=False)
    fig.tight_layout()
    return fig


@_figure
def faithfulness_figure(curves: dict[str, Any] | None) -> Figure | None:
    """Deletion and insertion curves (saliency order vs each control map's order), the Petsiuk et al. plots."""
    if not curves or not curves.get("fraction"):
        return None
    frac = _floats(curves["fraction"])
    fig = Figure(figsize=WIDE)
    axes = fig.subplots(1, 2)
    for ax, kind in zip(axes, ("deletion", "insertion")):
        lines = [(curves.get(kind), "-", "Grad-CAM order")]
        controls = curves.get("controls") or {}
        if controls:
            lines += [((controls.get(c) or {}).get(kind), ":", CONTROL_LABELS.get(c, c)) for c in CONTROL_ORDER
                      if c in controls]
        else:
            lines.append((curves.get(f"random_{kind}"), "--", "random order"))
        for values, style, name in lines:
            ys = _floats(values or [])
            n = min(len(frac), len(ys))
            if n:
                ax.plot(frac[:n], ys[:n], style, lw=1.6 if style == "-" else 1.1, label=name)
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel=f"fraction of pixels {'removed' if kind == 'deletion' else 'inserted'}",
               ylabel="probability of the class", title=kind.capitalize())
        ax.legend(frameon=False)
    fig.tight_layout()
    return fig


@_figure
def randomization_figure(stages: list[dict[str, Any]] | None) -> Figure | None:
    """Similarity of maps to the trained model's as layers are randomised from the top (Adebayo et al.)."""
    if not stages:
        return None
    names = [label(s.get("layer", "?"), 18) for s in stages]
    x = np.arange(len(stages))
    fig = Figure(figsize=WIDE)
    ax = fig.subplots()
    for key, marker in (("spearman", "o"), ("spearman_signed", "v"), ("ssim", "s"), ("hog", "^")):
        if any(s.get(key) is not None for s in stages):
            ax.plot(x, _floats([s.get(key) for s in stages]), marker=marker, ms=3, lw=1.2, label=key)
    edge = [((s.get("controls") or {}).get("edge") or {}).get("spearman") for s in stages]
    if any(v is not None for v in edge):
        ax.plot(x, _floats(edge), ":", color="#888888", lw=1.2, label="edge-map control (Spearman)")
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set(ylim=(-0.05, 1.05), ylabel="similarity to trained-model map",
           title="Cascading model randomisation (top layer first)")
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


@_figure
def stability_figure(stability: dict[str, dict[str, Any]] | None) -> Figure | None:
    """Map SSIM (median, 5–95 % band) and prediction flip rate against the noise level σ."""
    if not stability:
        return None
    levels = []
    for key, entry in stability.items():
        try:
            levels.append((float(key), entry or {}))
        except ValueError:
            continue
    if not levels:
        return None
    levels.sort(key=lambda item: item[0])
    sig = np.array([s for s, _ in levels])
    ssim = [e.get("ssim") or {} for _, e in levels]
    fig = Figure(figsize=WIDE)
    axes = fig.subplots(1, 2)
    med, lo, hi = (_floats([s.get(k) for s in ssim]) for k in ("median", "p5", "p95"))
    axes[0].fill_between(sig, lo, hi, alpha=0.25, label="p5–p95")
    axes[0].plot(sig, med, marker="o", ms=3, label="median")
    axes[0].set(xlabel="noise σ", ylabel="SSIM clean vs noisy map", ylim=(0, 1.02), title="Map stability")
    axes[0].legend(frameon=False)
    axes[1].plot(sig, _floats([e.get("flip_rate") for _, e in levels]), marker="o", ms=3, color="#e45756")
    axes[1].set(xlabel="noise σ", ylabel="fraction of predictions that flip", ylim=(0, None),
                title="Prediction flips")
    fig.tight_layout()
    return fig


CONTROL_ORDER = CONTROL_NAMES
CONTROL_LABELS = {"random": "random smooth", "brain_uniform": "brain-uniform", "edge": "edge (Sobel)",
                  "centre": "centre prior"}


@_figure
def controls_figure(controls: dict[str, dict[str, Any]] | None, titles: dict[str, str]) -> Figure | None:
    """Each explanation figure: the model's value beside every control map's, on the same images."""
    if not controls:
        return None
    keys = [k for k in titles if k in controls and (controls[k] or {}).get("value") is not None]
    if not keys:
        return None
    fig = Figure(figsize=(WIDE[0], 0.9 + 0.55 * len(keys)))
    ax = fig.subplots()
    series = [("model", None)] + [(CONTROL_LABELS.get(c, c), c) for c in CONTROL_ORDER]
    height = 0.8 / len(series)
    y = np.arange(len(keys))
    for j, (name, control) in enumerate(series):
        values = [controls[k]["value"] if control is None else (controls[k].get("controls") or {}).get(control)
                  for k in keys]
        ax.barh(y + (j - (len(series) - 1) / 2) * height, _floats(values), height=height, label=name,
                color="#222222" if control is None else None)
    ax.set_yticks(y, [label(titles[k], 40) for k in keys])
    ax.invert_yaxis()
    ax.set(xlabel="figure value (see table for direction)", title="Model beside its control maps")
    ax.legend(frameon=False, fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    return fig
