"""The audit's heavy arrays on one replica vs all replicas: predictions, Grad-CAM and IG (images/s).

    .venv/bin/python benchmarks/bench_distribute.py [--backbone small] [--size 128] [--images 64]
                                                    [--batch 16] [--ig-steps 16] [--rounds 3] [--cpu-devices 2]

With more than one GPU the replicas are the GPUs (``MirroredStrategy`` over all of them). Without, the CPU is
split into ``--cpu-devices`` logical devices, which share the same cores: the figures then check that the
distributed path works and what its overhead is; they are not a speed-up claim. Random weights and images
(throughput does not depend on what was learned); ``--batch`` is per replica, as in the audit. Each figure
is the best of ``--rounds`` timed runs after one warm-up run (tracing excluded). Scaling efficiency =
(images/s on N replicas) / (N x images/s on one device). The one-device figures use ``strategy=None``,
today's path; the arrays are also compared (max |difference|).
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np


def configure(cpu_devices: int) -> str:
    """Before TensorFlow starts: GPUs if there are several, else ``cpu_devices`` logical CPU devices."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        return f"{len(gpus)} GPUs"
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_devices)
    return f"{cpu_devices} logical CPU devices on {os.cpu_count()} cores"


def best_rate(fn, n_images: int, rounds: int) -> tuple[float, object]:
    result = fn()  # warm-up: tracing
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return n_images / min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="small", choices=["small", "resnet50"])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--ig-images", type=int, default=8)
    parser.add_argument("--ig-steps", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16, help="per replica")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpu-devices", type=int, default=2)
    args = parser.parse_args()

    where = configure(args.cpu_devices)
    import tensorflow as tf

    from audit.distribute import get_strategy, gradcam, integrated_gradients, predict, replicas
    from model.network import build_classifier

    strategy = get_strategy("mirrored")
    with strategy.scope():
        model = build_classifier(args.backbone, None, args.size, seed=0)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (args.images, args.size, args.size, 1)).astype(np.float32)
    ig_images = images[:args.ig_images]
    targets = predict(model, images, batch_size=args.batch).argmax(axis=1)
    n = replicas(strategy)
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    print(f"alzaudit bench_distribute: {args.backbone} {args.size}², {where}, {n} replicas, batch {args.batch} "
          f"per replica; TensorFlow {tf.__version__}")
    if not on_gpu:
        print("CPU only: the replicas are logical devices sharing the same cores, so these figures show the "
              "distributed path's overhead, NOT a speed-up claim.")
    tasks = {
        "predictions": (len(images), lambda s: predict(model, images, batch_size=args.batch, strategy=s)),
        "Grad-CAM": (len(images), lambda s: gradcam(model, images, targets, batch_size=args.batch, strategy=s)),
        f"IG ({args.ig_steps} steps)": (len(ig_images), lambda s: integrated_gradients(
            model, ig_images, targets[:len(ig_images)], steps=args.ig_steps, batch_size=args.batch * 4,
            strategy=s).attributions),
    }
    print(f"{'array':<16} {'one device img/s':>16} {f'{n} replicas img/s':>17} {'speed-up':>8} "
          f"{'efficiency':>10} {'max |diff|':>10}")
    for name, (count, run) in tasks.items():
        one_rate, one = best_rate(lambda: run(None), count, args.rounds)
        all_rate, many = best_rate(lambda: run(strategy), count, args.rounds)
        speedup = all_rate / one_rate
        print(f"{name:<16} {one_rate:>16.1f} {all_rate:>17.1f} {speedup:>7.2f}x {speedup / n:>10.2f} "
              f"{float(np.abs(np.asarray(one) - np.asarray(many)).max()):>10.1e}")


if __name__ == "__main__":
    main()
