"""A quiet console: the CLI prints its own progress, not TensorFlow's C++ log (audit/tflog.py)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from audit.tflog import ABSL_BANNER, filter_startup_log

ROOT = Path(__file__).resolve().parents[2]
# What TensorFlow's C++ runtime prints: Abseil-format records (I/W/E/F, MMDD, time, thread, file:line]),
# Abseil's banner, and the known start-up and tf.data lines.
TF_LOG_PATTERNS = [
    re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\]"),
    re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] \S+:\d+\]"),
    re.compile(re.escape("absl::InitializeLog()")),
    re.compile("oneDNN custom operations are on"),
    re.compile("cpu_feature_guard"),
    re.compile("NodeDef mentions attribute"),
]


def tf_log_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(p.search(line) for p in TF_LOG_PATTERNS)]


def user_env(**extra) -> dict:
    """The environment of a user's shell: none of the test session's TensorFlow settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "ALZAUDIT_TF_LOGS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def run(args: list[str], **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=user_env(**env), capture_output=True, text=True,
                          timeout=600)


def test_filter_drops_info_and_banner_keeps_errors_and_everything_else():
    text = (f"{ABSL_BANNER}\n"
            "I0000 00:00:1796164684.476502   27085 port.cc:153] oneDNN custom operations are on.\n"
            "W0101 12:00:01.000001   27085 some.cc:1] a warning\n"
            "2024-08-10 09:16:11.569780: I tensorflow/core/util/port.cc:113] oneDNN, older TensorFlow\n"
            "E0000 00:00:1796164684.5   27085 real.cc:9] a real error\n"
            "/x/y.py:3: UserWarning: a Python warning\n"
            "plain text\n")
    kept = filter_startup_log(text, 2)
    assert kept == ("E0000 00:00:1796164684.5   27085 real.cc:9] a real error\n"
                    "/x/y.py:3: UserWarning: a Python warning\nplain text\n")
    assert filter_startup_log(text, 0) == text  # TF_CPP_MIN_LOG_LEVEL=0: everything
    assert "a warning" in filter_startup_log(text, 1) and "oneDNN" not in filter_startup_log(text, 1)


def test_capture_replays_errors_and_lets_exceptions_through():
    code = ("import os\nfrom audit.tflog import filtered_stderr\nwith filtered_stderr(2):\n"
            "    os.write(2, b'I0000 00:00:1.5   1 port.cc:1] chatter\\nE0000 00:00:1.5   1 real.cc:2] broken\\n')\n"
            "    raise RuntimeError('import failed')\n")
    result = run(["-c", code])
    assert result.returncode == 1
    assert "chatter" not in result.stderr
    assert "real.cc:2] broken" in result.stderr and "RuntimeError: import failed" in result.stderr


def test_tensorflow_import_is_quiet_and_logs_return_on_request():
    code = ("import os; from audit.tflog import quiet_tensorflow; quiet_tensorflow(); import tensorflow as tf; "
            "print('imported', tf.__version__, os.environ.get('TF_CPP_MIN_LOG_LEVEL'))")
    quiet = run(["-c", code])
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.split()[-1] == "2"  # errors (E, F) stay visible
    assert tf_log_lines(quiet.stderr + quiet.stdout) == []
    loud = run(["-c", code], ALZAUDIT_TF_LOGS="1")
    assert loud.returncode == 0, loud.stderr
    # The opt-out leaves TensorFlow's logging as it is by default (whatever this build prints at start-up).
    assert loud.stdout.split()[-1] == "None"


@pytest.mark.slow
def test_cli_training_prints_only_its_own_progress(oasis_dir, tmp_path):
    """A real CLI run that imports TensorFlow and trains one epoch through tf.data with augmentation."""
    result = run(["-m", "alzaudit.cli", "train", "--data", str(oasis_dir), "--out", str(tmp_path / "run"),
                  "--input-size", "32", "--epochs2", "1", "--batch-size", "8"])
    assert result.returncode == 0, result.stderr
    assert tf_log_lines(result.stderr + result.stdout) == []
    assert "phase 2 epoch 1/1" in result.stdout and "final model:" in result.stdout
    assert (tmp_path / "run" / "model.keras").is_file()
