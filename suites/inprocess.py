"""``run_gate``: the acceptance gate (``pytest suites/``) in this process, for the CLI, the demo and notebooks."""
from __future__ import annotations

import json
from pathlib import Path

from model.errors import AlzAuditError
from suites import SUITES_DIR


def invocation() -> str:
    """This process's command line as the user typed it (program name without its folder), shell-quoted."""
    import shlex
    import sys

    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"


def run_gate(model: str, data: str | None, out: str, *, split: str = "test", thresholds: str | None = None,
             seed: int = 0, device: str = "auto", input_scale: float = 255.0, classes: str = "canonical",
             unsafe: bool = False, select: str | None = None, quiet: bool = True, baseline: str | None = None,
             strategy: str = "auto", command: str | None = None) -> str:
    """Run ``pytest suites/`` in this process; returns the verdict written to ``out/audit.json``.

    ``command``: the command line the user ran (audit.json records it; default: this process's own)."""
    import pytest

    args = [str(SUITES_DIR), "--model", str(model), *(["--data", str(data)] if data else []),
            "--audit-out", str(out), "--split", split,
            "--seed", str(seed), "--device", device, "--input-scale", f"{input_scale:g}", "--classes", classes,
            "-p", "no:cacheprovider", "--benchmark-disable-gc", "-W", "ignore::DeprecationWarning",
            "--rootdir", str(SUITES_DIR)]
    if thresholds:
        args += ["--thresholds", str(thresholds)]
    if unsafe:
        args.append("--unsafe-load")
    if baseline:
        args += ["--baseline", str(baseline)]
    if strategy != "auto":
        args += ["--strategy", strategy]
    if select:
        args += ["-k", select]
    args.append(f"--command-line={command or invocation()}")  # "=": a command line may start with "-"
    if quiet:
        args += ["-q", "--no-header", "-rN", "--benchmark-quiet"]
    audit_json = Path(out) / "audit.json"
    if audit_json.exists():
        audit_json.unlink()  # never report a verdict left over from an earlier run
    code = pytest.main(args)
    if code == pytest.ExitCode.USAGE_ERROR:
        raise AlzAuditError("the gate refused its inputs (see the ERROR line above)")
    if not audit_json.is_file():
        raise AlzAuditError(f"{audit_json}: the gate wrote no audit (pytest exit code {int(code)})")
    return json.loads(audit_json.read_text())["verdict"]
