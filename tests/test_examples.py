"""Tests for the example scripts.

`examples/regression.py`, the Keras port of the seed document's Flux.jl example
(`Chain(LSTM(10, 20), Dense(20, 1))`, MSE, ADAM) built on our `LSTMCell`: the script must run as a
program and print its losses, and `main()` must actually learn the memory task: the final loss is
far below both the initial loss and the trivial predict-the-mean baseline.

`examples/export_*.py` as programs, on exports of the session's tiny run: text on stdout and
nothing on stderr (TensorFlow's start-up notices silenced by the scripts themselves), and for bad
arguments the usage and one line, exit 2, no traceback. (tests/test_export_command.py checks the
numbers they compute.)
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest
from conftest import describe, invoke

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "regression.py"
LOSS_LINE = re.compile(r"^(initial_loss|final_loss)=([0-9.eE+-]+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def regression():
    spec = importlib.util.spec_from_file_location("examples_regression", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def seed0_losses(regression):
    return regression.main(seed=0)


def test_script_runs_and_prints_losses(seed0_losses):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    losses = dict((k, float(v)) for k, v in LOSS_LINE.findall(result.stdout))
    assert set(losses) == {"initial_loss", "final_loss"}, result.stdout
    assert losses["final_loss"] < losses["initial_loss"]
    # Same seed, same untrained model: the script's initial loss matches main(seed=0)'s.
    assert losses["initial_loss"] == pytest.approx(seed0_losses[0], rel=1e-4)


def test_main_learns_the_memory_task(regression, seed0_losses):
    initial_loss, final_loss = seed0_losses
    assert np.isfinite(initial_loss) and np.isfinite(final_loss)
    assert final_loss < 0.1 * initial_loss, (initial_loss, final_loss)
    # The trivial baseline: always predict mean(y); its MSE is var(y) (= 1 by construction).
    _, y = regression.make_data(seed=0)
    baseline = float(np.mean((y - y.mean()) ** 2))
    assert baseline == pytest.approx(1.0, abs=0.2)
    assert final_loss < 0.1 * baseline, (final_loss, baseline)


def test_model_mirrors_flux_chain(regression):
    from textgen.cell import LSTMCell

    model = regression.build_model(seq_len=8)
    rnn, dense = model.layers
    assert isinstance(rnn.cell, LSTMCell) and rnn.cell.units == 20
    assert dense.units == 1
    assert model.output_shape == (None, 1)
    # LSTM(10, 20): 4 * (10*20 + 20*20 + 20) params; Dense(20, 1): 21.
    assert model.count_params() == 4 * (10 * 20 + 20 * 20 + 20) + 21


EXPORT_FORMATS = ("savedmodel", "litert", "onnx", "keras")
LITERT_NOTICE = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."  # LiteRT's own, at the first step


@pytest.fixture(scope="module")
def exports(trained_run, tmp_path_factory) -> Path:
    """<base>/<format>: the session's tiny run exported in every format."""
    base = tmp_path_factory.mktemp("example-exports")
    for fmt in EXPORT_FORMATS:
        result = invoke("export", trained_run, "--runs-dir", trained_run.parent, "--format", fmt,
                        "--out", base / fmt)
        assert result.exit_code == 0, describe(result)
    return base


def run_examples(cases: list[tuple[str, list]]) -> list[subprocess.CompletedProcess]:
    """Run `examples/export_<format>.py ARGS...` for each (format, args), side by side, in an
    environment without TF_CPP_MIN_LOG_LEVEL (the scripts must quiet TensorFlow themselves)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["COLUMNS"] = "200"  # argparse's usage on one line, whatever the terminal
    commands = [[sys.executable, str(ROOT / "examples" / f"export_{fmt}.py"), *map(str, args)]
                for fmt, args in cases]
    running = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for command in commands]
    results = []
    for process, (fmt, args) in zip(running, cases):
        stdout, stderr = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(args, process.returncode, stdout, stderr))
    return results


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_export_example_prints_text_and_no_tensorflow_notices(fmt, exports):
    (result,) = run_examples([(fmt, [exports / fmt, "the ", 30, 0])])
    assert result.returncode == 0, result.stderr[-3000:]
    vocab = set(json.loads((exports / fmt / "vocab.json").read_text(encoding="utf-8")))
    text = result.stdout.removesuffix("\n")
    assert text.startswith("the ") and len(text) == 34 and set(text) <= vocab
    notices = [line for line in result.stderr.splitlines() if line != LITERT_NOTICE or fmt != "litert"]
    assert notices == [], result.stderr[-3000:]  # no absl, CUDA (cuInit) or CPU-feature lines


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_export_example_answers_bad_arguments_with_the_usage_and_one_line(fmt, exports, tmp_path):
    cases = [
        ([], "the following arguments are required: export_dir"),
        ([exports / fmt, "the \u00a9\u20ac"],
         "the prime has characters the model never saw: '\u00a9' '\u20ac'"),
        ([exports / fmt, ""], "the prime is empty"),
        ([tmp_path, "the "], f"{tmp_path} is not a textgen export (it has no vocab.json)"),
    ]
    for (args, message), result in zip(cases, run_examples([(fmt, args) for args, _ in cases])):
        lines = result.stderr.splitlines()
        assert result.returncode == 2 and result.stdout == "", (args, result.stderr[-3000:])
        assert len(lines) == 2 and lines[0].startswith(f"usage: export_{fmt}.py [-h] export_dir"), lines
        assert lines[1] == f"export_{fmt}.py: error: {message}", lines
