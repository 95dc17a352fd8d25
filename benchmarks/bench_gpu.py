"""The audit's throughput on one GPU, and whether mixed precision keeps its maps: the prepared device check.

    python benchmarks/bench_gpu.py [--data SPLIT_MANIFEST] [--out PATH] [--max-seconds 270] [--require-gpu]
    python benchmarks/bench_gpu.py --size 64 --images 16 --batch 8 --ig-images 4 \
        --subjects 12 --max-seconds 170                                     # CPU smoke test, < 3 minutes

It needs TensorFlow with CUDA where it runs (``pip install -e ".[cuda]"``). The project's lent H200 image
holds PyTorch and JAX but no TensorFlow, and the TensorFlow wheel is far larger than what a device call can
carry (64 MiB), so as of 2026-12-02 the script has run on CPUs only (``docs/measurements.md``).

Built for a lent NVIDIA H200 that starts bare from a copy of the repository: it builds everything itself —
a random-weight ResNet50 at ``--size`` (224; ImageNet weights cannot be downloaded there, and the cost is
the same) and its images: the test split of ``--data`` when given, else a small cohort written here (the
project's MNI152 synthetic cohort when nilearn imports, else ellipse "brains" whose ventricles grow with
the stage, with masks, written in the same manifest layout), else (``--cohort none``) structured arrays.
It measures, in images/s, each figure after one warm-up call (build + tracing, reported apart) as the
median of as many timed calls as ``--measure-seconds`` allows:

1. inference (``audit.explain.predict``: one compiled forward call per batch);
2. Grad-CAM (``audit.explain.gradcam``, predicted class);
3. Integrated Gradients with the gate's own adaptive settings (``suites/thresholds.toml`` [audit]: graded
   nodes, 4 panels, 16 -> 128 intervals, tolerance 0.05; gradients per image reported) and at fixed 64
   steps, on ``--ig-images`` images;
4. the whole gate (``AuditRun`` stage by stage, as ``benchmarks/bench_resnet50_gate.py``) in units of one
   forward pass over the same test images, with the sample sizes used and each stage's seconds;
5. mixed precision (``keras.config.set_dtype_policy("mixed_float16")``, the same weights): inference,
   Grad-CAM and IG again, each map compared with the float32 map of the same image and class.

Random weights cost what trained ones cost, but they are not a trained network, so the float16 figures
are a first reading: the largest activation at the Grad-CAM layer and the logit range are recorded (float16
ends at 65,504; at 64² Keras' random init reached 29 there), and ``--model PATH`` measures a trained
``.keras`` model instead. (Setting BatchNorm's statistics from the images, to mimic a trained network's
scale, was tried and dropped: at 64² it made IG's path from the black baseline so rough that 512 steps
left 16-340% completeness error, against 0.1-0.3% at random init.) Where IG does not converge, the
adaptive run spends up to 129 gradients per image: the gradients per image are reported beside its speed.

Tolerance for mixed precision (``TOLERANCE``), judged on the median image and reported with the worst:

- Grad-CAM: Spearman rank correlation with the float32 map >= 0.99. The gate's Grad-CAM figures
  (localisation energy and AUPRC, deletion/insertion, the randomisation cascade's rank correlation) read
  the map through the order of its pixels, so rank agreement is the property to keep; 0.99 leaves that
  order all but unchanged (the float16 test in ``tests/test_explainers.py`` asks mean |difference| < 0.02).
- IG: relative L2 distance of the attributions ||A16 - A32|| / ||A32|| <= 5%, at fixed 64 steps (the
  same nodes in both precisions, so the difference is precision alone). 5% is what the gate already
  accepts from IG: its adaptive maps are 4.6-5.8% (median L2) from a converged reference
  (docs/measurements.md, 2026-12-02), and ``ig_tolerance = 0.05`` bounds each image's completeness error
  at 5%; a precision error below that is no larger than the quadrature error the gate lives with.
  The adaptive runs are compared too (their step counts may differ between precisions), and their
  gradients per image and completeness are reported, since float16 noise could make IG refine longer.

Mixed precision is called advisable when both medians are within tolerance, every map is finite, and
IG (the gate's costliest explainer) runs at least ``MIN_SPEEDUP`` times faster than in float32. On an
NVIDIA GPU since Ampere, TensorFlow's float32 convolutions and matrix products use TF32 by default; the
figures say so (``tf32``), and ``--no-tf32`` turns it off for a strict float32 reference.

``--mixed-precision`` runs the mixed pass before the gate (so the gate cannot use up its time);
``--no-mixed-precision`` skips it; by default it runs last, if time allows. ``--max-seconds`` (default 270)
is the guard, counted from the script's start, TensorFlow's import and the model build included: a section,
gate stage or measurement whose estimated cost does not fit in what is left is skipped with a printed
note (a call already running is not interrupted), and the gate's sample sizes are shrunk (its own
``budget_minutes`` rule, with IG's measured gradients per image) to fit. Every figure goes to ``--out`` as
JSON (default ``$OUT/bench_gpu.json`` when ``OUT`` is set, else ``out/bench_gpu.json``), rewritten after
each section so a run cut short still returns what it measured.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

STARTED = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from audit.tflog import quiet_tensorflow  # noqa: E402
from model.fileio import atomic_write_text  # noqa: E402

quiet_tensorflow(level=1)  # TensorFlow's start-up INFO lines go; its warnings stay (they say why no GPU was found)

TOLERANCE = {"gradcam_spearman_min": 0.99, "ig_relative_l2_max": 0.05}
MIN_SPEEDUP = 1.2          # mixed IG must beat float32 IG by this factor to be worth a second code path
MARGIN_S = 8.0             # kept free at the end for writing the JSON and cleaning up
SECTIONS = ("inference", "gradcam", "ig", "gate")
# AuditRun stage -> its row in the gate's own plan (audit/plan.py), for the guard's estimate
# (with a CAM over every image the plan has run predictions and Grad-CAM itself: "predictions + Grad-CAM")
PLAN_STAGE = {"probs": "predictions", "gradcam_maps": "Grad-CAM", "ig": "Integrated Gradients",
              "faithfulness": "faithfulness", "stability": "stability", "randomization": "randomization"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=224, help="input size (square); 224 = the seed's ResNet50")
    p.add_argument("--images", type=int, default=256, help="images timed for inference and Grad-CAM")
    p.add_argument("--batch", type=int, default=64, help="images per compiled call (inference, Grad-CAM)")
    p.add_argument("--ig-images", type=int, default=64, help="images explained by IG (the gate's ig_images)")
    p.add_argument("--ig-batch", type=int, default=None,
                   help="(image, alpha) rows per IG call (default: max(--batch, 64), as the gate)")
    p.add_argument("--measure-seconds", type=float, default=5.0, help="timed calls per figure after the warm-up")
    p.add_argument("--max-seconds", type=float, default=270.0, help="hard guard for the whole script")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    p.add_argument("--mixed-precision", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed_float16 pass: on = before the gate, off = never, unset = last if time allows")
    p.add_argument("--data", help="split manifest (or dataset folder) whose test split gives the images")
    p.add_argument("--cohort", choices=("auto", "synth", "blobs", "none"), default="auto",
                   help="without --data: the cohort written here (auto = synth if nilearn imports, else blobs)")
    p.add_argument("--subjects", type=int, default=60, help="subjects of that cohort (8 slices each, 30%% test)")
    p.add_argument("--gate-budget", type=float, default=0.0,
                   help="the gate's [audit] budget_minutes (0 = default sample sizes, shrunk only to fit the guard)")
    p.add_argument("--model", help="a trained .keras model to measure instead of the random-weight ResNet50")
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=None,
                   help="TensorFloat-32 for float32 on NVIDIA GPUs (default: TensorFlow's, on)")
    p.add_argument("--require-gpu", action="store_true", help="exit with an error when TensorFlow sees no GPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default $OUT/bench_gpu.json or out/bench_gpu.json)")
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        p.error(f"--sections: unknown {', '.join(unknown)} (choose from {', '.join(SECTIONS)})")
    for name in ("size", "images", "batch", "ig_images", "subjects"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: must be at least 1")
    if args.size < 32:
        p.error("--size: ResNet50 needs at least 32")
    args.ig_images = min(args.ig_images, args.images)
    args.ig_batch = args.ig_batch or max(args.batch, 64)
    if args.out is None:
        args.out = str(Path(os.environ["OUT"]) / "bench_gpu.json") if os.environ.get("OUT") else "out/bench_gpu.json"
    return args


def say(*parts: Any) -> None:
    print(*parts, flush=True)


class Clock:
    """The hard guard: seconds left of ``--max-seconds`` since the script started, less the closing margin."""

    def __init__(self, max_seconds: float):
        self.deadline = STARTED + max_seconds

    @staticmethod
    def elapsed() -> float:
        return time.perf_counter() - STARTED

    def left(self) -> float:
        return self.deadline - MARGIN_S - time.perf_counter()


class Report:
    """Every figure, written to ``path`` as JSON after each section (a run cut short keeps what it measured)."""

    def __init__(self, path: str, args: argparse.Namespace):
        self.path = Path(path)
        self.data: dict[str, Any] = {
            "benchmark": "benchmarks/bench_gpu.py", "schema": 1,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "argv": sys.argv[1:], "args": {k: v for k, v in vars(args).items()},
            "tolerance": {**TOLERANCE, "judged_on": "median image", "min_ig_speedup": MIN_SPEEDUP},
            "skipped": [], "errors": [],
        }

    def skip(self, section: str, reason: str) -> None:
        say(f"  SKIPPED {section}: {reason}")
        self.data["skipped"].append({"section": section, "reason": reason})

    def error(self, section: str, exc: BaseException) -> None:
        line = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        say(f"  FAILED {section}: {line}")
        self.data["errors"].append({"section": section, "error": line,
                                    "where": traceback.format_exc(limit=-3).strip().splitlines()[-3:]})

    def save(self) -> None:
        self.data["elapsed_s"] = round(Clock.elapsed(), 2)
        atomic_write_text(self.path, json.dumps(self.data, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


# ------------------------------------------------------------------------------------------ timing
def measure(name: str, fn: Callable[[], Any], n_images: int, clock: Clock, report: Report, *,
            budget_s: float, estimate_s: float | None = None) -> tuple[dict | None, Any]:
    """One warm-up call (build + tracing + one run), then timed calls for ``budget_s``: images/s from the median.

    Skipped when ``estimate_s`` (the expected cost of one call) does not fit in the time left; the steady
    state is reported only when at least one call fits after the warm-up. ``fn`` must return host arrays,
    so that each call's time includes the device finishing its work.
    """
    if estimate_s is not None and estimate_s > clock.left():
        report.skip(name, f"one call is estimated at {estimate_s:.1f} s, {max(clock.left(), 0):.1f} s left")
        return None, None
    started = time.perf_counter()
    result = fn()
    first = time.perf_counter() - started
    calls: list[float] = []
    stop = time.perf_counter() + min(budget_s, clock.left())
    while not calls or time.perf_counter() < stop:
        guess = calls[-1] if calls else first
        if guess > clock.left() or (calls and time.perf_counter() + guess > stop + 0.5 * guess):
            break
        started = time.perf_counter()
        result = fn()
        calls.append(time.perf_counter() - started)
        if len(calls) >= 200:
            break
    figure: dict[str, Any] = {"images": n_images, "first_call_s": round(first, 3), "timed_calls": len(calls)}
    if calls:
        median = float(np.median(calls))
        figure.update(median_call_s=round(median, 4), best_call_s=round(min(calls), 4),
                      images_per_s=round(n_images / median, 2), ms_per_image=round(1e3 * median / n_images, 3),
                      tracing_s=round(max(first - median, 0.0), 3))
        say(f"  {name:34s} {figure['images_per_s']:10.1f} img/s  {figure['ms_per_image']:9.2f} ms/img  "
            f"first call {first:6.2f} s (tracing ~{figure['tracing_s']:.2f} s)  {len(calls)} timed calls")
    else:
        figure["note"] = "no time for a call after the warm-up: steady state not measured"
        say(f"  {name:34s} first call {first:.2f} s; steady state not measured (no time left)")
    return figure, result


# ------------------------------------------------------------------------------------------ images
def blob_slice(rng: np.random.Generator, stage: int, height: int, width: int) -> tuple[np.ndarray, ...]:
    """One uint8 slice (an ellipse "brain", smooth texture, ventricles that grow with ``stage``), its
    atrophy mask (ventricle beyond the stage-0 size) and its brain mask: structure a CNN responds to."""
    import cv2

    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    cy, cx = height / 2 + rng.uniform(-4, 4), width / 2 + rng.uniform(-4, 4)
    ry, rx = height * rng.uniform(0.38, 0.45), width * rng.uniform(0.36, 0.43)
    brain = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    texture = cv2.GaussianBlur(rng.normal(0, 1, (height, width)).astype(np.float32), (0, 0), 3) * 60 + 140
    r0 = width * 0.05
    r = r0 * (1 + 0.5 * stage + rng.uniform(0, 0.2))

    def ventricles(radius: float) -> np.ndarray:
        """Two lateral ventricles of half-width ``radius`` either side of the midline."""
        lateral = (np.abs(xx - cx) - 0.8 * radius) / radius
        return ((yy - cy + 0.05 * height) / (1.8 * radius)) ** 2 + lateral ** 2 <= 1

    vent = ventricles(r) & brain
    image = np.where(brain, texture, 0.0)
    image[vent] = 35
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    atrophy = vent & ~ventricles(r0)
    return image, (atrophy * 255).astype(np.uint8), (brain * 255).astype(np.uint8)


def blob_cohort(out: Path, subjects: int, slices: int, seed: int) -> Path:
    """A cohort without nilearn (the device machine has none): blob slices, masks, subject IDs and a
    subject-aware split with the demo's ratios, written as ``split_manifest.csv``."""
    import cv2

    from model.recipe import DEMO_RATIOS
    from model.classes import CLASSES
    from model.manifest import Manifest, Sample, write_manifest
    from model.splits import split_manifest

    rng = np.random.default_rng(seed)
    samples = []
    for number in range(1, subjects + 1):
        stage = (number - 1) % len(CLASSES)
        subject = f"SYN_{number:04d}"
        for k in range(slices):
            arrays = blob_slice(rng, stage, 208, 176)
            paths = [out / folder / CLASSES[stage] / f"{subject}_slice_{k:02d}.png"
                     for folder in (".", "masks", "brain_masks")]
            for path, array in zip(paths, arrays):
                path.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(path), array)
            samples.append(Sample(path=paths[0].resolve(), label=CLASSES[stage], subject_id=subject,
                                  mask_path=paths[1].resolve(), extra={"brain_mask_path": str(paths[2].resolve())}))
    split, _ = split_manifest(Manifest(root=out.resolve(), samples=samples), DEMO_RATIOS, seed=seed)
    return write_manifest(split, out / "split_manifest.csv")


