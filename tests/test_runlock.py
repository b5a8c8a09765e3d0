"""Tests for textgen.runlock: one trainer per run, a live owner named by PID, a dead one's lock
taken over (through the CLI, on a copy of the session's tiny run)."""

import os
import subprocess
import sys

import pytest
from conftest import describe, invoke, tree_hashes

from textgen.errors import TextgenError
from textgen.runlock import LOCK_FILE, RunLock, lock_owner


def test_live_lock_is_refused_with_its_pid_then_released(copy_run, tmp_path):
    run_dir = copy_run()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         ("import sys\nfrom textgen.runlock import RunLock\n"
          f"with RunLock({str(run_dir)!r}):\n    print('locked', flush=True)\n    sys.stdin.read()\n")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = tree_hashes(run_dir)
        result = invoke("train", "--resume", "--name", run_dir.name, "--runs-dir", run_dir.parent,
                        "--steps", 6, "--quiet")
        assert result.exit_code == 2, describe(result)
        assert result.stderr == (f"Error: run {run_dir} is being trained by process {holder.pid}; "
                                 "wait for it or stop it\n")
        assert tree_hashes(run_dir) == before
        assert lock_owner(run_dir) == holder.pid
        with pytest.raises(TextgenError, match=f"process {holder.pid}"), RunLock(run_dir):
            pass
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert not (run_dir / LOCK_FILE).exists()  # released and removed by its owner
    result = invoke("train", "--resume", "--name", run_dir.name, "--runs-dir", run_dir.parent,
                    "--steps", 6, "--quiet")
    assert result.exit_code == 0, describe(result)


def test_stale_lock_of_a_dead_process_is_taken_over(copy_run):
    run_dir = copy_run()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_dir / LOCK_FILE).write_text(f"{dead.pid}\n")
    assert lock_owner(run_dir) is None
    result = invoke("train", "--resume", "--name", run_dir.name, "--runs-dir", run_dir.parent,
                    "--steps", 6, "--quiet")
    assert result.exit_code == 0, describe(result)
    assert "stopped (budget) at step 6" in result.stderr
    assert not (run_dir / LOCK_FILE).exists()


def test_lock_is_exclusive_within_one_process_too(tmp_path):
    with RunLock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text().split() == [str(os.getpid())]
        with pytest.raises(TextgenError, match=f"process {os.getpid()}"), RunLock(tmp_path):
            pass
    assert not (tmp_path / LOCK_FILE).exists()
    with RunLock(tmp_path):  # free again
        pass
