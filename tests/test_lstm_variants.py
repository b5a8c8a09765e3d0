"""Tests for the peephole and CIFG cells (`textgen.lstm_variants`) and their fused loops
(`textgen.recurrent_variants`), and for Greff's experiment-only ablations nfg and noaf
(`textgen.lstm_ablations`): the fused path against autodiff of the reference cell, values and
gradients, with and without a recurrent dropout mask; each cell against the LSTM it generalises,
couples or cuts; the cell layers' contracts.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest
import tensorflow as tf

from textgen.cell import LSTMCell, cell_kind
from textgen.lstm_ablations import NFGCell, NOAFCell
from textgen.lstm_variants import CIFGCell, PeepholeLSTMCell
from textgen.recurrent import LSTMLayer

UNITS, INPUT_DIM, BATCH, STEPS = 6, 4, 3, 10
TOL = 2e-5
CELLS = ("peephole", "cifg", "nfg", "noaf")


def _weights(cell: str, rng):
    blocks = cell_kind(cell).gate_blocks
    weights = [rng.normal(scale=0.5, size=(INPUT_DIM, blocks * UNITS)),
               rng.normal(scale=0.5, size=(UNITS, blocks * UNITS)),
               rng.normal(scale=0.5, size=(blocks * UNITS,))]
    if cell == "peephole":
        weights.append(rng.normal(scale=0.5, size=(3, UNITS)))  # non-zero: the peepholes matter
    return [w.astype(np.float32) for w in weights]


def _layer(cell: str, path: str, weights) -> LSTMLayer:
    layer = LSTMLayer(UNITS, lstm_path=path, cell=cell)
    layer.build((None, None, INPUT_DIM))
    layer.set_weights(weights)
    return layer


def _reference(cell: str, layer: LSTMLayer, x, h0, c0, mask):
    """One Python loop step per time step through the reference cell's own step (what its Keras
    call runs), with h_{t-1} x mask entering the recurrent kernel; differentiated by autodiff,
    independent of the fused path's hand-written backward pass."""
    kind, weights = cell_kind(cell), layer.cell
    h, c, outputs = h0, c0, []
    for t in range(x.shape[1]):
        z = tf.matmul(x[:, t], weights.kernel) + tf.matmul(h * mask, weights.recurrent_kernel) + weights.bias
        h, c = kind.step(z, (h, c), extras=kind.extras(weights))
        outputs.append(h)
    return tf.stack(outputs, axis=1), h, c


def _diff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_fused_path_matches_autodiff_of_the_reference_cell(cell, masked):
    """Values and every gradient (kernels, bias, peepholes, inputs, h0, c0) of the fused loop
    equal autodiff of the reference cell's loop on random weights; with a recurrent dropout
    mask the masked backward pass too."""
    rng = np.random.default_rng(3 + masked)
    weights = _weights(cell, rng)
    x, h0, c0 = (tf.constant(rng.normal(size=s).astype(np.float32))
                 for s in ((BATCH, STEPS, INPUT_DIM), (BATCH, UNITS), (BATCH, UNITS)))
    mask = ((rng.random((BATCH, UNITS)) > 0.4) / 0.6 if masked else np.ones((BATCH, UNITS))).astype(np.float32)
    probe = tf.constant(rng.normal(size=(BATCH, STEPS, UNITS)).astype(np.float32))
    layer = _layer(cell, "fused", weights)
    variables = layer.cell.trainable_weights
    assert len(variables) == (4 if cell == "peephole" else 3)

    def loss(out, h, c):
        return tf.reduce_sum(out * probe) + tf.reduce_sum(c) + 0.5 * tf.reduce_sum(h)

    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, h0, c0])
        out, (h, c) = layer(x, initial_state=[h0, c0], recurrent_mask=tf.constant(mask) if masked else None)
        ref = _reference(cell, layer, x, h0, c0, tf.constant(mask))
        got_loss, want_loss = loss(out, h, c), loss(*ref)
    for g, r in zip((out, h, c), ref):
        assert _diff(g, r) < TOL
    got = tape.gradient(got_loss, variables + [x, h0, c0])
    want = tape.gradient(want_loss, variables + [x, h0, c0])
    for name, g, r in zip([v.name for v in variables] + ["x", "h0", "c0"], got, want):
        assert np.abs(np.asarray(r)).max() > 1e-3, f"{name} gradient is trivially zero"
        assert _diff(g, r) / np.abs(np.asarray(r)).max() < TOL, (name, _diff(g, r))
    if masked:  # the mask really changed the result
        assert _diff(layer(x, initial_state=[h0, c0])[0], ref[0]) > 1e-2


