"""Steps of the tox TensorFlow matrix (see tox.ini): build the shared model, gate it, compare audits."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from alzaudit.cli import main as alzaudit


def build(shared: Path) -> int:
    data, run = shared / "data", shared / "run"
    if (run / "model.keras").is_file():
        print(f"reusing {run / 'model.keras'}")
        return 0
    if not (data / "manifest.csv").is_file():
        if alzaudit(["data", "synth", "--out", str(data), "--subjects", "80", "--slices-per-subject", "4",
                     "--seed", "0"]):
            return 1
    if not (data / "split_manifest.csv").is_file():
        if alzaudit(["data", "split", str(data / "manifest.csv"), "--out", str(data / "split_manifest.csv")]):
            return 1
    resume = ["--resume"] if (run / "state.json").is_file() else []
    return alzaudit(["train", "--data", str(data / "split_manifest.csv"), "--out", str(run), "--input-size", "64",
                     "--epochs2", "25", "--patience", "25", "--lr-schedule", "cosine", "--augment-noise", "0.05",
                     "--batch-size", "16", "--seed", "0", *resume])


def gate(shared: Path, env: str) -> int:
    """Gate the shared model; the env fails only when the gate could not run or a check crashed (ERROR).

    A FAIL verdict of the tiny matrix model is a figure to compare across versions, not a broken env.
    """
    model, data = shared / "run" / "model.keras", shared / "data" / "split_manifest.csv"
    if not model.is_file():
        print(f"{model}: missing; run `tox -e build-model` first", file=sys.stderr)
        return 2
    out = shared / "audits" / env
    started = time.time()
    code = alzaudit(["audit", "--model", str(model), "--data", str(data), "--out", str(out), "--no-pdf"])
    audit_json = out / "audit.json"
    if not audit_json.is_file():
        print(f"{env}: the gate wrote no audit.json (exit {code})", file=sys.stderr)
        return 1
    document = json.loads(audit_json.read_text())
    errors = [c["id"] for c in document["checks"] if c["status"] == "ERROR"]
    summary = {"env": env, "verdict": document["verdict"], "seconds": round(time.time() - started, 1),
               "tensorflow": document["run"]["versions"]["tensorflow"], "keras": document["run"]["versions"]["keras"],
               "statuses": {c["id"]: c["status"] for c in document["checks"]},
               "accuracy": (document.get("figures") or {}).get("performance", {}).get("accuracy")}
    (out / "matrix_summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("env", "verdict", "tensorflow", "keras", "accuracy", "seconds")}))
    if errors:
        print(f"{env}: checks in ERROR: {', '.join(errors)}", file=sys.stderr)
        return 1
    return 0


def drift(shared: Path, reference: str) -> int:
    audits = shared / "audits"
    ref = audits / reference / "audit.json"
    if not ref.is_file():
        print(f"{ref}: missing; run `tox -e {reference}` first", file=sys.stderr)
        return 2
    worst = 0
    for env_dir in sorted(p for p in audits.iterdir() if p.is_dir() and p.name != reference):
        other = env_dir / "audit.json"
        if not other.is_file():
            print(f"{env_dir.name}: no audit.json, skipped")
            continue
        print(f"== {env_dir.name} vs {reference}")
        worst = max(worst, alzaudit(["drift", str(other), str(ref), "--json", str(env_dir / "drift.json")]))
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("step", choices=["build", "gate", "drift"])
    parser.add_argument("--shared", required=True, type=Path)
    parser.add_argument("--env", default="")
    parser.add_argument("--reference", default="tf221")
    args = parser.parse_args()
    if args.step == "build":
        return build(args.shared)
    if args.step == "gate":
        return gate(args.shared, args.env)
    return drift(args.shared, args.reference)


if __name__ == "__main__":
    sys.exit(main())
