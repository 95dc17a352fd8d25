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
import matplotlib.lines
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from audit.schema_io import CONTROL_NAMES
from reports.facts import CONTROL_LABELS as FACT_CONTROL_LABELS

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
def faithfulness_figure(curves: dict[str, Any] | None, score: str = "class score") -> Figure | None:
    """Deletion and insertion curves (saliency order vs each control map's order), the Petsiuk et al. plots.

    ``score`` names what the curves measure (reports.facts.FAITHFULNESS_SCORE), so axis and caption agree.
    """
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
               ylabel=score, title=kind.capitalize())
        ax.legend(frameon=False)
    fig.tight_layout()
    return fig


SIMILARITY_LABELS = {"spearman": "|Spearman| rank correlation", "spearman_signed": "Spearman (signed)",
                     "ssim": "SSIM", "hog": "HOG-feature similarity"}


def stage_labels(layers: list[str]) -> list[str]:
    """Distinct tick labels for layer paths: drop the prefix they share ("small_resnet/block4" -> "block4")."""
    parts = [str(name).split("/") for name in layers]
    labels = [p[-1] if len(p) > 1 else p[0] for p in parts]
    if len(set(labels)) < len(labels):  # the last parts collide: keep the full paths
        labels = [str(name) for name in layers]
    return [label(text, 22) for text in labels]


@_figure
def randomization_figure(stages: list[dict[str, Any]] | None) -> Figure | None:
    """Similarity of maps to the trained model's as layers are randomised from the top (Adebayo et al.)."""
    if not stages:
        return None
    names = stage_labels([s.get("layer", "?") for s in stages])
    x = np.arange(len(stages))
    fig = Figure(figsize=WIDE)
    ax = fig.subplots()
    for key, marker in (("spearman", "o"), ("spearman_signed", "v"), ("ssim", "s"), ("hog", "^")):
        if any(s.get(key) is not None for s in stages):
            ax.plot(x, _floats([s.get(key) for s in stages]), marker=marker, ms=3, lw=1.2,
                    label=SIMILARITY_LABELS[key])
    edge = [((s.get("controls") or {}).get("edge") or {}).get("spearman") for s in stages]
    if any(v is not None for v in edge):
        ax.plot(x, _floats(edge), ":", color="#888888", lw=1.2, label="edge-map control (|Spearman|)")
    ax.set_xticks(x, names)
    ax.set(ylim=(-0.45, 1.05), ylabel="similarity to trained-model map", xlabel="randomised down to (top first)",
           title="Cascading model randomisation (top layer first)")
    ax.legend(frameon=True, framealpha=0.9, loc="lower left", ncol=2)
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
CONTROL_LABELS = FACT_CONTROL_LABELS


@_figure
def controls_figure(controls: dict[str, dict[str, Any]] | None, titles: dict[str, str],
                    judged: dict[str, dict[str, Any]] | None = None) -> Figure | None:
    """One dot-and-whisker row per figure, each on its own axis (the figures have different scales).

    A skill-judged figure shows its skill over the best control with the 95% CI whisker and the rule's
    threshold; any other shows the model's value as a dot with the four control maps as markers. Each row
    states its direction; the legend sits inside the figure, above the rows.
    """
    if not controls:
        return None
    judged = judged or {}
    keys = [k for k in titles if k in controls and (controls[k] or {}).get("value") is not None]
    if not keys:
        return None
    fig = Figure(figsize=(WIDE[0], 0.75 + 0.42 * len(keys)))
    axes = np.atleast_1d(fig.subplots(len(keys), 1))
    markers = {"random": "x", "brain_uniform": "s", "edge": "^", "centre": "D"}
    status_colour = {"PASS": "#2e7d32", "WARN": "#d98c00", "FAIL": "#c62828", "ERROR": "#c62828"}
    for ax, key in zip(axes, keys):
        c = controls[key] or {}
        rule = judged.get(key) or {}
        colour = status_colour.get(rule.get("status"), "#222222")
        if rule.get("basis") == "skill" and isinstance(c.get("skill"), (int, float)):
            ci = c.get("skill_ci") or [None, None]
            if None not in ci:
                ax.plot(ci, [0, 0], "-", color=colour, lw=2)
            ax.plot([c["skill"]], [0], "o", color=colour, ms=5)
            threshold = rule.get("threshold")
            ax.axvline(0 if threshold is None else threshold, color="#555555", lw=0.8, ls="--")
            what = "skill over best control, 95% CI (higher is better)"
        else:
            for name in CONTROL_ORDER:
                v = (c.get("controls") or {}).get(name)
                if v is not None:
                    ax.plot([v], [0], markers[name], color="#777777", ms=4, mfc="none")
            ax.plot([c["value"]], [0], "o", color=colour, ms=5)
            if rule.get("threshold") is not None:
                ax.axvline(rule["threshold"], color="#555555", lw=0.8, ls="--")
            what = "value beside the controls (" + ("higher" if c.get("higher_is_better", True) else "lower") \
                + " is better)"
        ax.set_yticks([])
        ax.grid(True, axis="x")
        ax.spines["left"].set_visible(False)
        ax.set_ylim(-1, 1)
        ax.tick_params(axis="x", labelsize=6)
        ax.set_title(f"{label(titles[key], 48)} — {what}", fontsize=6.5, loc="left", pad=2)
    handles = [matplotlib.lines.Line2D([], [], marker="o", ls="-", color="#222222", ms=4, label="model (CI whisker)"),
               matplotlib.lines.Line2D([], [], ls="--", color="#555555", label="rule's threshold")]
    handles += [matplotlib.lines.Line2D([], [], marker=markers[n], ls="", color="#777777", mfc="none",
                                        label=CONTROL_LABELS[n]) for n in CONTROL_ORDER]
    fig.legend(handles=handles, loc="upper center", ncol=6, frameon=False, fontsize=6,
               bbox_to_anchor=(0.5, 0.995))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.32 / fig.get_figheight()))
    return fig


@_figure
def colour_scale() -> Figure:
    """The gallery overlays' colour scale (OpenCV jet at alpha 0.4 over the slice, map scaled to [0, 1])."""
    fig = Figure(figsize=(3.0, 0.42))
    ax = fig.subplots()
    ax.imshow(np.linspace(0, 1, 256)[None, :], aspect="auto", cmap="jet", extent=(0, 1, 0, 1))
    ax.set_yticks([])
    ax.set_xticks([0, 0.5, 1], ["0 (least)", "0.5", "1 (most attribution)"])
    ax.grid(False)
    ax.tick_params(labelsize=6)
    fig.tight_layout(pad=0.2)
    return fig
