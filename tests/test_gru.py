"""Tests for the GRU cell (`textgen.gru.GRUCell`, `textgen.gru.GRU`) and its sequence layer
(`textgen.recurrent.LSTMLayer(cell="gru")`, fused loop in `textgen.recurrent_gru`), pinned against independent references:

1. `keras.layers.GRU(reset_after=True)` with the same weights, copied both ways.
2. The equations written out in float64 numpy, step by step, against the cell interface's step.
3. The fused path (hand-written backward) against autodiff of the reference cell on random
   weights: values and gradients for inputs, initial state, kernel, recurrent kernel and bias,
   with and without a recurrent dropout mask, float32, tight tolerances.
4. The cell interface: registration, state and gate names, the stacked one-matmul step, config.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest
import tensorflow as tf

from textgen.cell import cell_kind
from textgen.gru import GRU, GRUCell
from textgen.recurrent import LSTMLayer

UNITS = 6
INPUT_DIM = 4
BATCH = 3
STEPS = 12
TOL = 1e-5


def _problem(seed: int = 0, steps: int = STEPS):
    """Random inputs, a NON-zero initial state and random values for all three weights."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(BATCH, steps, INPUT_DIM)).astype(np.float32)
    h0 = rng.normal(scale=0.5, size=(BATCH, UNITS)).astype(np.float32)
    weights = [rng.normal(scale=0.5, size=shape).astype(np.float32)
               for shape in ((INPUT_DIM, 3 * UNITS), (UNITS, 3 * UNITS), (2, 3 * UNITS))]
    return x, h0, weights, rng


def GRULayer(units, lstm_path="auto"):
    """The GRU sequence layer: `LSTMLayer` running the "gru" cell."""
    return LSTMLayer(units, lstm_path=lstm_path, cell="gru")


def _layer(path: str, weights) -> LSTMLayer:
    layer = GRULayer(UNITS, lstm_path=path)
    layer.build((None, None, INPUT_DIM))
    layer.set_weights(weights)
    return layer


def _max_abs_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def _rel_diff(a, b) -> float:
    """max |a - b| / max |b|: a scale-free comparison for gradients."""
    return _max_abs_diff(a, b) / max(float(np.abs(np.asarray(b)).max()), 1e-12)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_weights_copy_from_keras_gru_and_back():
    x, h0, weights, _ = _problem(seed=3)
    keras_gru = keras.layers.GRU(UNITS, return_sequences=True, return_state=True, reset_after=True)
    keras_gru.build(x.shape)
    keras_gru.set_weights(weights)
    ours = keras.layers.RNN(GRUCell(UNITS), return_sequences=True, return_state=True)
    ours.build(x.shape)
    assert [w.shape for w in ours.get_weights()] == [w.shape for w in keras_gru.get_weights()]
    ours.set_weights(keras_gru.get_weights())  # Keras -> ours
    out_k, h_k = keras_gru(x, initial_state=[h0])
    out_o, h_o = ours(x, initial_state=[h0])
    assert _max_abs_diff(out_o, out_k) < TOL and _max_abs_diff(h_o, h_k) < TOL
    other = [w + 0.1 for w in weights]
    ours.set_weights(other)
    keras_gru.set_weights(ours.get_weights())  # ours -> Keras
    out_k2, _ = keras_gru(x, initial_state=[h0])
    out_o2, _ = ours(x, initial_state=[h0])
    assert _max_abs_diff(out_o2, out_k2) < TOL
    assert _max_abs_diff(out_o2, out_o) > 1e-2  # the new weights really changed the numbers


def test_step_matches_the_equations_in_numpy():
    """z, r, h~ and h from `GRU.step` against the docstring's equations in float64."""
    x, h0, (kernel, recurrent_kernel, bias), _ = _problem(seed=4)
    p = x[:, 0] @ kernel + bias[0]
    q = h0 @ recurrent_kernel  # b_h comes from the extras
    (h,), gates = GRU.step(tf.constant(p), (tf.constant(h0),), tf.constant(q), with_gates=True,
                           extras={"recurrent_bias": tf.constant(bias[1])})
    k, rk = kernel.astype(np.float64), recurrent_kernel.astype(np.float64)
    xt, hp = x[:, 0].astype(np.float64), h0.astype(np.float64)
    block = {name: slice(i * UNITS, (i + 1) * UNITS) for i, name in enumerate("zrh")}
    z = _sigmoid(xt @ k[:, block["z"]] + bias[0, block["z"]] + hp @ rk[:, block["z"]] + bias[1, block["z"]])
    r = _sigmoid(xt @ k[:, block["r"]] + bias[0, block["r"]] + hp @ rk[:, block["r"]] + bias[1, block["r"]])
    cand = np.tanh(xt @ k[:, block["h"]] + bias[0, block["h"]]
                   + r * (hp @ rk[:, block["h"]] + bias[1, block["h"]]))
    expected = z * hp + (1 - z) * cand
    assert _max_abs_diff(gates["z"], z) < TOL and _max_abs_diff(gates["r"], r) < TOL
    assert _max_abs_diff(gates["g"], cand) < TOL and _max_abs_diff(h, expected) < TOL
    # the stacked form: [x, h] . block-diagonal K + b, one matmul, gives the same h
    cell = GRUCell(UNITS)
    cell.build((None, INPUT_DIM))
    cell.set_weights([kernel, recurrent_kernel, bias])
    stacked, stacked_bias = GRU.stacked_weights(cell, tf.float32)
    both = tf.matmul(tf.concat([x[:, 0], h0], axis=-1), stacked) + stacked_bias  # (batch, 6*units)
    (h_stacked,) = GRU.step(both, (tf.constant(h0),))
    assert _max_abs_diff(h_stacked, expected) < TOL


