"""Faults through real `python -m textgen train` processes: SIGKILL at random moments (including in
the middle of checkpoint writes), SIGINT and SIGTERM, and a second trainer on a run that a live
process trains, and the lock file a killed trainer leaves behind. After every fault the run must load (`textgen sample`) and `train --resume` must
continue it; at the end the run must hold the same weights and validation history as one trained
in one go with the same seed.

Bounded: the kill moments come from a seeded RNG, there are KILLS of them, every process wait has a
timeout, and the tiny model trains STEPS steps (about 4 s of training after about 3 s of start-up).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import describe, invoke

from textgen import checkpoint as ckpt
from textgen.runformat import RUN_FILE
from textgen.inference import load_run
from textgen.corpus_cache import CACHE_DIR
from textgen.runlock import LOCK_FILE

SEED = int(os.environ.get("TEXTGEN_FAULT_SEED", "4242"))  # the kill schedule (override to stress)
STEPS = 40
KILLS = 5
PROCESS_TIMEOUT = 90  # seconds any one process may take
MODEL = ["--units", "16", "--embedding-dim", "8", "--num-layers", "1", "--dropout", "0.1"]
TRAIN = ["--batch-size", "4", "--seq-len", "16", "--steps", str(STEPS), "--eval-every", "2",
         "--eval-batches", "4", "--keep", "2", "--seed", "3", "--quiet"]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TEXTGEN_TF_LOGS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A directory with `corpus.txt`: seeded random words, 15 distinct characters, ~5.5 kB."""
    base = tmp_path_factory.mktemp("faults")
    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "log"]
    (base / "corpus.txt").write_text(" ".join(rng.choice(words) for _ in range(1500)) + "\n",
                                     encoding="utf-8")
    return base


class Trainer:
    """One `python -m textgen train` process, its output in files (no pipe to fill up)."""

    def __init__(self, workdir: Path, name: str, resume: bool, tag: str):
        self.err_path = workdir / f"{name}-{tag}.err"
        args = ["train", "--resume", "--name", name, "--runs-dir", "runs", "--quiet"] if resume else \
            ["train", "corpus.txt", "--name", name, "--runs-dir", "runs", *MODEL, *TRAIN]
        self.err = open(self.err_path, "w")  # noqa: SIM115 (closed in wait())
        self.proc = subprocess.Popen([sys.executable, "-m", "textgen", *args], cwd=workdir, env=_env(),
                                     stdout=subprocess.DEVNULL, stderr=self.err)
        self.start = time.monotonic()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self) -> int:
        try:
            rc = self.proc.wait(timeout=PROCESS_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"textgen train did not finish in {PROCESS_TIMEOUT} s: {self.stderr()}")
        self.err.close()
        return rc

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def stderr(self) -> str:
        if not self.err.closed:
            self.err.flush()
        return self.err_path.read_text(encoding="utf-8", errors="replace")


def poll_until(trainer: Trainer, predicate, timeout: float = 60.0) -> bool:
    """Poll `predicate` every ~0.5 ms while the trainer runs; whether it became true."""
    end = time.monotonic() + timeout
    while trainer.alive() and time.monotonic() < end:
        try:
            if predicate():
                return True
        except (OSError, ValueError):  # a file replaced under our feet: look again
            pass
        time.sleep(0.0005)
    return False


def run_step(run_dir: Path) -> int:
    """The step run.json records (-1 while there is no run.json)."""
    try:
        return json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8")).get("step", 0)
    except (OSError, ValueError):
        return -1


def temp_checkpoints(run_dir: Path) -> list[str]:
    return [e.name for e in os.scandir(run_dir) if e.name.startswith(".ckpt-")] if run_dir.is_dir() else []


def unrecorded_checkpoint(run_dir: Path) -> bool:
    """A complete checkpoint newer than run.json's `last`: renamed into place, run.json not yet
    replaced."""
    meta = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    last = ckpt.checkpoint_step(meta["checkpoints"]["last"])
    return any((ckpt.checkpoint_step(e.name) or -1) > last for e in os.scandir(run_dir))