def synth_cohort(out: Path, subjects: int, slices: int, seed: int) -> Path:
    """The project's MNI152 cohort (needs nilearn), split like the demo's; forked workers, so before TF."""
    from model.recipe import DEMO_RATIOS
    from model.manifest import load_dataset, write_manifest
    from model.splits import split_manifest
    from model.synth import synthesize_cohort

    synthesize_cohort(out, subjects=subjects, slices_per_subject=slices, seed=seed, progress=False,
                      workers=min(8, os.cpu_count() or 1))
    split, _ = split_manifest(load_dataset(out / "manifest.csv"), DEMO_RATIOS, seed=seed)
    return write_manifest(split, out / "split_manifest.csv")


def prepare_data(args: argparse.Namespace, work: Path, report: Report) -> str | None:
    """The split manifest the images (and the gate) come from: --data, else a cohort written here."""
    if args.data:
        if not Path(args.data).exists():
            raise SystemExit(f"bench_gpu: {args.data}: not found (give a split manifest CSV or a dataset folder)")
        report.data["data"] = {"source": "--data", "path": args.data}
        return args.data
    kind = args.cohort
    if kind == "none":
        report.data["data"] = {"source": "structured arrays (--cohort none)"}
        return None
    if kind == "auto":
        try:
            import nilearn  # noqa: F401

            kind = "synth"
        except ImportError:
            kind = "blobs"
    started = time.perf_counter()
    maker = synth_cohort if kind == "synth" else blob_cohort
    try:
        path = maker(work / "cohort", args.subjects, 8, args.seed)
    except Exception as exc:  # noqa: BLE001 - a cohort that cannot be written leaves arrays, not a dead run
        report.error(f"cohort ({kind})", exc)
        report.data["data"] = {"source": "structured arrays (the cohort failed)"}
        return None
    seconds = time.perf_counter() - started
    report.data["data"] = {"source": f"cohort written here ({kind})", "subjects": args.subjects,
                           "slices_per_subject": 8, "seconds": round(seconds, 2)}
    say(f"cohort: {kind}, {args.subjects} subjects x 8 slices in {seconds:.1f} s")
    return str(path)


