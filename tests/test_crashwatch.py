"""A native crash (or a kill -9) of the CLI is reported in one line naming TensorFlow's log;
a normal exit, error or not, adds nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

SCRIPT = """
import os, signal, sys
import textgen.cli as cli
sys.argv = ["textgen", "info", "no-such-run", "--runs-dir", "nowhere"]
mode = {mode!r}
if mode == "abort":
    cli.main = lambda: os.abort()  # what TensorFlow's C++ code does on a failed check
elif mode == "kill":
    cli.main = lambda: os.kill(os.getpid(), signal.SIGKILL)
cli.entry()
"""


def _run(mode: str, tmp_path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TEXTGEN_TF_LOGS"}
    env["TMPDIR"] = str(tmp_path)
    # capture_output waits for the watcher too: it holds the stderr pipe until it has reported
    return subprocess.run([sys.executable, "-c", SCRIPT.format(mode=mode)], capture_output=True,
                          text=True, timeout=60, env=env, cwd=tmp_path)


@pytest.mark.parametrize("mode, sig", [("abort", signal.SIGABRT), ("kill", signal.SIGKILL)])
def test_native_crash_is_reported_in_one_line_naming_the_log(mode, sig, tmp_path):
    proc = _run(mode, tmp_path)
    assert proc.returncode == -sig
    lines = proc.stderr.splitlines()
    log = tmp_path / f"textgen-tensorflow-{os.getuid()}.log"
    assert lines == [f"Error: textgen ended abruptly (a native crash inside TensorFlow, or it was killed); "
                     f"TensorFlow's own messages are in {log}"], proc.stderr
    assert log.is_file()


def test_a_normal_exit_reports_nothing_more(tmp_path):
    proc = _run("normal", tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "Error: no run found at no-such-run (looked for no-such-run/run.json and "
        "nowhere/no-such-run/run.json); `textgen info latest` shows the newest run"]