@pytest.mark.parametrize("cell", CELLS)
def test_fused_and_keras_rnn_paths_agree(cell):
    """The fused path computes what `keras.layers.RNN` over the cell layer computes."""
    rng = np.random.default_rng(7)
    weights = _weights(cell, rng)
    x = rng.normal(size=(BATCH, STEPS, INPUT_DIM)).astype(np.float32)
    fused, (h_f, c_f) = _layer(cell, "fused", weights)(x)
    rnn, (h_r, c_r) = _layer(cell, "rnn", weights)(x)
    assert _diff(fused, rnn) < TOL and _diff(c_f, c_r) < TOL


def test_the_peephole_step_is_the_textbook_step():
    """Against the equations written out in numpy (o_t reads the new C_t)."""
    rng = np.random.default_rng(11)
    z = rng.normal(size=(2, 4 * UNITS)).astype(np.float32)
    c_prev = rng.normal(size=(2, UNITS)).astype(np.float32)
    w = rng.normal(size=(3, UNITS)).astype(np.float32)
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    zi, zf, zc, zo = np.split(z, 4, axis=-1)
    c = sig(zf + w[1] * c_prev) * c_prev + sig(zi + w[0] * c_prev) * np.tanh(zc)
    h = sig(zo + w[2] * c) * np.tanh(c)
    got_h, got_c = cell_kind("peephole").step(tf.constant(z), (tf.zeros((2, UNITS)), tf.constant(c_prev)),
                                              extras={"peephole": tf.constant(w)})
    assert _diff(got_h, h) < 1e-6 and _diff(got_c, c) < 1e-6


def test_the_peephole_step_refuses_to_run_without_its_weights():
    states = cell_kind("peephole").zero_state(1, UNITS)
    with pytest.raises(ValueError, match="peephole"):
        cell_kind("peephole").step(tf.zeros((1, 4 * UNITS)), states)


def test_a_new_peephole_cell_is_the_lstm_and_takes_its_weights():
    """Peepholes start at zero, and the LSTM's weights load as they are: the same outputs."""
    x = tf.random.normal((BATCH, STEPS, INPUT_DIM), seed=1)
    lstm = keras.layers.RNN(LSTMCell(UNITS), return_sequences=True)
    peephole_cell = PeepholeLSTMCell(UNITS)
    peephole = keras.layers.RNN(peephole_cell, return_sequences=True)
    want = lstm(x)
    peephole(x)
    assert not np.any(peephole_cell.peephole.numpy())
    peephole.set_weights(lstm.get_weights() + [np.zeros((3, UNITS), np.float32)])
    assert _diff(peephole(x), want) < 1e-6