def assert_loads(run_dir: Path) -> None:
    """`textgen sample` works on both checkpoints of the run."""
    for which in ("best", "last"):
        result = invoke("sample", run_dir, "--checkpoint", which, "--length", 8, "--seed", 1)
        assert result.exit_code == 0, describe(result)
        assert len(result.stdout) == 9


def final_state(run_dir: Path):
    loaded = load_run(str(run_dir), run_dir.parent, "last")
    model, meta = loaded.model, loaded.meta
    return [w.numpy() for w in model.weights], meta


def assert_same_run(run_dir: Path, reference: Path) -> None:
    weights, meta = final_state(run_dir)
    ref_weights, ref_meta = final_state(reference)
    assert meta["step"] == ref_meta["step"] == STEPS
    assert [h["step"] for h in meta["history"]] == [h["step"] for h in ref_meta["history"]]
    assert [h["val_bpc"] for h in meta["history"]] == pytest.approx(
        [h["val_bpc"] for h in ref_meta["history"]], abs=1e-5)
    assert len(weights) == len(ref_weights)
    for a, b in zip(weights, ref_weights):
        np.testing.assert_allclose(a, b, atol=1e-5)


def assert_tidy(run_dir: Path) -> None:
    """No lock, no temporary checkpoint, no staging directory left once training has ended."""
    assert not (run_dir / LOCK_FILE).exists()
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".")]
    assert not [p.name for p in run_dir.parent.iterdir()
                if p.name.startswith(".") and p.name != CACHE_DIR]
    for cached in (run_dir.parent / CACHE_DIR).iterdir():  # the encoded corpus: complete
        assert sorted(p.name for p in cached.iterdir()) == ["corpus.json", "ids.bin"]


@pytest.fixture(scope="module")
def reference(workdir) -> Path:
    """The same run trained in one go, never interrupted."""
    trainer = Trainer(workdir, "reference", resume=False, tag="one-go")
    rc = trainer.wait()
    assert rc == 0, trainer.stderr()
    return workdir / "runs" / "reference"


def test_sigkill_at_random_moments_loses_nothing(workdir, reference):
    rng = random.Random(SEED)
    run_dir = workdir / "runs" / "killed"
    # where each kill lands: "any" = a random instant from start-up on (possibly before the run
    # exists); "write" = while a checkpoint is being written; "unrecorded" = between a checkpoint's
    # rename and run.json's update (or the nearest moment after); "step" = shortly after run.json
    # reaches a random step
    modes = ["any", "write", "step", "unrecorded", "write"][:KILLS]
    rng.shuffle(modes)
    landed, stale_locks, killed_pids = [], 0, []
    for i, mode in enumerate(modes):
        existed = (run_dir / RUN_FILE).exists()
        trainer = Trainer(workdir, "killed", resume=existed, tag=f"kill{i}")
        step_before = run_step(run_dir)
        if mode == "any":
            delay = rng.uniform(0.5, 6.0)
            poll_until(trainer, lambda t=trainer, d=delay: time.monotonic() - t.start > d)
        elif mode == "write":
            skip, seen = rng.randint(0, 3), set()

            def writing(seen=seen, skip=skip, mine=f".tmp-{trainer.proc.pid}"):
                seen.update(n for n in temp_checkpoints(run_dir) if n.endswith(mine))
                return len(seen) > skip

            poll_until(trainer, writing)
        elif mode == "step":
            target = min(STEPS - 2, max(step_before, 0) + rng.randint(1, 8))
            poll_until(trainer, lambda t=target: run_step(run_dir) >= t)
            time.sleep(rng.uniform(0, 0.05))
        else:
            poll_until(trainer, lambda: run_step(run_dir) >= 0 and unrecorded_checkpoint(run_dir))
        was_alive = trainer.alive()
        trainer.kill()
        rc = trainer.wait()
        killed_pids.append(str(trainer.proc.pid))
        leftovers = [n for n in temp_checkpoints(run_dir) if n.endswith(f"-{trainer.proc.pid}")]
        landed.append((mode, was_alive, run_step(run_dir), leftovers))
        info = f"kills so far (mode, alive when killed, step, temporaries): {landed}\n{trainer.stderr()}"
        assert "Traceback" not in trainer.stderr(), info
        if not was_alive:  # finished before the kill: only acceptable if it trained to the end
            assert rc == 0 and run_step(run_dir) == STEPS, info
            break
        assert rc == -signal.SIGKILL, info
        lock = run_dir / LOCK_FILE
        if lock.exists():  # left behind by a killed trainer: the next one must take it over
            assert lock.read_text().split() in ([], *([pid] for pid in killed_pids)), info
            stale_locks += 1
        if (run_dir / RUN_FILE).exists():
            assert run_step(run_dir) >= step_before, info  # run.json never goes back
            assert_loads(run_dir)
    # at least one kill landed in the middle of a checkpoint write (its own temporary dir was left),
    # and at least one left its lock file behind for the next trainer to take over
    assert any(any(".tmp-" in n for n in left) for _, _, _, left in landed), landed
    assert stale_locks >= 1, landed
    if run_step(run_dir) < STEPS:
        existed = (run_dir / RUN_FILE).exists()
        trainer = Trainer(workdir, "killed", resume=existed, tag="finish")
        rc = trainer.wait()
        err = trainer.stderr()
        assert rc == 0, err
        assert f"stopped (budget) at step {STEPS}" in err, err
        if existed:
            assert "resuming" in err, err
    assert_tidy(run_dir)
    assert_loads(run_dir)
    assert_same_run(run_dir, reference)


