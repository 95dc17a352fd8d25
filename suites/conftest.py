"""The acceptance gate as a pytest plugin.

    pytest suites/ --model M.keras --data D [--thresholds T.toml] [--audit-out DIR] [--split test]
                   [--seed 0] [--device cpu|gpu|mps] [--input-scale 255|1] [--classes ORDER] [--unsafe-load]

Session fixtures compute each expensive figure once (the runner also caches arrays on disk). Every
check is recorded into ``DIR/audit.json`` at the end of the session — pass, fail, warn or error.
"""
from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from audit.tflog import quiet_tensorflow  # noqa: E402 - before anything imports TensorFlow

quiet_tensorflow()

import pytest

from model.errors import AlzAuditError, ParameterError
from suites.gate import Gate

GATE_KEY = pytest.StashKey[Gate]()
RUN_KEY = pytest.StashKey[object]()
STARTED_KEY = pytest.StashKey[str]()


def pytest_addoption(parser):
    group = parser.getgroup("alzaudit", "alzaudit acceptance gate")
    group.addoption("--model", help="Keras model file (.keras / .h5) to gate")
    group.addoption("--data", help="dataset folder or manifest.csv (default: the model's run split; an unsplit "
                                   "--data also falls back to it, and is split with --seed only without a run)")
    group.addoption("--split", default="test", help="split to evaluate (default test)")
    group.addoption("--thresholds", default=None, help="thresholds TOML (default suites/thresholds.toml)")
    group.addoption("--audit-out", default="out/audit", help="folder for audit.json and its images")
    group.addoption("--seed", type=int, default=0, help="seed for splits, samples and noise")
    group.addoption("--device", choices=["auto", "cpu", "gpu", "mps"], default="auto",
                    help="device kind whose throughput threshold applies (default: detected)")
    group.addoption("--input-scale", type=float, default=255.0, help="model input range: 255 (raw) or 1")
    group.addoption("--classes", default="canonical",
                    help="model output order: canonical, alphabetical or a comma-separated list")
    group.addoption("--unsafe-load", action="store_true", help="allow Lambda layers / custom code in the model")
    from model.distribute import STRATEGIES, STRATEGY_HELP

    group.addoption("--strategy", choices=list(STRATEGIES), default="auto", help=STRATEGY_HELP)
    group.addoption("--command-line", help="the command line to record in audit.json (run_gate passes the user's; "
                                           "default: this pytest invocation)")
    group.addoption("--baseline", help="the model accepted last time (.keras): [change] rules judge the candidate "
                                       "against it on the same images")


def _usage(message: str):
    raise pytest.UsageError(" ".join(str(message).split()))


def pytest_sessionstart(session):
    """Validate options and load model, data and thresholds up front: one clear line on bad input."""
    config = session.config
    if config.option.collectonly or config.option.help:
        return
    opt = config.option
    started = time.perf_counter()  # the plan's "setup (done)" line counts from here
    if not opt.model:
        _usage("alzaudit gate: --model is required (a .keras file)")
    from audit.plan import plan_audit
    from audit.runner import AuditConfig, AuditRun
    from model.contract import parse_classes
    from suites.thresholds import load_thresholds

    try:
        thresholds = load_thresholds(opt.thresholds)
        if opt.input_scale not in (1.0, 255.0):
            raise AlzAuditError(f"--input-scale: {opt.input_scale:g} (use 255 or 1)")
        from audit.distribute import describe, get_strategy, is_chief, write_dir

        strategy = get_strategy(opt.strategy)
        several_workers = describe(strategy)["workers"] > 1
        if not is_chief(strategy):  # multi-worker: only the chief writes the audit folder
            opt.audit_out = str(write_dir(opt.audit_out, strategy))
        audit_config = AuditConfig.from_settings(thresholds.settings, split=opt.split, seed=opt.seed,
                                                 sigmas=tuple(thresholds.sigmas) or (0.02, 0.05),
                                                 strategy=opt.strategy,
                                                 # a worker that hit its cache would skip a collective call
                                                 **({"cache": False} if several_workers else {}))
        run = AuditRun(opt.model, opt.data, opt.audit_out, audit_config, input_scale=opt.input_scale,
                       classes=parse_classes(opt.classes), unsafe=opt.unsafe_load)
        run.contract  # loads the model and checks outputs against classes
        run.split     # indexes/splits the data and checks the split exists
        if opt.baseline:
            run.with_baseline(opt.baseline, unsafe=opt.unsafe_load)
        plan = plan_audit(run, started=started)
        run.use_plan(plan)
    except ParameterError as exc:  # the gate's options carry the library's parameter names
        _usage(exc.with_flag())
    except AlzAuditError as exc:
        _usage(str(exc))
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("alzaudit plan (predictions and Grad-CAM done; the rest timed on a few images):\n"
                            + plan.text)
    from suites.catalog import expected_check_ids

    device = opt.device if opt.device != "auto" else _device()
    from suites.characteristic import load_record

    has_masks = run.masks is not None and bool(run.masks.any())
    config.stash[GATE_KEY] = Gate(thresholds, expected=expected_check_ids(thresholds.sigmas, device),
                                  bank=load_record(), condition="with_masks" if has_masks else "without_masks")
    config.stash[RUN_KEY] = run
    config.stash[STARTED_KEY] = _now()


