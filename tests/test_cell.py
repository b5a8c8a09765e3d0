"""Tests for `textgen.cell.LSTMCell`, pinned against independent references.

1. A plain-numpy implementation of the six textbook LSTM equations, written out step by step
   with W_g . [h_{t-1}, x_t] + b_g built explicitly from the cell's weights.
2. `keras.layers.LSTM` with the same weights copied in.
3. The cell's Keras contract (state/output sizes, weight names/shapes, forget-bias init,
   config and serialization round trips, `.keras` save/load).
4. Argument validation.
5. The cell interface (`cell_kind("lstm")`): state names and shapes, gates, zero state, and its
   step against the textbook numpy equations on random weights.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest

import tensorflow as tf

from textgen.cell import LSTM, LSTMCell, cell_kind, config_cell
from textgen.config import ModelConfig

UNITS = 5
INPUT_DIM = 3
BATCH = 4
STEPS = 20
TOL = 1e-5


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _random_problem(seed: int = 0):
    """Random inputs, a NON-zero initial state and random values for all three weights."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(BATCH, STEPS, INPUT_DIM)).astype(np.float32)
    h0 = rng.normal(scale=0.5, size=(BATCH, UNITS)).astype(np.float32)
    c0 = rng.normal(scale=0.5, size=(BATCH, UNITS)).astype(np.float32)
    kernel = rng.normal(scale=0.5, size=(INPUT_DIM, 4 * UNITS)).astype(np.float32)
    recurrent_kernel = rng.normal(scale=0.5, size=(UNITS, 4 * UNITS)).astype(np.float32)
    bias = rng.normal(scale=0.5, size=(4 * UNITS,)).astype(np.float32)
    return x, h0, c0, [kernel, recurrent_kernel, bias]


def _textbook_lstm(x, h0, c0, kernel, recurrent_kernel, bias):
    """The six textbook equations, in float64, one step at a time.

    W_g acts on the concatenation [h_{t-1}, x_t], so W_g = [U_g; K_g] stacked along the input
    axis (recurrent rows first, then input rows), sliced per gate in order i, f, c, o.
    Returns (h for every step (batch, time, units), final C (batch, units)).
    """
    u = recurrent_kernel.shape[0]
    gate = {name: slice(k * u, (k + 1) * u) for k, name in enumerate("ifco")}
    # W_g: (units + input_dim, units), to be used as [h, x] @ W_g.
    W = {g: np.concatenate([recurrent_kernel[:, s], kernel[:, s]], axis=0).astype(np.float64)
         for g, s in gate.items()}
    b = {g: bias[s].astype(np.float64) for g, s in gate.items()}

    h = h0.astype(np.float64)
    C = c0.astype(np.float64)
    hs = []
    for t in range(x.shape[1]):
        hx = np.concatenate([h, x[:, t].astype(np.float64)], axis=-1)  # [h_{t-1}, x_t]
        f_t = _sigmoid(hx @ W["f"] + b["f"])          # forget gate
        i_t = _sigmoid(hx @ W["i"] + b["i"])          # input gate
        C_tilde = np.tanh(hx @ W["c"] + b["c"])       # candidate cell
        C = f_t * C + i_t * C_tilde                   # cell state
        o_t = _sigmoid(hx @ W["o"] + b["o"])          # output gate
        h = o_t * np.tanh(C)                          # hidden state
        hs.append(h)
    return np.stack(hs, axis=1), C


def _run_rnn(layer, x, h0, c0):
    outputs, h, c = layer(x, initial_state=[h0, c0])
    return np.asarray(outputs), np.asarray(h), np.asarray(c)


def _cell_rnn_with(weights):
    layer = keras.layers.RNN(LSTMCell(UNITS), return_sequences=True, return_state=True)
    layer.build((None, None, INPUT_DIM))
    layer.set_weights(weights)
    return layer


def test_cell_matches_textbook_numpy_equations():
    x, h0, c0, weights = _random_problem(seed=1)
    layer = _cell_rnn_with(weights)
    # Sanity: the weights really are the random ones (incl. bias), in kernel/recurrent/bias order.
    for got, want in zip(layer.get_weights(), weights):
        np.testing.assert_array_equal(got, want)

    outputs, h_T, c_T = _run_rnn(layer, x, h0, c0)
    ref_h, ref_c = _textbook_lstm(x, h0, c0, *weights)

    assert outputs.shape == (BATCH, STEPS, UNITS)
    per_step_err = np.abs(outputs - ref_h).max(axis=(0, 2))
    assert per_step_err.shape == (STEPS,)
    assert per_step_err.max() < TOL, per_step_err
    assert np.abs(h_T - ref_h[:, -1]).max() < TOL
    assert np.abs(c_T - ref_c).max() < TOL
    # The initial state matters: with zeros the first step must differ noticeably.
    out0, _, _ = _run_rnn(layer, x, np.zeros_like(h0), np.zeros_like(c0))
    assert np.abs(out0[:, 0] - ref_h[:, 0]).max() > 1e-3