def _stop_with(workdir: Path, run_dir: Path, sig: signal.Signals, resume: bool, at_step: int) -> int:
    """Start (or resume) the run, signal it once run.json reaches `at_step`; check the exit and
    the message; return the step it stopped at."""
    trainer = Trainer(workdir, run_dir.name, resume=resume, tag=sig.name)
    assert poll_until(trainer, lambda: run_step(run_dir) >= at_step), trainer.stderr()
    # a second trainer on the run is refused, naming the live owner
    second = invoke("train", "--resume", "--name", run_dir.name, "--runs-dir", run_dir.parent, "--quiet")
    assert second.exit_code == 2, describe(second)
    assert f"process {trainer.proc.pid}" in second.stderr, describe(second)
    assert second.stderr.count("\n") == 1 and second.stderr.startswith("Error: ")
    trainer.kill(sig)
    rc = trainer.wait()
    err = trainer.stderr()
    assert rc == 0, err
    assert "Traceback" not in err, err
    meta = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    stopped = meta["step"]
    last = run_dir / meta["checkpoints"]["last"]
    assert ckpt.is_complete(last)
    assert f"{sig.name}: saved checkpoint {Path('runs') / run_dir.name / last.name}" in err, err
    assert f"stopped ({sig.name}) at step {stopped}" in err, err
    assert f"resume with: textgen train --resume --name {run_dir.name} --runs-dir runs" in err, err
    assert not (run_dir / LOCK_FILE).exists()
    assert_loads(run_dir)
    return stopped


def test_sigint_and_sigterm_checkpoint_and_resume_exactly(workdir, reference):
    rng = random.Random(SEED + 1)
    run_dir = workdir / "runs" / "signalled"
    first = _stop_with(workdir, run_dir, signal.SIGINT, resume=False, at_step=rng.randint(3, 12))
    second = _stop_with(workdir, run_dir, signal.SIGTERM, resume=True, at_step=first + rng.randint(3, 12))
    assert first < second < STEPS
    trainer = Trainer(workdir, run_dir.name, resume=True, tag="finish")
    rc = trainer.wait()
    assert rc == 0, trainer.stderr()
    assert f"resuming runs/{run_dir.name} at step {second}" in trainer.stderr()
    assert_tidy(run_dir)
    assert_same_run(run_dir, reference)