def load_images(data: str | None, size: int, n: int, seed: int, report: Report) -> np.ndarray:
    """``n`` float32 ``(n, size, size, 1)`` raw-intensity images: the test split (repeated to ``n``), or blobs."""
    if data is not None:
        from model.manifest import load_dataset
        from model.pipeline import load_slices
        from model.splits import ensure_split

        test = ensure_split(load_dataset(data), seed=seed).split("test").samples
        report.data["data"]["test_images"] = len(test)
        if len(test) < n:
            say(f"images: {len(test)} test slices, repeated to {n}")
        picks = np.arange(n) % len(test) if len(test) < n else np.linspace(0, len(test) - 1, n).astype(int)
        gray = load_slices([test[i] for i in picks], (size, size))  # spread over subjects and stages
    else:
        import cv2

        rng = np.random.default_rng(seed)
        gray = np.stack([cv2.resize(blob_slice(rng, i % 4, 208, 176)[0], (size, size), interpolation=cv2.INTER_AREA)
                         for i in range(n)])
    return gray.astype(np.float32)[..., None]


# ------------------------------------------------------------------------------------------ model
def environment(tf, keras, args: argparse.Namespace) -> dict:
    """Versions, the GPUs TensorFlow sees (with name and compute capability) and its CUDA build."""
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except Exception:  # noqa: BLE001 - already initialised: growth is a courtesy, not needed
            pass
    if args.tf32 is not None:
        tf.config.experimental.enable_tensor_float_32_execution(args.tf32)
    details = []
    for gpu in gpus:
        try:
            info = tf.config.experimental.get_device_details(gpu)
        except Exception:  # noqa: BLE001
            info = {}
        details.append({"name": gpu.name, "device_name": info.get("device_name"),
                        "compute_capability": info.get("compute_capability")})
    build = {}
    try:
        build = {k: v for k, v in tf.sysconfig.get_build_info().items() if "version" in k}
    except Exception:  # noqa: BLE001
        pass
    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "cpus": os.cpu_count(), "machine": platform.machine(),
            "gpus": [repr(g) for g in gpus], "gpu_details": details, "built_with_cuda": tf.test.is_built_with_cuda(),
            "build": build, "tf32": bool(tf.config.experimental.tensor_float_32_execution_enabled()) if gpus else None}