def test_fused_and_rnn_paths_agree_forward():
    x, h0, weights, _ = _problem(seed=1)
    fused, rnn = _layer("fused", weights), _layer("rnn", weights)
    out_f, (h_f,) = fused(x, initial_state=[h0])
    out_r, (h_r,) = rnn(x, initial_state=[h0])
    assert out_f.shape == out_r.shape == (BATCH, STEPS, UNITS)
    assert _max_abs_diff(out_f, out_r) < TOL and _max_abs_diff(h_f, h_r) < TOL
    assert _max_abs_diff(out_f[:, -1], h_f) == 0.0
    out_zero, _ = fused(x)
    assert _max_abs_diff(out_zero, out_f) > 1e-3  # the non-zero initial state is really used
    out_tm, (h_tm,) = fused(np.transpose(x, (1, 0, 2)), initial_state=[h0], time_major=True)
    assert _max_abs_diff(np.transpose(out_tm, (1, 0, 2)), out_f) == 0.0 and _max_abs_diff(h_tm, h_f) == 0.0


def _gradients(run, layer, x, h0, probe):
    """Gradients of sum(outputs * probe) + sum(h_T^2) w.r.t. the weights, inputs and h0."""
    xs, hs = tf.constant(x), tf.constant(h0)
    with tf.GradientTape() as tape:
        tape.watch([xs, hs])
        out, h_last = run(xs, hs)
        loss = tf.reduce_sum(out * probe) + tf.reduce_sum(h_last * h_last)
    variables = [layer.cell.kernel, layer.cell.recurrent_kernel, layer.cell.bias]
    return [np.asarray(g) for g in tape.gradient(loss, variables + [xs, hs])]


def _reference_masked(layer, mask):
    """Autodiff reference with a recurrent mask: `GRUCell`'s weights and `GRU.step`, step by step,
    h_{t-1} * mask entering the recurrent kernel only."""
    cell = layer.cell

    def run(xs, hs):
        h, outputs = hs, []
        for t in range(xs.shape[1]):
            p = tf.matmul(xs[:, t], cell.kernel) + cell.bias[0]
            q = tf.matmul(h * mask, cell.recurrent_kernel)
            (h,) = GRU.step(p, (h,), q, extras={"recurrent_bias": cell.bias[1]})
            outputs.append(h)
        return tf.stack(outputs, axis=1), h

    return run


@pytest.mark.parametrize("masked", [False, True], ids=["no-dropout", "recurrent-dropout"])
def test_fused_gradients_match_autodiff_of_the_reference_cell(masked):
    """Kernel, recurrent kernel, bias (both rows), inputs and h0: relative and absolute < 1e-5.

    Gradients here are O(1..50) and the two computations differ by float32 round-off only
    (observed relative ~2e-7)."""
    x, h0, weights, rng = _problem(seed=2)
    probe = tf.constant(rng.normal(size=(BATCH, STEPS, UNITS)).astype(np.float32))
    mask = tf.constant((rng.random((BATCH, UNITS)) > 0.3).astype(np.float32) / 0.7) if masked else None
    fused, rnn = _layer("fused", weights), _layer("rnn", weights)

    def run_fused(xs, hs):
        out, (h,) = fused(xs, initial_state=[hs], recurrent_mask=mask)
        return out, h

    def run_rnn(xs, hs):
        out, (h,) = rnn(xs, initial_state=[hs])
        return out, h

    got = _gradients(run_fused, fused, x, h0, probe)
    expected = _gradients(_reference_masked(rnn, mask) if masked else run_rnn, rnn, x, h0, probe)
    names = ["kernel", "recurrent_kernel", "bias", "inputs", "h0"]
    for name, g_f, g_r in zip(names, got, expected):
        assert g_f.shape == g_r.shape, name
        assert np.abs(g_r).max() > 1e-3, f"{name} gradient is trivially zero"
        assert _rel_diff(g_f, g_r) < TOL, (name, _rel_diff(g_f, g_r))
        assert _max_abs_diff(g_f, g_r) < 10 * TOL, (name, _max_abs_diff(g_f, g_r))
    if masked:  # the mask really changes the gradients
        unmasked = _gradients(run_rnn, rnn, x, h0, probe)
        assert _max_abs_diff(got[1], unmasked[1]) > 1e-2


