"""Keep TensorFlow's C++ start-up log out of the console, without hiding its errors.

``TF_CPP_MIN_LOG_LEVEL=2`` hides TensorFlow's INFO and WARNING lines, but TensorFlow 2.20+ prints a few
while its shared libraries load, before that variable is read and before Abseil logging is initialised:

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:1796164684.476502   27085 port.cc:153] oneDNN custom operations are on. ...

(once per library carrying its own copy). ``quiet_tensorflow()`` sets ``TF_CPP_MIN_LOG_LEVEL`` (unless the
user did) and, while ``import tensorflow`` runs, sends the process's stderr (file descriptor 2, where C++
writes) to a temporary file; afterwards it writes back every line except Abseil-format records below that
level and the Abseil banner. Errors (``E…``, ``F…``), Python warnings and anything else pass unchanged.
``ALZAUDIT_TF_LOGS=1`` turns all of this off: TensorFlow then logs as it does by default.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
from contextlib import contextmanager

SHOW_ENV = "ALZAUDIT_TF_LOGS"
DEFAULT_LEVEL = 2  # TensorFlow's scale: 0 INFO, 1 WARNING, 2 ERROR, 3 FATAL; 2 keeps errors visible
ABSL_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# A C++ log record's prefix: Abseil's (severity letter, MMDD, time, thread id, file:line]) as TensorFlow 2.20+
# prints it, or TensorFlow's older own ("2024-08-10 09:16:11.569780: I file:line]").
_ABSL_RECORD = re.compile(r"^(?:([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ "
                          r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ([IWEF]) )[^\s\]]+:\d+\] ")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}


def tf_logs_requested() -> bool:
    """True when the user asked to see TensorFlow's own logs (``ALZAUDIT_TF_LOGS`` set, not 0)."""
    return os.environ.get(SHOW_ENV, "").strip().lower() not in ("", "0", "false", "no")


def min_level() -> int:
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def filter_startup_log(text: str, level: int) -> str:
    """``text`` without Abseil records below ``level`` (and without Abseil's banner when level > 0)."""
    if level <= 0:
        return text
    kept = []
    for line in text.splitlines(keepends=True):
        if line.rstrip("\r\n") == ABSL_BANNER:
            continue
        record = _ABSL_RECORD.match(line)
        if record and _SEVERITY[record.group(1) or record.group(2)] < level:
            continue
        kept.append(line)
    return "".join(kept)


@contextmanager
def filtered_stderr(level: int):
    """Capture file descriptor 2 for the duration, then write it back through ``filter_startup_log``."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable fd 2: nothing to filter
        yield
        return
    capture = tempfile.TemporaryFile()
    try:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            capture.seek(0)
            kept = filter_startup_log(capture.read().decode("utf-8", errors="replace"), level)
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()
    finally:
        os.close(saved)
        capture.close()


class _QuietLoader(importlib.abc.Loader):
    """Runs TensorFlow's own loader inside ``filtered_stderr``; everything else is delegated to it."""

    def __init__(self, loader, level: int):
        self._loader = loader
        self._level = level

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        try:
            with filtered_stderr(self._level):
                self._loader.exec_module(module)
        finally:
            module.__loader__ = self._loader
            if getattr(module, "__spec__", None) is not None:
                module.__spec__.loader = self._loader

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` through the other finders and wraps its loader; idle after that one import."""

    def __init__(self):
        self._busy = False
        self._done = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow" or self._busy or self._done:
            return None
        self._busy = True
        try:
            spec = importlib.util.find_spec(fullname)  # the other finders (this one is busy)
        finally:
            self._busy = False
        if spec is None or spec.loader is None:
            return None
        self._done = True
        spec.loader = _QuietLoader(spec.loader, min_level())
        return spec


def quiet_tensorflow(level: int = DEFAULT_LEVEL) -> bool:
    """Call before TensorFlow is imported (the CLI does, first thing). Returns whether it took effect:
    not with ``ALZAUDIT_TF_LOGS=1`` and not once TensorFlow is already imported."""
    if tf_logs_requested():
        return False
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", str(level))
    if "tensorflow" in sys.modules:
        return False
    if not any(isinstance(finder, _QuietTensorFlowFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowFinder())  # idle after TensorFlow's import
    return True