def activation_range(model, x: np.ndarray) -> dict:
    """Largest |activation| at the Grad-CAM layer and the logit range on ``x``: float16 ends at 65,504."""
    from audit.explain.layers import gradient_model

    grads_model, path = gradient_model(model)
    acts, logits = grads_model(x, training=False)
    acts, logits = np.asarray(acts, np.float32), np.asarray(logits, np.float32)
    return {"layer": path, "activation_absmax": float(np.abs(acts).max()),
            "logit_min": float(logits.min()), "logit_max": float(logits.max()),
            "logit_gap_median": float(np.median(np.diff(np.sort(logits, axis=1)[:, -2:], axis=1)))}


def load_trained(args: argparse.Namespace):
    """--model, loaded safely; ``args.size`` becomes its input size (the images are made at it)."""
    from model.errors import AlzAuditError
    from model.network import load_model

    model = load_model(args.model)
    height, width = model.input_shape[1:3]
    if height != width or height is None:
        raise AlzAuditError(f"{args.model}: input {height}x{width}; this benchmark makes square images")
    args.size = int(height)
    return model


def build_model(args: argparse.Namespace, x: np.ndarray, report: Report, trained=None):
    """The random-weight ResNet50 (Keras' own init, as ``audit.probes`` builds it), or --model's."""
    if trained is not None:
        report.data["model"] = {"source": args.model, "activations": activation_range(trained, x[:min(len(x), 32)])}
        return trained
    from audit.probes import untrained_model

    model = untrained_model(args.size, backbone="resnet50", seed=args.seed)
    sample = x[:min(len(x), 32)]
    report.data["model"] = {"source": f"random-weight ResNet50 at {args.size}^2 (seed {args.seed})",
                            "activations": activation_range(model, sample)}
    return model


# ------------------------------------------------------------------------------------------ sections
def ig_settings(batch: int) -> dict:
    """The gate's IG options from suites/thresholds.toml [audit], as ``AuditRun.ig_settings`` forms them."""
    from audit.runner import AuditConfig
    from suites.thresholds import load_thresholds

    c = AuditConfig.from_settings(load_thresholds().settings)
    return dict(steps=c.ig_steps, tolerance=c.ig_tolerance or None, min_steps=min(c.ig_min_steps, c.ig_steps),
                max_steps=c.ig_steps, scheme=c.ig_scheme, panels=c.ig_panels, batch_size=batch)


def ig_figures(result, n: int) -> dict:
    """What an IG run spent and how well it integrated: gradients per image, steps, completeness."""
    error = result.completeness_error[np.isfinite(result.completeness_error)]
    return {"gradients_per_image": round(result.gradient_evaluations / n, 2),
            "steps_used": {int(m): int((result.steps_used == m).sum()) for m in np.unique(result.steps_used)},
            "converged": int(result.converged.sum()), "estimable": int(result.estimable.sum()),
            "completeness_error_median": float(np.median(error)) if len(error) else None,
            "completeness_error_max": float(error.max()) if len(error) else None}


