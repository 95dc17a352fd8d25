"""``alzaudit explain``: heatmap overlays for a few images, labelled with the model's prediction.

Writes ``<stem>_<method>.png`` (overlay at the image's own resolution, with the predicted class and its
probability drawn on it) and ``explanations.csv`` into ``--out``. TensorFlow is imported only in ``run``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

METHODS = {"gradcam": "gradcam", "gradcam++": "gradcampp", "ig": "ig"}  # method -> file-name tag
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def register(top, data) -> None:
    p = top.add_parser("explain", help="write Grad-CAM / Grad-CAM++ / Integrated Gradients overlays for images")
    p.add_argument("--model", required=True, help="trained model (.keras)")
    p.add_argument("--images", required=True, nargs="+", metavar="PATH",
                   help="image files, or folders whose images are all explained")
    p.add_argument("--method", default="gradcam", help="gradcam (default), gradcam++ or ig")
    p.add_argument("--out", required=True, help="folder for the overlays and explanations.csv")
    p.add_argument("--layer", help="Grad-CAM layer path, e.g. resnet50/conv5_block3_out (default: last 4-D layer)")
    p.add_argument("--target", help="explain this class (name or index) instead of the predicted one")
    p.add_argument("--input-scale", type=float, choices=[255.0, 1.0], default=255.0,
                   help="pixel range the model expects: 255 (raw, the project's convention) or 1 (divided by 255)")
    p.add_argument("--size", type=int, help="input size for models without a fixed one")
    p.add_argument("--steps", type=int, default=32, help="IG: intervals of the path quadrature (default 32)")
    p.add_argument("--ig-scheme", default="trapezoid", choices=["trapezoid", "graded", "clenshaw-curtis"],
                   help="IG nodes: equal steps (default), graded (denser near the baseline) or Clenshaw-Curtis")
    p.add_argument("--baseline", default="black", choices=["black", "blur"], help="IG baseline (default black)")
    p.add_argument("--colormap", default="jet", help="OpenCV colormap name (default jet)")
    p.add_argument("--alpha", type=float, default=0.4, help="heatmap opacity in [0, 1] (default 0.4)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--unsafe-load", action="store_true", help="allow Lambda layers / custom code in the model file")
    p.set_defaults(func=run)


def expand_images(paths: list[str]) -> list[Path]:
    """Files as given plus the images inside any folder, sorted; one-line errors for missing paths."""
    from model.errors import AlzAuditError

    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not inside:
                raise AlzAuditError(f"{path}: folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            found.extend(inside)
        elif path.is_file():
            found.append(path)
        else:
            raise AlzAuditError(f"{path}: image file not found")
    return found


def class_names(n_classes: int) -> list[str]:
    from model.classes import CLASSES

    return list(CLASSES) if n_classes == len(CLASSES) else [f"class{i}" for i in range(n_classes)]


def parse_target(value: str | None, names: list[str]) -> int | None:
    from model.errors import AlzAuditError

    if value is None:
        return None
    if value in names:
        return names.index(value)
    if value.isdigit() and int(value) < len(names):
        return int(value)
    raise AlzAuditError(f"--target: unknown class '{value}' (choose {', '.join(names)} or 0..{len(names) - 1})")


def run(args: argparse.Namespace) -> int:
    from model.errors import AlzAuditError

    if args.method not in METHODS:
        raise AlzAuditError(f"--method: unknown method '{args.method}' (choose {', '.join(METHODS)})")
    if args.batch_size < 1:
        raise AlzAuditError(f"--batch-size: must be at least 1, got {args.batch_size}")
    from model.fileio import read_grayscale

    paths = expand_images(args.images)
    originals = [read_grayscale(p) for p in paths]  # fail on a corrupt file before loading TensorFlow

    from model.network import load_model

    model = load_model(args.model, unsafe=args.unsafe_load)
    return _explain_all(model, paths, originals, args)


def _model_inputs(model, originals, args):
    """Resize (INTER_AREA) and scale the images to what the model takes: float32 (N, S, S, C)."""
    import cv2
    import numpy as np

    from audit.explain.layers import input_shape
    from model.errors import AlzAuditError

    shape = input_shape(model)
    if len(shape) != 3 or shape[-1] not in (1, 3):
        raise AlzAuditError(f"{args.model}: model input {shape} is not an image (H, W, 1 or 3)")
    height, width = shape[0] or args.size, shape[1] or args.size
    if not height or not width:
        raise AlzAuditError(f"{args.model}: the model has no fixed input size; pass --size")
    batch = np.stack([cv2.resize(im, (width, height), interpolation=cv2.INTER_AREA) for im in originals])
    batch = batch.astype(np.float32)[..., None] * (args.input_scale / 255.0)
    return np.repeat(batch, shape[-1], axis=-1) if shape[-1] == 3 else batch


def _explain_all(model, paths, originals, args) -> int:
    import numpy as np
    from rich.progress import Progress

    from audit.explain import class_activation_maps, integrated_gradients, predict
    from audit.explain.layers import n_outputs, resolve_layer

    names = class_names(n_outputs(model))
    target = parse_target(args.target, names)
    if args.method != "ig":
        resolve_layer(model, args.layer)  # a wrong --layer or a conv-less model fails before any work
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, taken = [], set()
    with Progress(transient=True) as progress:
        task = progress.add_task(f"{args.method}", total=len(paths))
        for start in range(0, len(paths), args.batch_size):
            chunk = slice(start, start + args.batch_size)
            images = _model_inputs(model, originals[chunk], args)
            probs = predict(model, images, batch_size=args.batch_size)
            targets = None if target is None else np.full(len(images), target)
            errors = [None] * len(images)
            if args.method == "ig":
                result = integrated_gradients(model, images, targets, steps=args.steps, baseline=args.baseline,
                                              batch_size=max(args.batch_size, args.steps + 1),
                                              scheme=args.ig_scheme)
                maps, explained, errors = result.heatmaps, result.targets, list(result.completeness_error)
            else:
                maps, explained = class_activation_maps(model, images, targets, method=args.method,
                                                        layer=args.layer, batch_size=args.batch_size)
            for i, path in enumerate(paths[chunk]):
                predicted = int(probs[i].argmax())
                out_path = _unique(out_dir, path.stem, METHODS[args.method], taken)
                _write_overlay(out_path, originals[start + i], maps[i], f"{names[predicted]} {probs[i, predicted]:.2f}",
                               args)
                rows.append({"image": str(path), "overlay": out_path.name, "method": args.method,
                             "predicted": names[predicted], "probability": f"{probs[i, predicted]:.4f}",
                             "explained": names[int(explained[i])],
                             "completeness_error": "" if errors[i] is None else f"{errors[i]:.4f}"})
                progress.advance(task)
    _write_csv(out_dir / "explanations.csv", rows)
    print(f"wrote {len(rows)} overlays and explanations.csv to {out_dir}")
    return 0


def _unique(out_dir: Path, stem: str, tag: str, taken: set) -> Path:
    name, n = f"{stem}_{tag}.png", 2
    while name in taken:
        name, n = f"{stem}-{n}_{tag}.png", n + 1
    taken.add(name)
    return out_dir / name


def _write_overlay(path: Path, original, heatmap, label: str, args) -> None:
    import cv2

    from audit.explain import overlay
    from model.errors import AlzAuditError
    from model.fileio import atomic_write_bytes

    rgb = overlay(original, heatmap, colormap=args.colormap, alpha=args.alpha)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    scale = max(0.3, min(bgr.shape[:2]) / 400.0)
    thickness = max(1, int(round(scale * 2)))
    origin = (4, 4 + int(22 * scale))
    cv2.putText(bgr, label, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
    cv2.putText(bgr, label, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    ok, data = cv2.imencode(".png", bgr)
    if not ok:
        raise AlzAuditError(f"{path}: could not encode the overlay")
    atomic_write_bytes(path, data.tobytes())


def _write_csv(path: Path, rows: list[dict]) -> None:
    import csv
    import io

    from model.fileio import atomic_write_text

    buffer = io.StringIO()
    fields = ["image", "overlay", "method", "predicted", "probability", "explained", "completeness_error"]
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
