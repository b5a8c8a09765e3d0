"""Training under tf.distribute: two logical CPU devices under MirroredStrategy (see conftest), two
worker processes on 127.0.0.1 under MultiWorkerMirroredStrategy, resume across strategies, and the
one-line errors of a bad cluster description."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import LOGICAL_CPUS, describe, invoke

from textgen import checkpoint as ckpt
from textgen.runs import read_run_meta
from textgen.distribute import (
    Replicas,
    is_chief_task,
    make_strategy,
    resolve_strategy,
    CANNOT_LISTEN,
    tf_config,
    worker_count,
)
from textgen.errors import TextgenError
from textgen.corpus_cache import CACHE_DIR

pytestmark = pytest.mark.usefixtures("own_cwd")

# dropout on: every strategy must draw the same masks (textgen.dropout), or the weights differ
MODEL = ["--units", "16", "--embedding-dim", "8", "--num-layers", "2", "--dropout", "0.3",
         "--embedding-dropout", "0.2"]
# clip-norm 0.5 is below the early gradients' norm, so the clipping is exercised too
TRAIN = ["--batch-size", "8", "--seq-len", "12", "--eval-every", "3", "--eval-batches", "2",
         "--clip-norm", "0.5", "--seed", "7", "--quiet"]
PROCESS_TIMEOUT = 300  # a worker imports TensorFlow and trains a few steps: slow on a busy 2-core machine


def _weights(run_dir: Path, which: str = "last") -> list[np.ndarray]:
    import h5py

    path = ckpt.checkpoint_dir(run_dir, read_run_meta(run_dir), which) / "model.weights.h5"
    found = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: found.append((name, obj[()]))
                     if isinstance(obj, h5py.Dataset) else None)
    return [value for _, value in sorted(found, key=lambda item: item[0])]


def _carried(run_dir: Path) -> list[np.ndarray]:
    path = ckpt.checkpoint_dir(run_dir, read_run_meta(run_dir), "last") / "resume.npz"
    with np.load(path) as arrays:
        return [arrays[k] for k in sorted(arrays.files) if k.startswith("carry_")]


def _max_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert len(a) == len(b) and a
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def _train(corpus_file, runs, name, *extra):
    result = invoke("train", corpus_file, "--runs-dir", runs, "--name", name, *MODEL, *TRAIN, *extra)
    assert result.exit_code == 0, describe(result)
    return runs / name


def test_mirrored_two_devices_match_one_device(corpus_file, tmp_path):
    """k steps on 2 replicas (4 rows each) = k steps on one device with the global batch of 8:
    the same weights, the same carried LSTM state for every row, the same validation history."""
    runs = tmp_path / "runs"
    single = _train(corpus_file, runs, "single", "--steps", "6", "--strategy", "single")
    mirrored = _train(corpus_file, runs, "mirrored", "--steps", "6", "--strategy", "mirrored")
    assert make_strategy("mirrored").num_replicas_in_sync == LOGICAL_CPUS
    assert _max_difference(_weights(single), _weights(mirrored)) < 1e-5
    assert _max_difference(_carried(single), _carried(mirrored)) < 1e-5
    history = [[h["val_bpc"] for h in read_run_meta(r)["history"]] for r in (single, mirrored)]
    np.testing.assert_allclose(history[0], history[1], atol=1e-5)
    assert read_run_meta(mirrored)["train"].strategy == "mirrored"


def test_mirrored_run_resumes_and_moves_between_strategies(corpus_file, tmp_path):
    """A mirrored run stopped at step 3, resumed on one device to step 5 and under mirrored again
    to step 7 ends where the uninterrupted mirrored run ends: a checkpoint written under either
    strategy resumes exactly under the other."""
    runs = tmp_path / "runs"
    whole = _train(corpus_file, runs, "whole", "--steps", "7", "--strategy", "mirrored")
    _train(corpus_file, runs, "moved", "--steps", "3", "--strategy", "mirrored")
    for step, strategy in ((3, "single"), (5, "mirrored")):
        result = invoke("train", "--resume", "--name", "moved", "--runs-dir", runs, "--steps", step + 2,
                        "--strategy", strategy, "--quiet")
        assert result.exit_code == 0, describe(result)
        assert "resuming" in result.stderr and f"at step {step}" in result.stderr, describe(result)
        assert read_run_meta(runs / "moved")["train"].strategy == strategy
    assert _max_difference(_weights(whole), _weights(runs / "moved")) < 1e-5
    assert read_run_meta(runs / "moved")["step"] == 7


def test_mirrored_run_samples_on_one_device(corpus_file, tmp_path):
    runs = tmp_path / "runs"
    _train(corpus_file, runs, "m", "--steps", "3", "--strategy", "mirrored")
    result = invoke("sample", "m", "--runs-dir", runs, "--length", "40", "--seed", "1")
    assert result.exit_code == 0, describe(result)
    assert len(result.stdout.rstrip("\n")) >= 40


def test_batch_that_does_not_split_across_replicas_is_refused(corpus_file, tmp_path):
    result = invoke("train", corpus_file, "--runs-dir", tmp_path / "runs", "--name", "odd", *MODEL,
                    "--batch-size", "5", "--seq-len", "12", "--steps", "2", "--strategy",
                    "mirrored", "--quiet")
    assert result.exit_code == 2, describe(result)
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: --batch-size 5 does not split evenly across {LOGICAL_CPUS} replicas; "
        f"use a multiple of {LOGICAL_CPUS}")
    assert not (tmp_path / "runs" / "odd").exists()


@pytest.mark.parametrize("name, gpus, chosen", [
    ("auto", 0, "single"), ("auto", 1, "single"), ("auto", 2, "mirrored"), ("auto", 8, "mirrored"),
    ("single", 4, "single"), ("mirrored", 0, "mirrored"), ("multiworker", 0, "multiworker"),
])
def test_auto_strategy_is_mirrored_only_with_several_gpus(name, gpus, chosen):
    assert resolve_strategy(name, gpus) == chosen
    with pytest.raises(TextgenError, match="unknown --strategy 'ring'"):
        resolve_strategy("ring", 2)


def test_replicas_split_rows_and_gather_them_back_in_order():
    strategy = make_strategy("mirrored")
    replicas = Replicas(strategy, batch_size=6)
    full = np.arange(6 * 3, dtype=np.float32).reshape(6, 3)
    per_replica = replicas.scatter([full])
    parts = strategy.experimental_local_results(per_replica[0])
    np.testing.assert_array_equal(parts[1].numpy(), full[3:])
    np.testing.assert_array_equal(replicas.gather(per_replica)[0], full)
    with pytest.raises(TextgenError, match="use a multiple of 2"):
        Replicas(strategy, batch_size=3)


# ---------------------------------------------------------------- TF_CONFIG


@pytest.mark.parametrize("value, message", [
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('{"cluster": {"worker": ["a:1"]}}', "TF_CONFIG needs a 'cluster' and a 'task' object"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}',
     "TF_CONFIG's task 'worker' #3 is not in its cluster (worker: 1)"),
])
def test_bad_tf_config_is_one_line_error(monkeypatch, corpus_file, tmp_path, value, message):
    monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(TextgenError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tf_config()
    result = invoke("train", corpus_file, "--runs-dir", tmp_path / "runs", *MODEL, "--steps", "1",
                    "--strategy", "multiworker", "--quiet")
    assert result.exit_code == 2, describe(result)
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert not (tmp_path / "runs").exists()


def test_multiworker_without_tf_config_is_refused(monkeypatch, corpus_file, tmp_path):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    result = invoke("train", corpus_file, "--runs-dir", tmp_path / "runs", "--strategy",
                    "multiworker", "--quiet")
    assert result.exit_code == 2, describe(result)
    assert "--strategy multiworker needs the TF_CONFIG environment variable" in result.stderr


def test_chief_is_the_chief_task_or_worker_zero(monkeypatch):
    cluster = {"worker": ["h:1", "h:2"]}
    for task, chief in (({"type": "worker", "index": 0}, True), ({"type": "worker", "index": 1}, False)):
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))
        assert is_chief_task("multiworker") is chief
    with_chief = {"chief": ["h:0"], **cluster}
    for task, chief in (({"type": "chief", "index": 0}, True), ({"type": "worker", "index": 0}, False)):
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": with_chief, "task": task}))
        assert is_chief_task("multiworker") is chief
    assert is_chief_task("mirrored") and is_chief_task("single")



def test_worker_count_is_the_processes_sharing_a_batch(monkeypatch):
    """The trainer sizes its thread pools from its own share of the batch (textgen.parallel)."""
    task = {"type": "worker", "index": 0}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["h:1", "h:2"]}, "task": task}))
    assert worker_count("multiworker") == 2
    assert worker_count("mirrored") == worker_count("single") == worker_count("auto") == 1
    cluster = {"chief": ["h:0"], "worker": ["h:1", "h:2"], "ps": ["h:3"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))
    assert worker_count("multiworker") == 3

# ---------------------------------------------------------------- two worker processes


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _workers(workdir: Path, args: list[str], tag: str) -> list[subprocess.Popen]:
    """Two `python -m textgen train --strategy multiworker` processes on 127.0.0.1, once both
    listen. The ports are found free, then closed for the workers to bind (TF_CONFIG must name
    them beforehand): if another process takes one in between, its worker stops with
    CANNOT_LISTEN, and both start again on other ports (at most 3 tries)."""
    for _ in range(3):
        ports = _free_ports(2)
        processes = _start_workers(workdir, args, tag, ports)
        deadline = time.monotonic() + PROCESS_TIMEOUT
        while time.monotonic() < deadline and all(p.poll() is None for p in processes):
            if all(_listens(p, port) for p, port in zip(processes, ports)):
                return processes
            time.sleep(0.1)
        for process in processes:  # one stopped before both listened (or neither got there)
            if process.poll() is None:
                process.kill()
            process.wait()
        if not any(CANNOT_LISTEN in (workdir / f"{tag}-{i}.err").read_text() for i in range(2)):
            return processes  # another failure: _wait reports it
    pytest.fail(f"no two free ports in 3 tries: {[(workdir / f'{tag}-{i}.err').read_text() for i in range(2)]}")


def _listens(process: subprocess.Popen, port: int) -> bool:
    """Whether `process` has a listening socket on `port`."""
    import psutil

    try:
        return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port
                   for c in psutil.Process(process.pid).net_connections("tcp"))
    except psutil.NoSuchProcess:
        return False


def _start_workers(workdir: Path, args: list[str], tag: str, ports: list[int]) -> list[subprocess.Popen]:
    hosts = [f"127.0.0.1:{p}" for p in ports]
    processes = []
    for index in range(2):
        env = {k: v for k, v in os.environ.items() if k != "TEXTGEN_TF_LOGS"}
        env["TF_CPP_MIN_LOG_LEVEL"] = "3"
        env["TF_CONFIG"] = json.dumps({"cluster": {"worker": hosts},
                                       "task": {"type": "worker", "index": index}})
        err = open(workdir / f"{tag}-{index}.err", "w")
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "textgen", "train", *args, "--strategy", "multiworker"],
            cwd=workdir, env=env, stdout=err, stderr=subprocess.STDOUT))
        err.close()
    return processes


def test_a_worker_whose_port_is_taken_stops_with_one_line(corpus_file, tmp_path):
    """What `_workers` retries on: a worker that cannot bind its TF_CONFIG port says so in one
    line and exits 2, without waiting for the other workers."""
    (tmp_path / "corpus.txt").write_text(corpus_file.read_text())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = [taken.getsockname()[1], *_free_ports(1)]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_CONFIG": json.dumps(
            {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": 0}})}
        result = subprocess.run([sys.executable, "-m", "textgen", "train", "corpus.txt", "--runs-dir", "runs",
                                 *MODEL, *TRAIN, "--steps", "2", "--strategy", "multiworker", "--quiet"],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=PROCESS_TIMEOUT)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"Error: {CANNOT_LISTEN}") and result.stderr.count("\n") == 1, result.stderr


def _wait(processes, workdir: Path, tag: str) -> list[str]:
    """Wait for every worker (killing all of them if one overruns); their outputs."""
    deadline = time.monotonic() + PROCESS_TIMEOUT
    try:
        for process in processes:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    outputs = [(workdir / f"{tag}-{i}.err").read_text() for i in range(len(processes))]
    for index, process in enumerate(processes):
        assert process.returncode == 0, f"worker {index} exited {process.returncode}:\n{outputs[index]}"
    return outputs


def _step(run: Path) -> int:
    """The step the run's run.json records (-1 before the chief has written it)."""
    try:
        return read_run_meta(run)["step"]
    except (OSError, ValueError, TextgenError):  # not written yet, or being replaced
        return -1


