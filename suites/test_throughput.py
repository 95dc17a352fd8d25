"""Throughput with pytest-benchmark: compiled inference and batched Grad-CAM, images per second.

The threshold is picked by the detected device (CPU, CUDA GPU, Apple GPU through tensorflow-metal).
Benchmark JSON is stored per TensorFlow version under ``<audit-out>/benchmarks/`` so runs of different
environments are never compared with each other.
"""
import json

import numpy as np
import pytest

from suites.conftest import THROUGHPUT_KEY


@pytest.fixture(scope="module")
def batch(run):
    size = run.config.batch_size
    x = run.inputs[:size]
    return np.resize(x, (size, *x.shape[1:])) if len(x) < size else x


def _record(request, run, device_kind, key: str, rate: float, stats) -> None:
    import tensorflow as tf

    figures = request.config.stash.get(THROUGHPUT_KEY, None) or {"device_kind": device_kind,
                                                                   "batch_size": run.config.batch_size}
    figures[f"{key}_images_per_s"] = rate
    request.config.stash[THROUGHPUT_KEY] = figures
    folder = run.out_dir / "benchmarks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"tf-{tf.__version__}.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    saved[key] = {"images_per_s": rate, "mean_s": stats.mean, "stddev_s": stats.stddev, "rounds": stats.rounds,
                  "device_kind": device_kind}
    path.write_text(json.dumps(saved, indent=2))


from audit.plan import THROUGHPUT_ROUNDS  # noqa: E402 - timed batches per figure, after one warm-up


def _measure(benchmark, fn, warm_up) -> tuple[float, object]:
    # Tracing and compilation are not throughput. Two images trace what a batch needs (the Grad-CAM step
    # takes any batch size; the forward pass relaxes to one after two sizes): a whole warm-up batch only
    # repeated work the stages had already compiled.
    warm_up()
    benchmark.pedantic(fn, rounds=THROUGHPUT_ROUNDS, iterations=1, warmup_rounds=0)
    return benchmark.stats.stats


@pytest.mark.check("throughput.inference.{device}")
def test_inference_throughput(gate, run, batch, benchmark, device_kind, request):
    from model.evaluate import predict

    stats = _measure(benchmark, lambda: predict(run.model, batch, batch_size=len(batch)),
                     lambda: predict(run.model, batch[:2], batch_size=len(batch)))
    rate = len(batch) / stats.mean
    _record(request, run, device_kind, "inference", rate, stats)
    gate.check(f"throughput.inference.{device_kind}", rate, detail=f"batch {len(batch)}, {device_kind}")


@pytest.mark.check("throughput.gradcam.{device}")
def test_gradcam_throughput(gate, run, batch, benchmark, device_kind, request):
    targets = np.zeros(len(batch), dtype=int)
    stats = _measure(benchmark, lambda: run.gradcam(batch, targets), lambda: run.gradcam(batch[:2], targets[:2]))
    rate = len(batch) / stats.mean
    _record(request, run, device_kind, "gradcam", rate, stats)
    gate.check(f"throughput.gradcam.{device_kind}", rate, detail=f"batch {len(batch)}, {device_kind}")