def explainer_sections(tag: str, model, x: np.ndarray, args: argparse.Namespace, clock: Clock, report: Report,
                       targets: np.ndarray | None, scale: float = 1.0) -> dict:
    """Inference, Grad-CAM and IG (gate-adaptive, fixed 64) on ``model``; returns the arrays for comparison.

    ``targets`` None: the predicted classes found here are used and returned. ``scale`` multiplies the
    estimates taken from the float32 pass (the mixed pass's speed relative to it, once inference shows it).
    """
    from audit.explain import gradcam, integrated_gradients, predict
    from audit.plan import IG_ROWS_PER_IMAGE

    figures = report.data.setdefault(tag, {})
    out: dict[str, Any] = {}
    reference = report.data.get("float32", {})

    def estimate(key: str) -> float | None:
        """Seconds one call should take: from the float32 figure (times the mixed/float32 ratio), or for
        float32 IG from Grad-CAM's cost per image (one IG row costs about 1.5 Grad-CAMs)."""
        if tag == "float32":
            cam = figures.get("gradcam", {}).get("ms_per_image")
            rows = {"ig_gate": IG_ROWS_PER_IMAGE["graded"], "ig_fixed64": 65}.get(key)
            return None if cam is None or rows is None else 1.5 * cam / 1e3 * rows * args.ig_images
        known = reference.get(key) or {}
        seconds = known.get("median_call_s") or known.get("first_call_s")
        return None if seconds is None else seconds * scale

    n, b = len(x), args.batch
    if "inference" in args.sections or targets is None or tag != "float32":
        figure, probs = measure(f"{tag} inference", lambda: predict(model, x, batch_size=b), n, clock, report,
                                budget_s=args.measure_seconds, estimate_s=estimate("inference"))
        if figure is not None:
            figure["batch"] = b
            figures["inference"] = figure
            out["probs"] = probs
            if targets is None:
                targets = probs.argmax(axis=1).astype(np.int32)
            report.save()
    if targets is None:
        return out
    out["targets"] = targets
    if tag != "float32" and "probs" in out and reference.get("inference", {}).get("median_call_s") and \
            figures.get("inference", {}).get("median_call_s"):
        scale = figures["inference"]["median_call_s"] / reference["inference"]["median_call_s"]
        out["scale"] = scale
    if "gradcam" in args.sections:
        figure, maps = measure(f"{tag} Grad-CAM", lambda: gradcam(model, x, targets, batch_size=b), n, clock,
                               report, budget_s=args.measure_seconds, estimate_s=estimate("gradcam"))
        if figure is not None:
            figures["gradcam"] = {**figure, "batch": b}
            out["gradcam"] = maps
            report.save()
    if "ig" in args.sections:
        xi, ti = x[:args.ig_images], targets[:args.ig_images]
        gate = ig_settings(args.ig_batch)
        runs = {"ig_gate": (f"{tag} IG gate-adaptive", gate),
                "ig_fixed64": (f"{tag} IG fixed 64 steps", dict(steps=64, batch_size=args.ig_batch))}
        for key, (label, kwargs) in runs.items():
            figure, result = measure(label, lambda kw=kwargs: integrated_gradients(model, xi, ti, **kw), len(xi),
                                     clock, report, budget_s=args.measure_seconds, estimate_s=estimate(key))
            if figure is None:
                continue
            figure.update(ig_figures(result, len(xi)), settings={k: v for k, v in kwargs.items()})
            if "median_call_s" in figure:
                figure["gradient_rows_per_s"] = round(result.gradient_evaluations / figure["median_call_s"], 1)
            say(f"  {'':34s} {figure['gradients_per_image']:.1f} gradients/image, converged "
                f"{figure['converged']}/{len(xi)}, completeness error median "
                f"{_pct(figure['completeness_error_median'])} max {_pct(figure['completeness_error_max'])}")
            figures[key] = figure
            out[key] = result
            report.save()
    return out


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def gate_section(model, data: str | None, args: argparse.Namespace, clock: Clock, report: Report,
                 work: Path) -> None:
    """The whole gate stage by stage (as bench_resnet50_gate.py), in units of one forward pass over the
    same test images; sample sizes shrunk by the gate's own budget rule when the guard needs it."""
    from audit.plan import IG_ROWS_PER_IMAGE, MIN_IMAGES
    from audit.probes import save_probe
    from audit.runner import AuditConfig, AuditRun
    from audit.writer import figures_document
    from suites.thresholds import load_thresholds

    if data is None:
        report.skip("gate", "no split manifest (--data) and no cohort written (--cohort none or it failed)")
        return
    started = time.perf_counter()
    model_path = save_probe(model, work / "model.keras")
    settings = dict(load_thresholds().settings, budget_minutes=args.gate_budget)
    run = AuditRun(model_path, data, work / "audit", AuditConfig.from_settings(settings, cache=False, progress=False),
                   model=model)
    x = run.inputs
    setup = time.perf_counter() - started
    figure, _ = measure("gate: one forward pass", lambda: run.predict_fn(x), len(x), clock, report,
                        budget_s=min(2.0, args.measure_seconds))
    if figure is None or "median_call_s" not in figure:
        report.skip("gate", "no time to measure one forward pass")
        return
    forward = figure["median_call_s"]
    gate: dict[str, Any] = {"test_images": len(x), "setup_s": round(setup, 2), "forward_pass": figure}
    report.data["gate"] = gate
    from dataclasses import replace

    from audit.plan import plan_audit

    started = time.perf_counter()
    plan = plan_audit(run)
    run.use_plan(plan)
    gate["plan_s"] = round(time.perf_counter() - started, 2)
    # The plan assumes IG_ROWS_PER_IMAGE gradients per image; this model's own count was measured above.
    measured = (report.data.get("float32", {}).get("ig_gate") or {}).get("gradients_per_image")
    ig_ratio = measured / IG_ROWS_PER_IMAGE.get(run.config.ig_scheme, measured) if measured else 1.0
    gate["plan_ig_correction"] = round(ig_ratio, 3)

    def corrected(stages: list[dict]) -> float:
        return sum(p["seconds"] * (ig_ratio if p["stage"] == "Integrated Gradients" else 1.0) for p in stages)

    estimated = corrected(run.plan["stages"])
    room = clock.left() - 5.0
    if estimated > 0.8 * room:
        minutes = max(0.05, 0.6 * room / 60 * run.plan["estimated_seconds"] / estimated)
        say(f"  gate plan {estimated:.0f} s (IG at {measured} gradients/image) > {0.8 * room:.0f} s left for it: "
            f"sample sizes fitted to budget_minutes = {minutes:.2f} (never below {MIN_IMAGES} images each)")
        run.config = replace(run.config, budget_minutes=minutes)
        plan = plan_audit(run)
        run.use_plan(plan)
        gate["fitted_budget_minutes"] = round(minutes, 3)
    say(plan.text)
    gate["plan"] = run.plan
    planned = {p["stage"]: p["seconds"] for p in run.plan["stages"]}
    stages: dict[str, float] = {}
    figures: dict | None = None
    gate["complete"] = True
    total_started = time.perf_counter()
    for stage in ("probs", "gradcam_maps", "localization", "ig", "agreement", "faithfulness", "stability",
                  "randomization", "figures"):
        need = planned.get(PLAN_STAGE.get(stage, ""), 0.0) * (ig_ratio if stage == "ig" else 1.0)
        if need > clock.left():
            report.skip(f"gate: {stage} and later", f"planned {need:.0f} s, {max(clock.left(), 0):.0f} s left")
            gate["complete"] = False
            break
        started = time.perf_counter()
        try:
            if stage == "figures":
                figures = figures_document(run)
            else:
                getattr(run, stage)
        except Exception as exc:  # noqa: BLE001 - one stage failing leaves the others' figures
            report.error(f"gate: {stage}", exc)
            gate["complete"] = False
        stages[stage] = round(time.perf_counter() - started, 3)
    total = time.perf_counter() - total_started
    cfg = run.config
    gate.update(
        stage_seconds=stages, runner_timings={k: round(v, 3) for k, v in run.timings.items()},
        total_s=round(total, 2), total_forward_passes=round(total / forward, 1),
        stage_forward_passes={k: round(v / forward, 1) for k, v in stages.items()},
        sample_sizes={"gradcam": cfg.gradcam_images or len(x), "ig": min(cfg.ig_images, len(x)),
                      "ig_tolerance": cfg.ig_tolerance, "ig_max_steps": cfg.ig_steps,
                      "faithfulness": cfg.faithfulness_images, "faithfulness_points": list(cfg.faithfulness_fractions()[1:-1]),
                      "stability": cfg.stability_images, "stability_draws": cfg.stability_draws,
                      "randomization": cfg.randomization_images, "budget_minutes": cfg.budget_minutes},
        errors=dict(run.errors))
    if "ig" in run.__dict__:
        gate["ig"] = ig_figures(run.ig, len(run.ig_indices))
    controls = {}
    if figures is not None:
        for key, c in (figures.get("controls") or {}).items():
            lo, hi = c.get("skill_ci") or (None, None)
            controls[key] = {"n_images": c.get("n_images"), "n_units": c.get("n_units"),
                             "ci_width": None if lo is None else round(hi - lo, 4)}
    gate["controls"] = controls
    say(f"\n  {'stage':16s} {'seconds':>8s} {'forward passes':>15s}   (one forward pass over {len(x)} images "
        f"= {forward * 1e3:.1f} ms)")
    for name, seconds in stages.items():
        say(f"  {name:16s} {seconds:8.2f} {seconds / forward:15.1f}")
    say(f"  {'whole gate':16s} {total:8.2f} {total / forward:15.1f}   (CPU target: <= 35 forward passes)")
    say(f"  sample sizes: {gate['sample_sizes']}")
    report.save()


