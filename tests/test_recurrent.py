"""Tests for `textgen.recurrent.LSTMLayer`: the hand-fused path against the `keras.layers.RNN`
reference path (forward and gradients), path resolution, `tf.function` with a dynamic time
dimension, and carrying state across chunks of a sequence.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest
import tensorflow as tf

from textgen.recurrent import LSTMLayer, resolve_path

UNITS = 6
INPUT_DIM = 4
BATCH = 3
STEPS = 12
TOL = 1e-5


def _random_weights(rng):
    return [
        rng.normal(scale=0.5, size=(INPUT_DIM, 4 * UNITS)).astype(np.float32),
        rng.normal(scale=0.5, size=(UNITS, 4 * UNITS)).astype(np.float32),
        rng.normal(scale=0.5, size=(4 * UNITS,)).astype(np.float32),
    ]


def _problem(seed: int = 0, steps: int = STEPS):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(BATCH, steps, INPUT_DIM)).astype(np.float32)
    h0 = rng.normal(scale=0.5, size=(BATCH, UNITS)).astype(np.float32)
    c0 = rng.normal(scale=0.5, size=(BATCH, UNITS)).astype(np.float32)
    return x, h0, c0, _random_weights(rng), rng


def _layer(path: str, weights) -> LSTMLayer:
    layer = LSTMLayer(UNITS, lstm_path=path)
    layer.build((None, None, INPUT_DIM))
    layer.set_weights(weights)
    return layer


def _max_abs_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def _rel_diff(a, b) -> float:
    """max |a - b| / max |b|: a scale-free comparison for gradients."""
    scale = max(float(np.abs(np.asarray(b)).max()), 1e-12)
    return _max_abs_diff(a, b) / scale


def test_fused_and_rnn_paths_agree_forward():
    x, h0, c0, weights, _ = _problem(seed=1)
    fused, rnn = _layer("fused", weights), _layer("rnn", weights)
    out_f, (h_f, c_f) = fused(x, initial_state=[h0, c0])
    out_r, (h_r, c_r) = rnn(x, initial_state=[h0, c0])
    assert out_f.shape == out_r.shape == (BATCH, STEPS, UNITS)
    assert _max_abs_diff(out_f, out_r) < TOL
    assert _max_abs_diff(h_f, h_r) < TOL
    assert _max_abs_diff(c_f, c_r) < TOL
    assert _max_abs_diff(out_f[:, -1], h_f) == 0.0
    # The non-zero initial state is really used.
    out_zero, _ = fused(x)
    assert _max_abs_diff(out_zero, out_f) > 1e-3


def test_fused_and_rnn_paths_agree_gradients():
    """Gradients w.r.t. kernel, recurrent_kernel, bias, inputs, h0 and c0.

    Checked both absolutely (< 1e-5) and relatively (max abs diff / max abs value < 1e-5).
    The gradients here are O(1) (largest ~3, on kernel/bias, which sum over batch * time) and the
    two paths differ only by float32 round-off from summation order ((x.W + b) + h.U vs
    x.W + h.U + b): observed max abs diff ~5e-7, so the absolute bound holds with ~20x margin.
    The relative check keeps the test meaningful should the problem size (and so the gradient
    magnitude) be scaled up.
    """
    x, h0, c0, weights, rng = _problem(seed=2)
    probe = tf.constant(rng.normal(size=(BATCH, STEPS, UNITS)).astype(np.float32))
    grads = {}
    for path in ("fused", "rnn"):
        layer = _layer(path, weights)
        xs, hs, cs = tf.constant(x), tf.constant(h0), tf.constant(c0)
        with tf.GradientTape() as tape:
            tape.watch([xs, hs, cs])
            out, (_, c_T) = layer(xs, initial_state=[hs, cs])
            loss = tf.reduce_sum(out * probe) + tf.reduce_sum(c_T)
        variables = [layer.cell.kernel, layer.cell.recurrent_kernel, layer.cell.bias]
        g = tape.gradient(loss, variables + [xs, hs, cs])
        assert all(gi is not None for gi in g), path
        grads[path] = [np.asarray(gi) for gi in g]

    names = ["kernel", "recurrent_kernel", "bias", "inputs", "h0", "c0"]
    for name, g_f, g_r in zip(names, grads["fused"], grads["rnn"]):
        assert g_f.shape == g_r.shape, name
        assert np.abs(g_r).max() > 1e-3, f"{name} gradient is trivially zero"
        assert _rel_diff(g_f, g_r) < TOL, (name, _rel_diff(g_f, g_r))
        assert _max_abs_diff(g_f, g_r) < TOL, (name, _max_abs_diff(g_f, g_r))


def test_auto_picks_cudnn_with_a_gpu_and_fused_without():
    assert resolve_path("auto", gpu=False) == "fused"
    assert resolve_path("auto", gpu=True) == "cudnn"
    expected = "cudnn" if tf.config.list_logical_devices("GPU") else "fused"
    assert resolve_path("auto") == expected


def test_resolve_explicit_and_unknown_paths():
    for path in ("fused", "rnn", "cudnn"):
        assert resolve_path(path) == path
    for bad in ("", "FUSED", "nope"):
        with pytest.raises(ValueError):
            resolve_path(bad)


def test_unknown_path_rejected_by_layer():
    with pytest.raises(ValueError):
        LSTMLayer(UNITS, lstm_path="nope")


GPU = bool(tf.config.list_physical_devices("GPU"))


@pytest.mark.skipif(GPU, reason="this is the CPU-only fallback; the GPU test below covers cuDNN")
def test_cudnn_path_on_a_cpu_only_machine_falls_back_to_the_fused_path(monkeypatch):
    """Without a GPU, asking for the cuDNN path runs the fused path: the cuDNN binding is tried
    and declines (None), then the fused loop runs, and computes what the fused layer computes
    (the cuDNN kernel itself is tested on a GPU, below)."""
    from textgen import recurrent

    x = np.random.default_rng(5).normal(size=(3, 6, INPUT_DIM)).astype(np.float32)
    fused, cudnn = LSTMLayer(UNITS, lstm_path="fused"), LSTMLayer(UNITS, lstm_path="cudnn")
    fused.build(x.shape)
    cudnn.build(x.shape)
    cudnn.set_weights(fused.get_weights())
    out_f, (h_f, c_f) = fused(x)
    ran = []

    def spy(name, real):
        def spied(*args, **kwargs):
            result = real(*args, **kwargs)
            ran.append((name, result is None))
            return result
        return spied

    monkeypatch.setattr(recurrent, "cudnn_lstm_sequence", spy("cudnn", recurrent.cudnn_lstm_sequence))
    monkeypatch.setitem(recurrent.FUSED, "lstm", spy("fused", recurrent.FUSED["lstm"]))
    out_c, (h_c, c_c) = cudnn(x)
    assert ran == [("cudnn", True), ("fused", False)]
    np.testing.assert_allclose(np.asarray(out_f), np.asarray(out_c), atol=1e-5)
    np.testing.assert_allclose(np.asarray(c_f), np.asarray(c_c), atol=1e-5)


@pytest.mark.skipif(not GPU, reason="needs an NVIDIA GPU: the cuDNN kernel exists only there")
def test_cudnn_kernel_on_a_gpu_matches_the_reference_cell():
    """On a GPU the cuDNN path really runs NVIDIA's kernel (a CudnnRNN op in the graph, which a
    CPU cannot fake) and computes what the reference `keras.layers.RNN(LSTMCell)` computes."""
    x, h0, c0, weights, _ = _problem(seed=5)
    cudnn, reference = _layer("cudnn", weights), _layer("rnn", weights)
    run = tf.function(lambda x, h, c: cudnn(x, initial_state=[h, c]))
    graph = run.get_concrete_function(x, h0, c0).graph.as_graph_def()
    ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
    assert any(op.startswith("CudnnRNN") for op in ops), sorted(ops)
    out_c, (h_c, c_c) = run(x, h0, c0)
    out_r, (h_r, c_r) = reference(x, initial_state=[h0, c0])
    np.testing.assert_allclose(np.asarray(out_c), np.asarray(out_r), atol=1e-5)
    np.testing.assert_allclose(np.asarray(c_c), np.asarray(c_r), atol=1e-5)


@pytest.mark.parametrize("path", ["fused", "rnn"])
def test_tf_function_dynamic_time_matches_eager(path):
    x, h0, c0, weights, _ = _problem(seed=3)
    layer = _layer(path, weights)

    @tf.function(
        input_signature=[
            tf.TensorSpec((None, None, INPUT_DIM), tf.float32),
            tf.TensorSpec((None, UNITS), tf.float32),
            tf.TensorSpec((None, UNITS), tf.float32),
        ]
    )
    def run(inputs, h, c):
        out, (h_T, c_T) = layer(inputs, initial_state=[h, c])
        return out, h_T, c_T

    for steps in (STEPS, 5):  # two lengths through the one traced graph
        xs = x[:, :steps]
        out_g, h_g, c_g = run(xs, h0, c0)
        out_e, (h_e, c_e) = layer(xs, initial_state=[h0, c0])
        assert out_g.shape == (BATCH, steps, UNITS)
        assert _max_abs_diff(out_g, out_e) < TOL
        assert _max_abs_diff(h_g, h_e) < TOL
        assert _max_abs_diff(c_g, c_e) < TOL
    assert run.experimental_get_tracing_count() == 1  # both lengths ran the one graph


@pytest.mark.parametrize("path", ["fused", "rnn"])
def test_state_carry_across_chunks(path):
    x, h0, c0, weights, _ = _problem(seed=4)
    layer = _layer(path, weights)
    whole, (h_w, c_w) = layer(x, initial_state=[h0, c0])

    state = [h0, c0]
    chunks = []
    for start in range(0, STEPS, 4):
        out, state = layer(x[:, start:start + 4], initial_state=state)
        chunks.append(np.asarray(out))
    assert len(chunks) == 3
    assert _max_abs_diff(np.concatenate(chunks, axis=1), whole) < TOL
    assert _max_abs_diff(state[0], h_w) < TOL
    assert _max_abs_diff(state[1], c_w) < TOL


@pytest.mark.parametrize("path", ["fused", "rnn"])
def test_time_major_call_is_the_batch_major_call_transposed(path):
    """`time_major=True` takes and returns (time, batch, ...) and computes the same numbers."""
    x, h0, c0, weights, _ = _problem(seed=6)
    layer = _layer(path, weights)
    out, (h, c) = layer(x, initial_state=[h0, c0])
    out_tm, (h_tm, c_tm) = layer(np.transpose(x, (1, 0, 2)), initial_state=[h0, c0], time_major=True)
    assert out_tm.shape == (STEPS, BATCH, UNITS)
    assert _max_abs_diff(np.transpose(out_tm, (1, 0, 2)), out) < 1e-6
    assert _max_abs_diff(h_tm, h) < 1e-6 and _max_abs_diff(c_tm, c) < 1e-6


def _masked_reference(x, h0, c0, weights, mask):
    """The textbook equations with h_{t-1} x mask entering the recurrent kernel, one Python loop
    step per time step, differentiated by autodiff: independent of the fused path's hand-written
    backward pass."""
    kernel, recurrent_kernel, bias = weights
    h, c, outputs = h0, c0, []
    for t in range(x.shape[1]):
        z = tf.matmul(x[:, t], kernel) + tf.matmul(h * mask, recurrent_kernel) + bias
        i, f, g, o = tf.split(z, 4, axis=-1)  # Keras's gate order
        c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
        h = tf.sigmoid(o) * tf.tanh(c)
        outputs.append(h)
    return tf.stack(outputs, axis=1), h, c


@pytest.mark.parametrize("time_major", [False, True])
def test_recurrent_mask_forward_and_gradients_match_the_textbook_loop(time_major):
    """Variational recurrent dropout: the fused path with a (batch, units) mask computes what the
    plain loop computes with the same mask at every time step, forward and backward."""
    x, h0, c0, weights, rng = _problem(seed=8)
    mask = (rng.random((BATCH, UNITS)) > 0.4).astype(np.float32) / 0.6
    probe = tf.constant(rng.normal(size=(BATCH, STEPS, UNITS)).astype(np.float32))
    layer = _layer("fused", weights)
    xs, hs, cs = tf.constant(x), tf.constant(h0), tf.constant(c0)
    variables = [layer.cell.kernel, layer.cell.recurrent_kernel, layer.cell.bias]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([xs, hs, cs])
        inputs = tf.transpose(xs, (1, 0, 2)) if time_major else xs
        out, (h_T, c_T) = layer(inputs, initial_state=[hs, cs], time_major=time_major,
                                recurrent_mask=tf.constant(mask))
        if time_major:
            out = tf.transpose(out, (1, 0, 2))
        loss = tf.reduce_sum(out * probe) + tf.reduce_sum(c_T) + 0.5 * tf.reduce_sum(h_T)
        ref_out, ref_h, ref_c = _masked_reference(xs, hs, cs, variables, tf.constant(mask))
        ref_loss = tf.reduce_sum(ref_out * probe) + tf.reduce_sum(ref_c) + 0.5 * tf.reduce_sum(ref_h)
    assert _max_abs_diff(out, ref_out) < TOL and _max_abs_diff(c_T, ref_c) < TOL
    unmasked, _ = layer(x, initial_state=[h0, c0])
    assert _max_abs_diff(unmasked, ref_out) > 1e-2  # the mask really changed the result
    names = ["kernel", "recurrent_kernel", "bias", "inputs", "h0", "c0"]
    got = tape.gradient(loss, variables + [xs, hs, cs])
    want = tape.gradient(ref_loss, variables + [xs, hs, cs])
    for name, g, r in zip(names, got, want):
        assert np.abs(np.asarray(r)).max() > 1e-3, name
        assert _rel_diff(g, r) < TOL, (name, _rel_diff(g, r))


def test_a_masked_call_on_the_cudnn_or_rnn_path_runs_the_fused_loop():
    """cuDNN (and the reference RNN) take no recurrent mask: a masked call computes the fused
    path's masked result whichever path the layer was built for."""
    x, h0, c0, weights, rng = _problem(seed=9)
    mask = tf.constant((rng.random((BATCH, UNITS)) > 0.5).astype(np.float32) * 2.0)
    want, _ = _layer("fused", weights)(x, initial_state=[h0, c0], recurrent_mask=mask)
    for path in ("cudnn", "rnn"):
        got, _ = _layer(path, weights)(x, initial_state=[h0, c0], recurrent_mask=mask)
        assert _max_abs_diff(got, want) < 1e-6, path
