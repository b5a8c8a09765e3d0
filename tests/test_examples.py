"""Tests for `examples/regression.py`, the Keras port of the seed document's Flux.jl example
(`Chain(LSTM(10, 20), Dense(20, 1))`, MSE, ADAM) built on our `LSTMCell`.

The script must run as a program and print its losses, and `main()` must actually learn the
memory task: the final loss is far below both the initial loss and the trivial
predict-the-mean baseline.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest

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
