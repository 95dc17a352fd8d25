"""The gate under MirroredStrategy equals the single-device gate figure for figure (issue: tf.distribute).

The CPU is split into two logical devices before TensorFlow starts (a plugin loaded with ``-p``), so the
mirrored run has two replicas; both runs go through ``pytest suites/`` in subprocesses.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from suites import DEFAULT_THRESHOLDS, SUITES_DIR
from test_gate import FAST_AUDIT

pytestmark = pytest.mark.slow

SPLIT_CPU = textwrap.dedent('''
    import pytest

    @pytest.hookimpl(tryfirst=True)
    def pytest_configure(config):
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
''')


def _gate(tmp_path: Path, model: Path, data: Path, name: str, *extra) -> dict:
    out = tmp_path / name
    thresholds = tmp_path / "t.toml"
    thresholds.write_text(DEFAULT_THRESHOLDS.read_text().split("[audit]")[0] + FAST_AUDIT.replace(
        "gallery_per_class = 1", "gallery_per_class = 0"))
    (tmp_path / "split_cpu.py").write_text(SPLIT_CPU)
    cmd = [sys.executable, "-m", "pytest", str(SUITES_DIR), "-p", "split_cpu", "--model", str(model), "--data",
           str(data), "--audit-out", str(out), "--thresholds", str(thresholds), "-q", "-p", "no:cacheprovider",
           "-k", "not throughput", *extra]
    env = {**__import__("os").environ, "PYTHONPATH": f"{tmp_path}:{Path(__file__).resolve().parents[2]}"}
    subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    return json.loads((out / "audit.json").read_text())


def _numbers(obj, prefix=""):
    """Flatten every number of a JSON tree into {path: value}."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_numbers(v, f"{prefix}/{k}"))
        return out
    if isinstance(obj, list):
        out = {}
        for i, v in enumerate(obj):
            out.update(_numbers(v, f"{prefix}[{i}]"))
        return out
    return {prefix: float(obj)} if isinstance(obj, (int, float)) and not isinstance(obj, bool) else {}


def test_a_mirrored_audit_equals_the_single_device_audit(tmp_path, oasis_dir):
    from model.manifest import index_dataset, write_manifest
    from model.network import build_classifier
    from model.splits import split_manifest

    split, _ = split_manifest(index_dataset(oasis_dir), seed=0)
    data = write_manifest(split, tmp_path / "split.csv")
    model = tmp_path / "model.keras"
    build_classifier("small", None, 32, seed=0).save(model)
    one = _gate(tmp_path, model, data, "one", "--strategy", "one")
    mirrored = _gate(tmp_path, model, data, "mirrored", "--strategy", "mirrored")
    assert mirrored["run"]["distribute"]["replicas"] == 2 and one["run"]["distribute"]["replicas"] == 1
    assert {c["id"]: c["status"] for c in one["checks"]} == {c["id"]: c["status"] for c in mirrored["checks"]}
    a = _numbers({k: one["figures"][k] for k in ("performance", "controls", "faithfulness", "convergence")})
    b = _numbers({k: mirrored["figures"][k] for k in ("performance", "controls", "faithfulness", "convergence")})
    assert a.keys() == b.keys() and len(a) > 50
    worst = max(abs(a[k] - b[k]) for k in a)
    assert worst < 1e-4, worst  # arrays agree within 1e-5; bootstrap means of them within 1e-4