def pytest_generate_tests(metafunc):
    if "sigma" in metafunc.fixturenames:
        from suites.thresholds import load_thresholds

        try:
            sigmas = load_thresholds(metafunc.config.option.thresholds).sigmas
        except AlzAuditError:
            sigmas = []
        metafunc.parametrize("sigma", sigmas, ids=[f"sigma={s:g}" for s in sigmas])


@pytest.fixture(scope="session")
def gate(request) -> Gate:
    return request.config.stash[GATE_KEY]


@pytest.fixture(scope="session")
def run(request):
    return request.config.stash[RUN_KEY]


@pytest.fixture(scope="session")
def device_kind(request) -> str:
    chosen = request.config.option.device
    if chosen != "auto":
        return chosen
    from model.train import device_description

    return device_description()["kind"]


def _check_ids(item) -> list[str]:
    ids = []
    for marker in item.iter_markers("check"):
        params = getattr(getattr(item, "callspec", None), "params", {})
        for template in marker.args:
            fields = dict(params)
            if "sigma" in fields:
                from suites.thresholds import sigma_id

                fields["sigma_id"] = sigma_id(fields["sigma"])
            if "{device}" in template:
                fields["device"] = item.config.option.device if item.config.option.device != "auto" else _device()
            ids.append(template.format(**fields))
    return ids


_DEVICE = None


def _device() -> str:
    global _DEVICE
    if _DEVICE is None:
        from model.train import device_description

        _DEVICE = device_description()["kind"]
    return _DEVICE


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    gate = item.config.stash.get(GATE_KEY, None)
    if gate is None or call.excinfo is None or call.when == "teardown":
        return
    if call.excinfo.errisinstance((pytest.fail.Exception, pytest.skip.Exception, AssertionError)):
        return
    message = f"{call.excinfo.typename}: {call.excinfo.value}"
    for check_id in _check_ids(item):
        gate.error(check_id, message)
    if report.failed:
        report.longrepr = f"ERROR in {item.name}: {' '.join(message.split())[:500]}"


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    gate = config.stash.get(GATE_KEY, None)
    run = config.stash.get(RUN_KEY, None)
    if gate is None or run is None:
        return
    interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
    gate.finish("not run: the session was interrupted before it" if interrupted else
                "not run: deselected (-k / -m) or skipped before it reported")
    from audit.writer import GateOutcome, write_audit

    verdict = gate.verdict()
    outcome = GateOutcome(
        verdict=verdict, fail_on_warn=gate.thresholds.fail_on_warn, checks=gate.ordered(),
        started=config.stash.get(STARTED_KEY, _now()), finished=_now(), seed=config.option.seed,
        thresholds_file=str(run_thresholds_path(config)), strategy=config.option.strategy,
        command=config.option.command_line or shlex.join(["pytest", *config.invocation_params.args]),
        throughput=config.stash.get(THROUGHPUT_KEY, None))
    path = write_audit(Path(config.option.audit_out) / "audit.json", run, outcome)
    if verdict != "PASS" and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED  # only a complete PASS exits 0
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        counts = {s: sum(1 for c in gate.checks.values() if c["status"] == s)
                  for s in ("PASS", "WARN", "FAIL", "ERROR", "NOT_APPLICABLE", "NOT_RUN")}
        summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v or k in ("PASS", "FAIL"))
        reporter.write_sep("=", f"alzaudit gate: {verdict} ({summary}) — {path}", red=verdict != "PASS",
                           green=verdict == "PASS")


THROUGHPUT_KEY = pytest.StashKey[dict]()


def run_thresholds_path(config) -> Path:
    from suites import DEFAULT_THRESHOLDS

    return Path(config.option.thresholds) if config.option.thresholds else DEFAULT_THRESHOLDS


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def pytest_configure(config):
    if getattr(config.option, "strategy", "auto") == "multiworker" and config.option.model:
        from audit.distribute import get_strategy

        try:  # a multi-worker strategy must exist before anything else starts TensorFlow's runtime
            get_strategy("multiworker")
        except AlzAuditError as exc:
            _usage(str(exc))
    config.addinivalue_line("markers", "check(id): the audit.json check id(s) this test decides")
