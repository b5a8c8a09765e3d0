"""A native crash (or a kill -9) of the CLI is reported in one line naming TensorFlow's log;
a normal exit, error or not, adds nothing. The log is a private file of each process, created
new: a symlink planted in the temporary directory is never followed, and two processes never
share a log."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time

import pytest

SCRIPT = """
import os, signal, sys, time
import textgen.cli as cli
sys.argv = ["textgen", "info", "no-such-run", "--runs-dir", "nowhere"]
mode = {mode!r}
normal = cli.main


def main():
    os.write(2, f"native line of process {{os.getpid()}}\\n".encode())  # as TensorFlow's C++ code logs
    if mode == "slow-abort":  # crash a moment later, so that two such processes overlap
        time.sleep(1.5)
    if mode.endswith("abort"):
        os.abort()  # what TensorFlow's C++ code does on a failed check
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    normal()


cli.main = main
cli.entry()
"""


def _env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TEXTGEN_TF_LOGS"}
    env["TMPDIR"] = str(tmp_path)
    return env


def _run(mode: str, tmp_path) -> subprocess.CompletedProcess:
    # capture_output waits for the watcher too: it holds the stderr pipe until it has reported
    return subprocess.run([sys.executable, "-c", SCRIPT.format(mode=mode)], capture_output=True,
                          text=True, timeout=60, env=_env(tmp_path), cwd=tmp_path)


CRASH_LINE = re.compile(r"Error: textgen ended abruptly \(a native crash inside TensorFlow, or it was "
                        r"killed\); TensorFlow's own messages are in (\S+)")


def _logs(tmp_path) -> list:
    return sorted(tmp_path.glob("textgen-tensorflow-*"))


@pytest.mark.parametrize("mode, sig", [("abort", signal.SIGABRT), ("kill", signal.SIGKILL)])
def test_native_crash_is_reported_in_one_line_naming_the_log(mode, sig, tmp_path):
    proc = _run(mode, tmp_path)
    assert proc.returncode == -sig
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and CRASH_LINE.fullmatch(lines[0]), proc.stderr
    log = CRASH_LINE.fullmatch(lines[0]).group(1)
    assert _logs(tmp_path) == [tmp_path / os.path.basename(log)]  # kept, in $TMPDIR
    assert os.path.basename(log).startswith(f"textgen-tensorflow-{os.getuid()}-")
    assert open(log).read().startswith("native line of process ")  # fd 2 went there
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600  # private


def test_a_normal_exit_reports_nothing_more(tmp_path):
    proc = _run("normal", tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "Error: no run found at no-such-run (looked for no-such-run/run.json and "
        "nowhere/no-such-run/run.json); `textgen info latest` shows the newest run"]
    deadline = time.monotonic() + 10  # the watcher removes the log once the process has ended
    while _logs(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _logs(tmp_path) == []


def test_a_symlink_planted_at_the_old_log_path_is_not_followed(tmp_path):
    """Earlier versions opened $TMPDIR/textgen-tensorflow-<uid>.log with O_TRUNC: a symlink there
    (another user's, in a shared /tmp) truncated and overwrote whatever it pointed to."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    planted = tmp_path / f"textgen-tensorflow-{os.getuid()}.log"
    planted.symlink_to(victim)
    proc = _run("abort", tmp_path)
    assert proc.returncode == -signal.SIGABRT
    log = CRASH_LINE.fullmatch(proc.stderr.strip()).group(1)
    assert victim.read_text() == "precious\n"
    assert planted.is_symlink() and os.path.realpath(log) == log != str(planted)


def test_two_processes_never_share_a_log(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT.format(mode="slow-abort")], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(tmp_path),
                              cwd=tmp_path) for _ in range(2)]
    results = [(p.pid, p.communicate(timeout=60)[1]) for p in procs]
    logs = {pid: CRASH_LINE.fullmatch(err.strip()).group(1) for pid, err in results}
    assert len(set(logs.values())) == 2, logs
    for pid, log in logs.items():  # each log holds its own process's line, untruncated
        assert open(log).read().splitlines()[0] == f"native line of process {pid}"
