"""Checkpoint crash windows, interruption, disk-full, locking and safe loading, in-process.

A crash at an exact point of a save is played by raising `CrashHere` there (a BaseException, which
no `except OSError` or `except Exception` in textgen catches): the files already written stay as
they are. It is not a SIGKILL: `finally` blocks and context managers (the run lock, the removal of
temporary files) still run on the way out, so these tests show what a run makes of a crash at
that point, not what a SIGKILL leaves. Real SIGKILLs, at random moments of real `textgen train`
processes, are test_faults.py's. Interruptions use real signals sent to this process.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import CORPUS_TEXT, describe, invoke, tree_hashes

from textgen import checkpoint as ckpt
from textgen import runs as runfiles
from textgen.runformat import RESUME_FILE, RUN_FILE, STATE_FILE
from textgen.inference import load_run
from textgen.corpus_cache import CACHE_DIR
from textgen.launch import launch
from textgen.runlock import LOCK_FILE
from textgen.train import Trainer

MODEL = {"embedding_dim": 8, "units": 16, "num_layers": 1, "dropout": 0.1}
TRAIN = {"batch_size": 4, "seq_len": 16, "eval_every": 2, "eval_batches": 2, "seed": 5, "keep": 2,
         "learning_rate": 1e-2}
STEPS = 12


class CrashHere(BaseException):
    """A crash at the point that raises it: nothing in textgen catches it, but cleanup on the way
    out (`finally`, `with`) still runs, unlike after a SIGKILL."""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt-corpus") / "cat.txt"
    path.write_text(CORPUS_TEXT, encoding="utf-8")
    return path


def train(corpus, runs: Path, name: str, resume: bool = False, **options):
    """launch() quietly: a new run with MODEL/TRAIN, or a resume with only `options`."""
    train_options = options if resume else {**TRAIN, "steps": STEPS, **options}
    return launch([str(corpus)], {} if resume else MODEL, train_options, runs, name=name,
                  resume=resume, show_progress=False, echo=lambda s: None)


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """(weights, history) of the run trained in one go."""
    runs = tmp_path_factory.mktemp("reference") / "runs"
    run_dir, reason, progress = train(corpus, runs, "one-go")
    assert reason == "budget" and progress.step == STEPS
    return weights_of(run_dir), progress.history


def weights_of(run_dir: Path) -> list:
    model = load_run(str(run_dir), run_dir.parent, "last").model
    return [w.numpy() for w in model.weights]


def assert_matches(run_dir: Path, reference, history=None) -> None:
    ref_weights, ref_history = reference
    history = history if history is not None else json.loads((run_dir / RUN_FILE).read_text())["history"]
    assert [h["step"] for h in history] == [h["step"] for h in ref_history]
    assert [h["val_bpc"] for h in history] == pytest.approx([h["val_bpc"] for h in ref_history], abs=1e-5)
    for a, b in zip(weights_of(run_dir), ref_weights):
        np.testing.assert_allclose(a, b, atol=1e-5)


def assert_samples(run_dir: Path) -> None:
    for which in ("best", "last"):
        result = invoke("sample", run_dir, "--checkpoint", which, "--length", 5, "--seed", 1)
        assert result.exit_code == 0, describe(result)


def run_meta(run_dir: Path) -> dict:
    return json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))


def hidden(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------------------- crash windows


def test_crash_after_checkpoint_rename_before_run_json(corpus, tmp_path, monkeypatch, reference):
    """ckpt-6 is complete on disk but run.json still names ckpt-4: the run loads ckpt-4, and the
    resume drops the unrecorded ckpt-6 and replays steps 5-6 exactly."""
    write = runfiles.write_run_meta

    def write_run_meta(run_dir, meta):
        if meta.get("step") == 6:
            raise CrashHere
        write(run_dir, meta)

    monkeypatch.setattr(runfiles, "write_run_meta", write_run_meta)
    with pytest.raises(CrashHere):
        train(corpus, tmp_path / "runs", "r")
    monkeypatch.undo()
    run_dir = tmp_path / "runs" / "r"
    assert run_meta(run_dir)["checkpoints"]["last"] == "ckpt-00000004"
    assert ckpt.is_complete(run_dir / "ckpt-00000006")
    assert_samples(run_dir)
    _, reason, progress = train(corpus, tmp_path / "runs", "r", resume=True)
    assert reason == "budget" and progress.step == STEPS
    assert_matches(run_dir, reference)
    assert hidden(run_dir) == []


def test_crash_while_writing_a_checkpoint(corpus, tmp_path, monkeypatch, reference):
    """A half-written `.ckpt-*.tmp-<pid>` (this process's, and another dead one's) is ignored by
    loading and removed by the resume."""
    savez = np.savez
    calls = []

    def crashing_savez(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # steps 0 and 2 saved; crashes after ckpt-4's weights are written
            raise CrashHere
        savez(*args, **kwargs)

    monkeypatch.setattr(np, "savez", crashing_savez)
    with pytest.raises(CrashHere):
        train(corpus, tmp_path / "runs", "r")
    monkeypatch.undo()
    run_dir = tmp_path / "runs" / "r"
    tmp = run_dir / f".ckpt-00000004.tmp-{os.getpid()}"
    assert (tmp / ckpt.WEIGHTS_FILE).is_file() and not (tmp / ckpt.RESUME_FILE).exists()
    shutil.copytree(tmp, run_dir / ".ckpt-00000004.tmp-999999999")
    assert run_meta(run_dir)["checkpoints"]["last"] == "ckpt-00000002"
    assert_samples(run_dir)
    _, reason, _ = train(corpus, tmp_path / "runs", "r", resume=True)
    assert reason == "budget"
    assert hidden(run_dir) == []
    assert_matches(run_dir, reference)


def _self_signal_at(monkeypatch, steps: dict[int, int]) -> None:
    """Send this process a real signal right after the training step numbered like a key."""
    poll = Trainer._poll  # the stop vote, which the loop takes after every step

    def signal_then_poll(self, stop, clock):
        if self.progress.step in steps:
            os.kill(os.getpid(), steps.pop(self.progress.step))
        poll(self, stop, clock)

    monkeypatch.setattr(Trainer, "_poll", signal_then_poll)


def test_sigint_and_sigterm_between_validations_resume_exactly(corpus, tmp_path, monkeypatch, reference):
    """Stopped by SIGINT at step 5 and SIGTERM at step 8: each writes a checkpoint of that step
    without adding a validation, so the pieces add up to the one-go run."""
    runs = tmp_path / "runs"
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a background job
    _self_signal_at(monkeypatch, {5: signal.SIGINT})
    run_dir, reason, progress = train(corpus, runs, "r")
    assert (reason, progress.step) == ("SIGINT", 5)
    meta = run_meta(run_dir)
    assert meta["checkpoints"]["last"] == "ckpt-00000005" and meta["step"] == 5
    assert [h["step"] for h in meta["history"]] == [2, 4]
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    _self_signal_at(monkeypatch, {8: signal.SIGTERM})
    _, reason, progress = train(corpus, runs, "r", resume=True)
    assert (reason, progress.step) == ("SIGTERM", 8)
    monkeypatch.undo()
    _, reason, progress = train(corpus, runs, "r", resume=True)
    assert (reason, progress.step) == ("budget", STEPS)
    assert_matches(run_dir, reference)


def test_crash_while_replacing_an_existing_checkpoint(corpus, tmp_path, monkeypatch, reference):
    """Re-saving a step that already has a checkpoint (here ckpt-5, saved again from its own
    weights and state: a resume whose budget is spent no longer writes anything) moves the old
    ckpt-5 aside first; crashing before the new one is renamed in, run.json names a missing ckpt-5,
    and its old copy aside serves instead, and a later resume finishes the run exactly."""
    runs = tmp_path / "runs"
    _self_signal_at(monkeypatch, {5: signal.SIGINT})
    run_dir, reason, _ = train(corpus, runs, "r")
    assert reason == "SIGINT"
    monkeypatch.undo()
    saved = run_dir / "ckpt-00000005"
    state = json.loads((saved / STATE_FILE).read_text())
    with np.load(saved / RESUME_FILE, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    model = load_run(str(run_dir), runs, "last").model
    replace = os.replace

    def crashing_replace(src, dst):
        if ".tmp-" in Path(src).name and Path(src).name.startswith(".ckpt-00000005"):
            raise CrashHere
        replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", crashing_replace)
    with pytest.raises(CrashHere):
        ckpt.save_checkpoint(run_dir, model, state, arrays)
    monkeypatch.undo()
    assert not (run_dir / "ckpt-00000005").exists()
    assert run_meta(run_dir)["checkpoints"]["last"] == "ckpt-00000005"
    aside = ckpt.checkpoint_dir(run_dir, runfiles.read_run_meta(run_dir), "last")
    assert aside.name == f".ckpt-00000005.old-{os.getpid()}"
    assert_samples(run_dir)
    _, reason, progress = train(corpus, runs, "r", resume=True, steps=STEPS)
    assert (reason, progress.step) == ("budget", STEPS)
    assert hidden(run_dir) == []
    assert_matches(run_dir, reference)


def test_leftover_staging_of_a_killed_new_run_is_ignored_and_cleaned(corpus, tmp_path):
    runs = tmp_path / "runs"
    stale = runs / ".r.new-999999999"
    (stale / "ckpt-00000000").mkdir(parents=True)
    (stale / "run.json").write_text("{}")
    result = invoke("sample", "--runs-dir", runs)
    assert result.exit_code == 2 and "no run found" in result.stderr, describe(result)
    run_dir, reason, _ = train(corpus, runs, "r", steps=2)
    assert reason == "budget" and not stale.exists()
    assert sorted(p.name for p in runs.iterdir()) == [CACHE_DIR, "r"]  # the encoded corpus
    # the run's own checkpoint, complete and recorded: the leftover's empty ckpt-00000000 and its
    # run.json of "{}" were not taken for the run's
    meta = run_meta(run_dir)
    assert meta["step"] == 2 and meta["checkpoints"]["last"] == "ckpt-00000002", meta
    assert all(ckpt.is_complete(c) for c in run_dir.glob("ckpt-*")), list(run_dir.iterdir())


# ---------------------------------------------------------------------------- disk full


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _failing_for(original, name: str):
    """`original(path, data)`, failing with ENOSPC for files called `name`."""

    def write(path, data):
        if Path(path).name == name:
            _enospc()
        original(path, data)

    return write


@pytest.mark.parametrize("fail", ["weights", "weights-by-keras", "arrays", "state", "run.json"])
def test_disk_full_stops_with_one_line_and_keeps_the_previous_checkpoint(fail, copy_run, monkeypatch):
    run_dir = copy_run()
    before = {k: v for k, v in tree_hashes(run_dir).items() if not k.startswith(("train/", "validation/"))}
    import keras

    if fail == "weights":
        monkeypatch.setattr(ckpt, "write_new_file", _failing_for(ckpt.write_new_file, ckpt.WEIGHTS_FILE))
    elif fail == "weights-by-keras":  # where Keras cannot build the file in memory
        monkeypatch.setattr(ckpt, "_weights_image", lambda model: None)
        monkeypatch.setattr(keras.Model, "save_weights", _enospc)
    elif fail == "arrays":
        monkeypatch.setattr(ckpt, "write_new_file", _failing_for(ckpt.write_new_file, ckpt.RESUME_FILE))
    elif fail == "state":
        monkeypatch.setattr(ckpt, "atomic_write_text", _failing_for(ckpt.atomic_write_text, ckpt.STATE_FILE))
    else:
        monkeypatch.setattr(runfiles, "atomic_write_text", _failing_for(runfiles.atomic_write_text, RUN_FILE))
    result = invoke("train", "--resume", "--name", run_dir.name, "--runs-dir", run_dir.parent,
                    "--steps", 6, "--eval-every", 3, "--quiet")
    monkeypatch.undo()
    assert result.exit_code == 2, describe(result)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 2 and lines[0].startswith("resuming"), describe(result)
    assert lines[1].startswith("Error: ") and "No space left on device" in lines[1], describe(result)
    assert "previous checkpoint" in lines[1] and "resume" in lines[1]
    after = {k: v for k, v in tree_hashes(run_dir).items() if not k.startswith(("train/", "validation/"))}
    if fail == "run.json":  # ckpt-6 was complete, but run.json never named it
        assert {k for k in after if k.startswith("ckpt-00000006/")} == {
            f"ckpt-00000006/{f}" for f in ckpt.CHECKPOINT_FILES}
        after = {k: v for k, v in after.items() if not k.startswith("ckpt-00000006/")}
    assert after == before, "the previous checkpoint or run.json changed"
    assert hidden(run_dir) == [] and not (run_dir / LOCK_FILE).exists()
    load_run(str(run_dir), run_dir.parent, "last")  # still loads
    if fail != "weights":
        return
    assert_samples(run_dir)  # once: samples, and resumes once the disk has room again
    again = invoke("train", "--resume", "--name", run_dir.name, "--runs-dir", run_dir.parent,
                   "--steps", 6, "--eval-every", 3, "--quiet")
    assert again.exit_code == 0, describe(again)
    assert run_meta(run_dir)["checkpoints"]["last"] == "ckpt-00000006"


def test_real_write_failure_is_one_line(copy_run, tmp_path):
    """A real failing write, not a monkeypatched one: RLIMIT_FSIZE makes every write past 16 kB
    fail with EFBIG in a real process, as a full disk fails with ENOSPC (the weights file is
    about 40 kB). Left to h5py, such a failure prints tracebacks and can crash the interpreter;
    the user must see one line and exit code 2."""
    pytest.importorskip("resource")
    run_dir = copy_run()
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (16384, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
        "from textgen.cli import entry\n"
        f"sys.argv = ['textgen', 'train', '--resume', '--name', {run_dir.name!r}, '--runs-dir', "
        f"{str(run_dir.parent)!r}, '--steps', '6', '--eval-every', '3', '--quiet']\n"
        "entry()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TEXTGEN_TF_LOGS"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=180, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert lines[-1].startswith("Error: cannot write checkpoint") and "File too large" in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    assert lines[:-1] == [f"resuming {run_dir} at step 3, float32"], proc.stderr
    assert run_meta(run_dir)["checkpoints"]["last"] == "ckpt-00000003"
    assert hidden(run_dir) == []
    assert_samples(run_dir)


# ---------------------------------------------------------------------------- safe loading


class _Payload:
    """Unpickling this creates a marker file: proof that code from the run directory ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_resume_state_is_refused_without_running_it(copy_run, tmp_path):
    run_dir = copy_run()
    marker = tmp_path / "pwned"
    ckpt_dir = run_dir / "ckpt-00000003"
    with np.load(ckpt_dir / ckpt.RESUME_FILE) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["opt_0"] = np.array([_Payload(marker)], dtype=object)
    np.savez(ckpt_dir / ckpt.RESUME_FILE, **arrays)  # object arrays are pickled into the .npy
    result = invoke("train", "--resume", "--name", run_dir.name, "--runs-dir", run_dir.parent,
                    "--steps", 6, "--quiet")
    assert result.exit_code == 2, describe(result)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: ")
    assert "resume.npz" in result.stderr and "pickled" in result.stderr
    assert not marker.exists(), "unpickling ran code from the run directory"
    assert_samples(run_dir)  # the weights themselves are fine