def rank_correlation(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-image Spearman correlation of two map stacks; two constant maps agree (1), one constant map
    against a varying one does not (0). Also returns how many images had a constant map."""
    from scipy.stats import rankdata

    n = len(a)
    ra, rb = rankdata(a.reshape(n, -1), axis=1), rankdata(b.reshape(n, -1), axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    na, nb = np.linalg.norm(ra, axis=1), np.linalg.norm(rb, axis=1)
    out = np.where((na > 0) & (nb > 0), (ra * rb).sum(axis=1) / np.maximum(na * nb, 1e-30), 0.0)
    both_flat = (na == 0) & (nb == 0)
    out[both_flat] = np.where(np.abs(a - b).reshape(n, -1).max(axis=1)[both_flat] == 0, 1.0, 0.0)
    return out, int(((na == 0) | (nb == 0)).sum())


def relative_l2(a: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per image ||a - ref|| / ||ref|| (0 where both are zero, inf where only ref is)."""
    n = len(reference)
    diff = np.linalg.norm((a.astype(np.float64) - reference).reshape(n, -1), axis=1)
    norm = np.linalg.norm(reference.astype(np.float64).reshape(n, -1), axis=1)
    return np.where(norm > 0, diff / np.where(norm > 0, norm, 1.0), np.where(diff > 0, np.inf, 0.0))


def summary(values: np.ndarray, worst: str, within: Callable[[np.ndarray], np.ndarray]) -> dict:
    return {"median": float(np.median(values)), "worst": float(values.min() if worst == "min" else values.max()),
            "within_tolerance": int(within(values).sum()), "images": len(values),
            "finite": bool(np.isfinite(values).all())}


def compare_precisions(f32: dict, f16: dict, report: Report) -> None:
    """Mixed maps against float32 maps of the same images and classes, judged against ``TOLERANCE``."""
    comparison: dict[str, Any] = {}
    if "probs" in f32 and "probs" in f16:
        p32, p16 = f32["probs"], f16["probs"]
        comparison["predictions"] = {"top_class_agreement": float((p32.argmax(1) == p16.argmax(1)).mean()),
                                     "max_abs_probability_difference": float(np.abs(p32 - p16).max()),
                                     "finite": bool(np.isfinite(p16).all())}
    min_rho, max_l2 = TOLERANCE["gradcam_spearman_min"], TOLERANCE["ig_relative_l2_max"]
    if "gradcam" in f32 and "gradcam" in f16:
        rho, flat = rank_correlation(f16["gradcam"], f32["gradcam"])
        comparison["gradcam"] = {"spearman": summary(rho, "min", lambda v: v >= min_rho), "constant_maps": flat,
                                 "relative_l2": summary(relative_l2(f16["gradcam"], f32["gradcam"]), "max",
                                                        lambda v: v <= max_l2),
                                 "finite": bool(np.isfinite(f16["gradcam"]).all())}
    for key in ("ig_fixed64", "ig_gate"):
        if key in f32 and key in f16:
            a16, a32 = f16[key].attributions, f32[key].attributions
            rho, flat = rank_correlation(f16[key].heatmaps, f32[key].heatmaps)
            comparison[key] = {"relative_l2": summary(relative_l2(a16, a32), "max", lambda v: v <= max_l2),
                               "heatmap_spearman": summary(rho, "min", lambda v: v >= min_rho),
                               "finite": bool(np.isfinite(a16).all())}
    verdict: dict[str, Any] = {}
    if "gradcam" in comparison:
        verdict["gradcam_within"] = comparison["gradcam"]["spearman"]["median"] >= min_rho and \
            comparison["gradcam"]["finite"]
    if "ig_fixed64" in comparison:
        verdict["ig_within"] = comparison["ig_fixed64"]["relative_l2"]["median"] <= max_l2 and \
            comparison["ig_fixed64"]["finite"]
    speed = {}
    for key in ("inference", "gradcam", "ig_gate", "ig_fixed64"):
        r32 = report.data.get("float32", {}).get(key, {}).get("images_per_s")
        r16 = report.data.get("mixed_float16", {}).get(key, {}).get("images_per_s")
        if r32 and r16:
            speed[key] = round(r16 / r32, 3)
    verdict["speedup"] = speed
    if "gradcam_within" in verdict and "ig_within" in verdict and "ig_gate" in speed:
        verdict["advisable"] = bool(verdict["gradcam_within"] and verdict["ig_within"]
                                    and speed["ig_gate"] >= MIN_SPEEDUP)
    else:
        verdict["advisable"] = None
        verdict["note"] = "not judged: a float32 or mixed figure it needs was not measured"
    comparison["verdict"] = verdict
    report.data["mixed_float16"]["comparison"] = comparison
    say("\n  mixed_float16 vs float32, same images and classes (median / worst image):")
    if "predictions" in comparison:
        c = comparison["predictions"]
        say(f"    predictions: top class agrees on {c['top_class_agreement']:.1%}, max |dp| "
            f"{c['max_abs_probability_difference']:.2e}")
    if "gradcam" in comparison:
        s, l2 = comparison["gradcam"]["spearman"], comparison["gradcam"]["relative_l2"]
        say(f"    Grad-CAM Spearman {s['median']:.4f} / {s['worst']:.4f} (tolerance >= {min_rho}; "
            f"{s['within_tolerance']}/{s['images']} within), relative L2 {l2['median']:.2%} / {l2['worst']:.2%}")
    for key, label in (("ig_fixed64", "IG 64 steps"), ("ig_gate", "IG gate-adaptive")):
        if key in comparison:
            l2, s = comparison[key]["relative_l2"], comparison[key]["heatmap_spearman"]
            say(f"    {label:16s} relative L2 {l2['median']:.2%} / {l2['worst']:.2%} (tolerance <= {max_l2:.0%}"
                f"{', judged' if key == 'ig_fixed64' else ', not judged: step counts may differ'}; "
                f"{l2['within_tolerance']}/{l2['images']} within), heatmap Spearman {s['median']:.4f} / "
                f"{s['worst']:.4f}")
    say("    speed-up (images/s mixed / float32): " + (", ".join(f"{k} {v:.2f}x" for k, v in speed.items()) or "n/a"))
    advisable = verdict["advisable"]
    say("    mixed precision: " + ("not judged (" + verdict["note"] + ")" if advisable is None else
                                  f"maps within tolerance: Grad-CAM {'yes' if verdict['gradcam_within'] else 'NO'}, "
                                  f"IG {'yes' if verdict['ig_within'] else 'NO'}; "
                                  f"ADVISABLE: {'yes' if advisable else 'no'} (needs both within and IG >= "
                                  f"{MIN_SPEEDUP}x faster)"))
    report.save()


def mixed_section(model32, x: np.ndarray, f32: dict, args: argparse.Namespace, clock: Clock, report: Report) -> None:
    """The same weights under mixed_float16: inference, Grad-CAM and IG again, then the comparison."""
    import keras

    one_call = (report.data.get("float32", {}).get("inference") or {}).get("first_call_s", 0.0)
    if one_call * 2 > clock.left():
        report.skip("mixed_float16", f"{max(clock.left(), 0):.0f} s left")
        return
    say("\nmixed_float16 (keras.config.set_dtype_policy), same weights:")
    started = time.perf_counter()
    if args.model:
        half = mixed_twin(model32)
    else:
        from audit.probes import untrained_model

        keras.config.set_dtype_policy("mixed_float16")
        try:
            half = untrained_model(args.size, backbone="resnet50", seed=args.seed)
        finally:
            keras.config.set_dtype_policy("float32")
        half.set_weights(model32.get_weights())
    compute = sorted({layer.compute_dtype for layer in iter_layers(half)})
    report.data["mixed_float16"] = {"build_s": round(time.perf_counter() - started, 2), "compute_dtypes": compute}
    if "float16" not in compute:
        report.skip("mixed_float16", f"the model did not take the policy (compute dtypes {compute})")
        return
    report.data["mixed_float16"]["activation_range"] = activation_range(half, x[:min(len(x), 32)])
    f16 = explainer_sections("mixed_float16", half, x, args, clock, report, f32.get("targets"))
    compare_precisions(f32, f16, report)


def mixed_twin(model):
    """``model`` rebuilt under mixed_float16 with the same weights, for a loaded model whose saved config
    pins every layer's dtype (so the global policy alone changes nothing): each float32 policy becomes
    mixed_float16, except at the layers that produce the outputs, which stay float32 (Keras' advice)."""
    config = model.get_config()
    outputs = config.get("output_layers", [])
    if outputs and isinstance(outputs[0], str):  # one output is saved as [name, node, tensor]
        outputs = [outputs]
    keep = {entry[0] for entry in outputs}

    def convert(node, name=None):
        if isinstance(node, dict):
            if node.get("class_name") == "DTypePolicy" and node.get("config", {}).get("name") == "float32" \
                    and name not in keep:
                return {**node, "config": {**node["config"], "name": "mixed_float16"}}
            inner = node.get("config", {}).get("name") if isinstance(node.get("config"), dict) else None
            return {k: convert(v, inner if k == "config" else name) for k, v in node.items()}
        if isinstance(node, list):
            return [convert(v, name) for v in node]
        return node

    twin = model.__class__.from_config(convert(config))
    twin.set_weights(model.get_weights())
    return twin


def iter_layers(layer) -> list:
    out = [layer]
    for sub in getattr(layer, "layers", []):
        out.extend(iter_layers(sub))
    return out


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clock = Clock(args.max_seconds)
    report = Report(args.out, args)
    work = Path(tempfile.mkdtemp(prefix="alzaudit-gpu-"))
    try:
        return run(args, clock, report, work)
    finally:
        report.save()
        shutil.rmtree(work, ignore_errors=True)
        say(f"\nfigures: {args.out}; total {Clock.elapsed():.1f} s of --max-seconds {args.max_seconds:g}")


def run(args: argparse.Namespace, clock: Clock, report: Report, work: Path) -> int:
    want_gate = "gate" in args.sections
    data = prepare_data(args, work, report)

    started = time.perf_counter()
    import tensorflow as tf
    import keras

    report.data["import_tensorflow_s"] = round(time.perf_counter() - started, 2)
    env = environment(tf, keras, args)
    report.data["environment"] = env
    gpus = env["gpus"]
    used = f"{len(gpus)} GPU(s): " + ", ".join(f"{d['device_name']} (compute capability {d['compute_capability']})"
                                             for d in env["gpu_details"]) if gpus else "CPU only"
    say(f"TensorFlow {tf.__version__} (CUDA build: {env['built_with_cuda']}, {env['build']}), Keras "
        f"{keras.__version__}, Python {env['python']}, {env['cpus']} CPUs")
    say(f"tf.config.list_physical_devices('GPU'): {gpus}")
    say(f"TensorFlow runs on: {used}" + (f"; TF32 for float32: {env['tf32']}" if gpus else ""))
    say(f"import tensorflow: {report.data['import_tensorflow_s']:.1f} s")
    if args.require_gpu and not gpus:
        report.data["errors"].append({"section": "setup", "error": "no GPU visible to TensorFlow"})
        say("bench_gpu: TensorFlow sees no GPU (tf.config.list_physical_devices('GPU') is empty); install its "
            "CUDA build (pip install -e '.[cuda]') or drop --require-gpu")
        return 2
    report.save()

    started = time.perf_counter()
    try:
        trained = load_trained(args) if args.model else None
        x = load_images(data, args.size, args.images, args.seed, report)
        model = build_model(args, x, report, trained)
    except Exception as exc:  # noqa: BLE001 - one line, then stop: nothing else can run
        report.error("model", exc)
        return 1
    report.data["model"]["build_s"] = round(time.perf_counter() - started, 2)
    try:
        report.data["model"]["device"] = str(model.weights[0].value.device)
    except Exception:  # noqa: BLE001
        pass
    info = report.data["model"]
    say(f"model: {info['source']}; built in {info['build_s']:.1f} s"
        + (f", on {info['device']}" if info.get("device") else ""))
    r = info["activations"]
    say(f"  |activation| max {r['activation_absmax']:.3g} at {r['layer']}, logits [{r['logit_min']:.3g}, "
        f"{r['logit_max']:.3g}] (float16 ends at 65,504)")
    say(f"images: {len(x)} at {args.size}^2 ({report.data['data']['source']}); batch {args.batch}, IG on "
        f"{args.ig_images} images, {args.ig_batch} rows per call; {args.measure_seconds:g} s of timed calls each")
    report.save()

    say("\nfloat32:")
    f32: dict = {}
    try:
        f32 = explainer_sections("float32", model, x, args, clock, report, None)
    except Exception as exc:  # noqa: BLE001
        report.error("float32", exc)

    mixed = args.mixed_precision
    if mixed:
        run_mixed(model, x, f32, args, clock, report)
    if want_gate:
        say("\ngate (AuditRun, stage by stage):")
        if clock.left() < 20:
            report.skip("gate", f"{max(clock.left(), 0):.0f} s left")
        else:
            try:
                gate_section(model, data, args, clock, report, work)
            except Exception as exc:  # noqa: BLE001
                report.error("gate", exc)
    if mixed is None:
        run_mixed(model, x, f32, args, clock, report)
    elif mixed is False:
        report.skip("mixed_float16", "--no-mixed-precision")
    return 0


def run_mixed(model, x: np.ndarray, f32: dict, args: argparse.Namespace, clock: Clock, report: Report) -> None:
    try:
        mixed_section(model, x, f32, args, clock, report)
    except Exception as exc:  # noqa: BLE001
        report.error("mixed_float16", exc)


if __name__ == "__main__":
    raise SystemExit(main())