def test_two_workers_train_together_and_the_chief_run_samples_on_one_device(corpus_file, tmp_path):
    """Two processes train one model through MultiWorkerMirroredStrategy: the chief (worker 0)
    writes the run, worker 1 writes nothing; a SIGINT to worker 1 stops both at the same step with
    a checkpoint; both resume; the weights then equal a single-device run trained in one go with
    the same global batch (resumed pieces on 2 workers = one go on one device); the run samples on
    one device. Two launches of the pair (each process imports TensorFlow: the costly part)."""
    (tmp_path / "corpus.txt").write_text(corpus_file.read_text())
    args = ["corpus.txt", "--runs-dir", "runs", "--name", "mw", *MODEL, *TRAIN]
    run = tmp_path / "runs" / "mw"
    # an interruption: SIGINT to the non-chief worker once training is under way (the budget,
    # 10 epochs, is far off; the warm-up, 100 steps, makes the learning rate independent of it)
    processes = _workers(tmp_path, [*args, "--steps", "100000"], "first")
    deadline = time.monotonic() + PROCESS_TIMEOUT
    while _step(run) < 3 and time.monotonic() < deadline and all(p.poll() is None for p in processes):
        time.sleep(0.2)
    processes[1].send_signal(signal.SIGINT)
    outputs = _wait(processes, tmp_path, "first")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [CACHE_DIR, "mw"]
    stopped = read_run_meta(run)["step"]
    assert 3 <= stopped < 90, outputs
    # both name the checkpoint the chief wrote (worker 1, which writes none, once named a stale
    # one after a resume, and failed with a KeyError in a new run)
    assert f"a signal to another worker: saved checkpoint runs/mw/ckpt-{stopped:08d}" in outputs[0], outputs[0]
    assert f"SIGINT: saved checkpoint runs/mw/ckpt-{stopped:08d}" in outputs[1], outputs[1]
    assert f"stopped (SIGINT) at step {stopped}" in outputs[1], outputs[1]

    final = ["--resume", "--name", "mw", "--runs-dir", "runs", "--steps", str(stopped + 2), "--quiet"]
    outputs = _wait(_workers(tmp_path, final, "second"), tmp_path, "second")
    assert f"at step {stopped}" in outputs[0] and f"at step {stopped}" in outputs[1]
    assert read_run_meta(run)["step"] == stopped + 2
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [CACHE_DIR, "mw"]

    single = _train(corpus_file, tmp_path / "runs-single", "single", "--steps", str(stopped + 2),
                    "--strategy", "single")
    assert _max_difference(_weights(single), _weights(run)) < 1e-5
    assert _max_difference(_carried(single), _carried(run)) < 1e-5

    result = invoke("sample", run, "--length", "30", "--seed", "2")
    assert result.exit_code == 0, describe(result)
    assert len(result.stdout.rstrip("\n")) >= 30
