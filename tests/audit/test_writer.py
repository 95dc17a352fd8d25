"""The one audit.json writer: artefacts written and replaced by their paths, the gate's outcome copied as
handed, and a document written (and schema-valid) even when every block of the run fails."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from audit.config import AuditConfig
from audit.serialize import Artefact
from audit.writer import GateOutcome, write_artefacts, write_audit
from model.errors import AlzAuditError


def test_artefacts_are_written_and_replaced_by_their_paths(tmp_path):
    source = tmp_path / "curves.png"
    source.write_bytes(b"not really a png")
    value = {"a": [Artefact("gallery/x.png", np.zeros((4, 5, 3), np.uint8)), 3],
             "b": {"c": Artefact("sample.npz", arrays={"maps": np.ones((2, 2), np.float16)})},
             "d": Artefact("copied.png", source=source), "e": "text"}
    out = write_artefacts(value, tmp_path / "audit")
    assert out == {"a": ["gallery/x.png", 3], "b": {"c": "sample.npz"}, "d": "copied.png", "e": "text"}
    import cv2

    assert cv2.imread(str(tmp_path / "audit" / "gallery" / "x.png")).shape == (4, 5, 3)
    assert np.load(tmp_path / "audit" / "sample.npz")["maps"].dtype == np.float16
    assert (tmp_path / "audit" / "copied.png").read_bytes() == b"not really a png"
    json.dumps(out)  # nothing but JSON values is left


class BrokenRun:
    """A run whose model and data cannot be loaded: every block of audit.json fails to build."""

    def __init__(self, folder: Path):
        self.model_path, self.data, self.out_dir = folder / "missing.keras", folder / "missing.csv", folder
        self.classes = ("NonDemented", "VeryMildDemented", "MildDemented", "ModerateDemented")
        self.config, self.timings, self.errors, self.plan, self.baseline = AuditConfig(), {}, {}, None, None

    def has(self, name: str) -> bool:
        return False

    def __getattr__(self, name):
        raise AlzAuditError(f"{self.model_path}: file not found")


def test_a_document_is_written_when_every_block_fails(tmp_path):
    checks = [{"id": "performance.accuracy", "title": "Accuracy", "group": "performance", "value": None,
               "threshold": 0.7, "direction": "min", "severity": "fail", "status": "ERROR",
               "message": "not computed", "cites": [], "basis": "value"}]
    outcome = GateOutcome(verdict="FAIL", fail_on_warn=False, checks=checks, started="2026-12-03T00:00:00+00:00",
                          finished="2026-12-03T00:01:00+00:00", seed=7, thresholds_file="t.toml",
                          command="alzaudit audit --model m", throughput={"device_kind": "cpu", "batch_size": 32})
    path = write_audit(tmp_path / "audit.json", BrokenRun(tmp_path), outcome)
    document = json.loads(path.read_text())
    assert document["verdict"] == "FAIL" and document["checks"] == checks
    assert document["model"]["sha256"] is None and document["data"]["counts"] == {}
    assert document["gallery"] is None and document["heatmap_sample"] is None
    assert document["figures"]["throughput"] == outcome.throughput
    assert document["run"]["seed"] == 7 and document["run"]["command"] == "alzaudit audit --model m"
    assert {"gallery", "heatmap_sample"} <= set(document["run"]["errors"])
    from audit.schema_io import validate_audit

    validate_audit(document)


def test_the_ig_overlay_is_scaled_for_the_eye_not_for_the_figures():
    from audit.serialize import visible

    heat = np.zeros((10, 10), np.float32)
    heat[0, 0], heat[1:3, 1:3] = 1.0, 0.05  # one hot pixel hides everything else when scaled by the max
    shown = visible(heat, percentile=50)
    assert shown[1, 1] == 1.0 and shown.max() == 1.0 and shown.min() == 0.0
    assert np.array_equal(visible(np.zeros((4, 4))), np.zeros((4, 4)))