def test_cell_matches_keras_lstm_with_same_weights():
    x, h0, c0, weights = _random_problem(seed=2)
    ours = _cell_rnn_with(weights)
    theirs = keras.layers.LSTM(UNITS, return_sequences=True, return_state=True)
    theirs.build((None, None, INPUT_DIM))
    theirs.set_weights(weights)

    out_a, h_a, c_a = _run_rnn(ours, x, h0, c0)
    out_b, h_b, c_b = _run_rnn(theirs, x, h0, c0)
    assert np.abs(out_a - out_b).max() < TOL
    assert np.abs(h_a - h_b).max() < TOL
    assert np.abs(c_a - c_b).max() < TOL
    # And both agree with the textbook reference (so neither is trivially wrong in the same way).
    ref_h, ref_c = _textbook_lstm(x, h0, c0, *weights)
    assert np.abs(out_b - ref_h).max() < TOL
    assert np.abs(c_b - ref_c).max() < TOL


def test_cell_contract_sizes_and_weights():
    cell = LSTMCell(UNITS)
    assert list(cell.state_size) == [UNITS, UNITS]
    assert cell.output_size == UNITS
    cell.build((None, INPUT_DIM))
    names = [w.name for w in cell.weights]
    assert names == ["kernel", "recurrent_kernel", "bias"]
    shapes = [tuple(w.shape) for w in cell.weights]
    assert shapes == [(INPUT_DIM, 4 * UNITS), (UNITS, 4 * UNITS), (4 * UNITS,)]
    bias = np.asarray(cell.bias)
    expected = np.zeros(4 * UNITS, dtype=np.float32)
    expected[UNITS:2 * UNITS] = 1.0
    np.testing.assert_array_equal(bias, expected)


def test_cell_config_round_trip():
    cell = LSTMCell(7, name="my_cell")
    config = cell.get_config()
    assert config["units"] == 7
    clone = LSTMCell.from_config(config)
    assert isinstance(clone, LSTMCell)
    assert clone.units == 7
    assert clone.name == "my_cell"
    assert clone.get_config() == config


def test_cell_keras_serialization_round_trip():
    cell = LSTMCell(6)
    serialized = keras.saving.serialize_keras_object(cell)
    restored = keras.saving.deserialize_keras_object(serialized)
    assert isinstance(restored, LSTMCell)
    assert restored.units == 6
    assert list(restored.state_size) == [6, 6]


def test_model_with_cell_saves_and_loads(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((None, 3)), keras.layers.RNN(LSTMCell(4)), keras.layers.Dense(1)]
    )
    x = np.random.default_rng(3).normal(size=(2, 6, 3)).astype(np.float32)
    before = model.predict(x, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # safe_mode default
    assert isinstance(loaded.layers[0].cell, LSTMCell)
    after = loaded.predict(x, verbose=0)
    np.testing.assert_array_equal(before, after)
    for w_a, w_b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(w_a, w_b)


@pytest.mark.parametrize("units", [0, -1, -8])
def test_non_positive_units_raise(units):
    with pytest.raises(ValueError):
        LSTMCell(units)


def test_the_lstm_cell_kind_describes_its_states_and_gates():
    lstm = cell_kind("lstm")
    assert lstm is LSTM and lstm.name == "lstm" and LSTMCell.kind is lstm
    assert lstm.state_names == ("h", "c") and lstm.output_state == "h" and lstm.output_index == 0
    assert lstm.gate_names == ("i", "f", "c", "o") and lstm.gate_blocks == 4
    assert lstm.state_shapes(3, UNITS) == ((3, UNITS), (3, UNITS))
    zeros = lstm.zero_state(3, UNITS, "float16")
    assert [tuple(z.shape) for z in zeros] == [(3, UNITS)] * 2 and all(z.dtype == tf.float16 for z in zeros)
    assert not np.any([np.asarray(z) for z in zeros])
    assert set(lstm.quantities) == set(lstm.quantity_names) and set(lstm.sigmoid_gates) <= set(lstm.quantities)
    # the model config names the cell in one place (issue 28 adds ModelConfig.cell)
    assert config_cell(ModelConfig(vocab_size=5)) is lstm
    with pytest.raises(ValueError, match="unknown cell 'rnn'; choose one of lstm, .*gru"):
        cell_kind("rnn")


def test_the_lstm_step_is_the_textbook_step_on_random_weights():
    x, h0, c0, (kernel, recurrent_kernel, bias) = _random_problem(seed=5)
    x0 = x[:, 0]
    want_h, want_c = _textbook_lstm(x[:, :1], h0, c0, kernel, recurrent_kernel, bias)
    # the whole pre-activation at once, and x.W + b with h.U apart: the same step
    h, c = LSTM.step(x0 @ kernel + h0 @ recurrent_kernel + bias, (h0, c0))
    np.testing.assert_allclose(h, want_h[:, 0], atol=TOL)
    np.testing.assert_allclose(c, want_c, atol=TOL)
    (h2, c2), gates = LSTM.step(x0 @ kernel + bias, (h0, c0), h0 @ recurrent_kernel, with_gates=True)
    np.testing.assert_allclose(h2, want_h[:, 0], atol=TOL)
    np.testing.assert_allclose(c2, want_c, atol=TOL)
    z = (x0 @ kernel + h0 @ recurrent_kernel + bias).astype(np.float64)
    blocks = np.split(z, 4, axis=-1)
    expected = {"i": _sigmoid(blocks[0]), "f": _sigmoid(blocks[1]), "g": np.tanh(blocks[2]),
                "o": _sigmoid(blocks[3])}
    assert sorted(gates) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(gates[name], value, atol=TOL, err_msg=name)
