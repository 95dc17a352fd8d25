"""Training and inference throughput of both backbones at batch 32 (images per second).

    .venv/bin/python benchmarks/bench_training.py [--steps 5] [--backbones small,resnet50]

Random weights and random images: throughput does not depend on what the network has learned. Each
figure is the median of timed steps after one warm-up step (tracing is reported separately). The
baseline printed beside inference is Keras' ``model.predict``, measured in the same run.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np


def bench(backbone: str, size: int, steps: int, batch: int = 32) -> dict:
    import keras
    import tensorflow as tf

    from model.evaluate import predict
    from model.network import build_classifier
    from model.train import set_trainable

    model = build_classifier(backbone, None, size, seed=0)
    set_trainable(model, 2, pretrained=False)
    model.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy")
    x = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 1)).astype("float32")
    y = np.arange(batch) % 4

    def timed(fn) -> tuple[float, float]:
        start = time.perf_counter()
        fn()
        first = time.perf_counter() - start
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return batch / float(np.median(times)), first

    train_rate, train_first = timed(lambda: model.train_on_batch(x, y))
    infer_rate, infer_first = timed(lambda: predict(model, x, batch_size=batch))
    predict_rate, _ = timed(lambda: model.predict(x, batch_size=batch, verbose=0))
    return {"backbone": backbone, "input": size, "train_img_s": train_rate, "train_first_s": train_first,
            "infer_img_s": infer_rate, "infer_first_s": infer_first, "keras_predict_img_s": predict_rate,
            "device": tf.config.list_physical_devices("GPU") and "gpu" or "cpu"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--backbones", default="small,resnet50")
    args = parser.parse_args()
    sizes = {"small": 128, "resnet50": 224}
    print(f"{'backbone':<9} {'input':>5} {'train img/s':>11} {'infer img/s':>11} {'predict() img/s':>15} "
          f"{'compiled/predict':>16} {'first train step s':>18}")
    for name in args.backbones.split(","):
        r = bench(name, sizes[name], args.steps)
        print(f"{r['backbone']:<9} {r['input']:>5} {r['train_img_s']:>11.1f} {r['infer_img_s']:>11.1f} "
              f"{r['keras_predict_img_s']:>15.1f} {r['infer_img_s'] / r['keras_predict_img_s']:>16.2f} "
              f"{r['train_first_s']:>18.1f}")


if __name__ == "__main__":
    main()