@pytest.mark.parametrize("replacement", ["keras-archive", "zip", "empty", "text"])
def test_weights_file_must_be_hdf5(replacement, copy_run, tmp_path):
    run_dir = copy_run()
    weights = run_dir / "ckpt-00000003" / ckpt.WEIGHTS_FILE
    if replacement == "keras-archive":
        model = load_run(str(run_dir), run_dir.parent, "last").model
        model.save(tmp_path / "whole.keras")  # a full model archive: config + weights
        shutil.copy(tmp_path / "whole.keras", weights)
    elif replacement == "zip":
        with zipfile.ZipFile(weights, "w") as z:
            z.writestr("config.json", json.dumps({"class_name": "Lambda"}))
    elif replacement == "empty":
        weights.write_bytes(b"")
    else:
        weights.write_text("import os; os.system('echo pwned')\n")
    for args in (["sample", run_dir, "--length", 5],
                 ["train", "--resume", "--name", run_dir.name, "--runs-dir", run_dir.parent, "--quiet"]):
        result = invoke(*args)
        assert result.exit_code == 2, describe(result)
        assert result.stderr.count("\n") == 1, describe(result)
        assert "model.weights.h5 is corrupt: not an HDF5 weights file" in result.stderr


@pytest.mark.parametrize("pointer", ["ckpt-00000003/../../elsewhere", "../ckpt-00000003", "ckpt-3",
                                     "/etc/passwd"])
def test_checkpoint_pointers_cannot_leave_the_run(pointer, copy_run):
    run_dir = copy_run()
    meta = run_meta(run_dir)
    meta["checkpoints"]["best"] = pointer
    (run_dir / RUN_FILE).write_text(json.dumps(meta))
    result = invoke("sample", run_dir, "--length", 5)
    assert result.exit_code == 2, describe(result)
    assert "run.json is damaged" in result.stderr and result.stderr.count("\n") == 1


def test_damaged_progress_in_state_json_is_refused(copy_run):
    run_dir = copy_run()
    state_path = run_dir / "ckpt-00000003" / ckpt.STATE_FILE
    state = json.loads(state_path.read_text())
    state["progress"]["window"] = "x"
    state_path.write_text(json.dumps(state))
    result = invoke("train", "--resume", "--name", run_dir.name, "--runs-dir", run_dir.parent,
                    "--steps", 6, "--quiet")
    assert result.exit_code == 2, describe(result)
    assert "state.json cannot be resumed" in result.stderr and "window" in result.stderr
    assert result.stderr.count("\n") == 1