def test_compiled_with_a_dynamic_time_dimension_and_state_carried_across_chunks():
    x, h0, weights, _ = _problem(seed=5, steps=10)
    layer = _layer("fused", weights)
    whole, (h_whole,) = layer(x, initial_state=[h0])
    run = tf.function(lambda xs, h: layer(xs, initial_state=[h]),
                      input_signature=[tf.TensorSpec((BATCH, None, INPUT_DIM)), tf.TensorSpec((BATCH, UNITS))])
    first, (h,) = run(x[:, :4], h0)
    second, (h,) = run(x[:, 4:], h)
    assert _max_abs_diff(tf.concat([first, second], axis=1), whole) < TOL
    assert _max_abs_diff(h, h_whole) < TOL


def test_the_gru_is_a_registered_cell_kind():
    gru = cell_kind("gru")
    assert gru is GRU
    assert gru.state_names == ("h",) and gru.output_index == 0 and gru.gate_blocks == 3
    assert gru.gate_names == ("z", "r", "h")
    assert set(gru.quantities) == {"z", "r", "g", "h"} and set(gru.quantity_names) == set(gru.quantities)
    assert set(gru.sigmoid_gates) <= set(gru.quantities)
    (h,) = gru.zero_state(2, UNITS)
    assert h.shape == (2, UNITS) and gru.state_shapes(2, UNITS) == ((2, UNITS),)


def test_cell_and_layer_configs_round_trip():
    cell = GRUCell(UNITS, name="g")
    assert GRUCell.from_config(cell.get_config()).units == UNITS
    layer = GRULayer(UNITS, lstm_path="rnn")
    again = LSTMLayer.from_config(layer.get_config())
    assert (again.units, again.lstm_path, again.kind) == (UNITS, "rnn", GRU)
    restored = keras.layers.deserialize(keras.layers.serialize(keras.layers.RNN(GRUCell(UNITS))))
    assert isinstance(restored.cell, GRUCell)
    with pytest.raises(ValueError):
        GRUCell(0)
    with pytest.raises(ValueError):
        GRULayer(UNITS, lstm_path="nope")


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="the CPU-only fallback")
def test_cudnn_path_on_a_cpu_only_machine_falls_back_to_the_fused_path():
    x, h0, weights, _ = _problem(seed=7)
    out_c, (h_c,) = _layer("cudnn", weights)(x, initial_state=[h0])
    out_f, (h_f,) = _layer("fused", weights)(x, initial_state=[h0])
    assert _max_abs_diff(out_c, out_f) == 0.0 and _max_abs_diff(h_c, h_f) == 0.0


def test_auto_keeps_cudnn_for_the_gru_on_a_gpu_and_calls_the_grus_binding(monkeypatch):
    """With a GPU faked, `auto` resolves to cuDNN for the GRU (the cell's `cudnn` flag), and the
    layer asks the GRU's cuDNN binding (not the LSTM's), then runs fused where it is absent (CPU)."""
    from textgen import recurrent

    monkeypatch.setattr(recurrent, "gpu_available", lambda: True)
    assert GRULayer(UNITS).path == "cudnn" and GRULayer(UNITS, lstm_path="fused").path == "fused"
    ran = []

    def spy(name, real):
        def spied(*args, **kwargs):
            result = real(*args, **kwargs)
            ran.append((name, result is None))
            return result
        return spied

    monkeypatch.setattr(recurrent, "cudnn_gru_sequence", spy("cudnn_gru", recurrent.cudnn_gru_sequence))
    monkeypatch.setattr(recurrent, "cudnn_lstm_sequence", spy("cudnn_lstm", recurrent.cudnn_lstm_sequence))
    monkeypatch.setitem(recurrent.FUSED, "gru", spy("fused", recurrent.FUSED["gru"]))
    x, h0, weights, _ = _problem(seed=8)
    out_auto, (h_auto,) = _layer("auto", weights)(x, initial_state=[h0])
    gpu = bool(tf.config.list_logical_devices("GPU"))
    assert ran == ([("cudnn_gru", False)] if gpu else [("cudnn_gru", True), ("fused", False)])
    out_f, (h_f,) = _layer("fused", weights)(x, initial_state=[h0])
    assert _max_abs_diff(out_auto, out_f) < TOL and _max_abs_diff(h_auto, h_f) < TOL


@pytest.mark.skipif(not tf.config.list_logical_devices("GPU"), reason="needs an NVIDIA GPU: cuDNN exists only there")
def test_cudnn_gru_on_a_gpu_matches_the_reference_cell():
    """On a GPU the cuDNN path runs NVIDIA's kernel (a CudnnRNN op in the graph) and computes
    what `keras.layers.RNN(GRUCell)` computes (as tests/test_recurrent.py checks for the LSTM)."""
    x, h0, weights, _ = _problem(seed=9)
    cudnn, reference = _layer("cudnn", weights), _layer("rnn", weights)
    run = tf.function(lambda x, h: cudnn(x, initial_state=[h]))
    graph = run.get_concrete_function(x, h0).graph.as_graph_def()
    ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
    assert any(op.startswith("CudnnRNN") for op in ops), sorted(ops)
    out_c, (h_c,) = run(x, h0)
    out_r, (h_r,) = reference(x, initial_state=[h0])
    assert _max_abs_diff(out_c, out_r) < 1e-4 and _max_abs_diff(h_c, h_r) < 1e-4