def test_cifg_is_the_lstm_whose_input_gate_is_the_negated_forget_gate():
    """i = 1 - sigmoid(z_f) = sigmoid(-z_f): an LSTM with the input block set to minus the
    forget block computes CIFG. Also: three blocks, a quarter fewer gate weights, forget bias 1."""
    cifg = CIFGCell(UNITS)
    cifg_rnn = keras.layers.RNN(cifg, return_sequences=True)
    x = tf.random.normal((BATCH, STEPS, INPUT_DIM), seed=2)
    cifg_rnn(x)
    assert cifg.kernel.shape == (INPUT_DIM, 3 * UNITS) and cifg.recurrent_kernel.shape == (UNITS, 3 * UNITS)
    np.testing.assert_array_equal(cifg.bias.numpy(), np.r_[np.ones(UNITS), np.zeros(2 * UNITS)])
    rng = np.random.default_rng(5)
    weights = [rng.normal(scale=0.5, size=w.shape).astype(np.float32) for w in cifg_rnn.get_weights()]
    cifg_rnn.set_weights(weights)
    lstm = keras.layers.RNN(LSTMCell(UNITS), return_sequences=True)
    lstm(x)

    def as_lstm(w):  # (…, 3*units) f, c, o -> (…, 4*units) -f, f, c, o
        f = w[..., :UNITS]
        return np.concatenate([-f, w], axis=-1)

    lstm.set_weights([as_lstm(w) for w in weights])
    assert _diff(cifg_rnn(x), lstm(x)) < 1e-5


def test_nfg_is_the_lstm_with_its_forget_gate_held_at_one():
    """An LSTM whose forget block reads nothing and has bias 100 (sigmoid = 1.0 in float32)
    computes nfg with the same i, c, o weights; nfg has three blocks i, c, o."""
    nfg = NFGCell(UNITS)
    nfg_rnn = keras.layers.RNN(nfg, return_sequences=True)
    x = tf.random.normal((BATCH, STEPS, INPUT_DIM), seed=3)
    nfg_rnn(x)
    assert nfg.kernel.shape == (INPUT_DIM, 3 * UNITS)
    rng = np.random.default_rng(6)
    weights = [rng.normal(scale=0.5, size=w.shape).astype(np.float32) for w in nfg_rnn.get_weights()]
    nfg_rnn.set_weights(weights)
    lstm = keras.layers.RNN(LSTMCell(UNITS), return_sequences=True)
    lstm(x)

    def as_lstm(w, forget):  # (…, 3*units) i, c, o -> (…, 4*units) i, f, c, o
        return np.concatenate([w[..., :UNITS], np.full_like(w[..., :UNITS], forget), w[..., UNITS:]], axis=-1)

    lstm.set_weights([as_lstm(weights[0], 0.0), as_lstm(weights[1], 0.0), as_lstm(weights[2], 100.0)])
    assert _diff(nfg_rnn(x), lstm(x)) < 1e-5


def test_the_noaf_step_has_no_tanh_on_the_output():
    """Against the equations in numpy: h_t = o_t * C_t."""
    rng = np.random.default_rng(12)
    z = rng.normal(size=(2, 4 * UNITS)).astype(np.float32)
    c_prev = rng.normal(size=(2, UNITS)).astype(np.float32)
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    zi, zf, zc, zo = np.split(z, 4, axis=-1)
    c = sig(zf) * c_prev + sig(zi) * np.tanh(zc)
    got_h, got_c = cell_kind("noaf").step(tf.constant(z), (tf.zeros((2, UNITS)), tf.constant(c_prev)))
    assert _diff(got_h, sig(zo) * c) < 1e-6 and _diff(got_c, c) < 1e-6


@pytest.mark.parametrize("cls", [PeepholeLSTMCell, CIFGCell, NFGCell, NOAFCell])
def test_the_cells_serialise_and_refuse_bad_units(cls):
    cell = cls(5, name="c")
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(cell))
    assert type(again) is cls and again.units == 5 and again.state_size == [5, 5]
    with pytest.raises(ValueError, match="positive"):
        cls(0)


def test_auto_keeps_cudnn_for_the_lstm_and_runs_the_variants_fused_on_a_gpu(monkeypatch):
    from textgen import recurrent

    monkeypatch.setattr(recurrent, "gpu_available", lambda: True)
    assert LSTMLayer(UNITS, cell="lstm").path == "cudnn"
    assert [LSTMLayer(UNITS, cell=cell).path for cell in CELLS] == ["fused"] * len(CELLS)
    assert LSTMLayer(UNITS, lstm_path="rnn", cell="cifg").path == "rnn"
