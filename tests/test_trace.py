"""`textgen.trace`: the recorded gates obey the LSTM equations and match an independent numpy
recomputation from the weights; h and C equal what the model's `call` and `step` (the paths that
`eval` and `sample` use) compute; surprisal and the top guesses equal a numpy softmax of the
model's logits; batches, saturation and the TensorBoard summaries."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest
import tensorflow as tf

from textgen.config import ModelConfig
from textgen.errors import TextgenError
from textgen.model import build_model
from textgen.cell import LSTM
from textgen.recurrent import fused_lstm_sequence
from textgen.trace import (gate_batch, known_text, saturation, sequence_quantities, trace_text,
                           write_gate_summaries)
from textgen.vocab import Vocabulary

TEXT = 'print("hello, world")\n\tx = [1, 2, (3)]  # 中文 🙂\n' * 3  # 150 characters
TOL = 1e-5


@pytest.fixture(scope="module")
def model_and_vocab():
    vocab = Vocabulary.from_text(TEXT)
    tf.keras.utils.set_random_seed(3)
    model = build_model(ModelConfig(vocab_size=vocab.size, embedding_dim=5, units=7, num_layers=2))
    # larger weights than the initialisers give, so gates move over their whole range
    rng = np.random.default_rng(3)
    model.set_weights([rng.normal(scale=1.5, size=w.shape).astype(np.float32) for w in model.get_weights()])
    return model, vocab


@pytest.fixture(scope="module")
def trace(model_and_vocab):
    model, vocab = model_and_vocab
    return trace_text(model, vocab, TEXT, top_k=4, window=32)  # 5 windows, the last one padded


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def numpy_lstm(model, ids):
    """The LSTM equations in float64 numpy, straight from the weights: per layer {"i", ..., "h"}."""
    x = model.embedding.embeddings.numpy()[ids].astype(np.float64)  # (time, embedding)
    layers = []
    for layer in model.lstm_layers:
        kernel, recurrent, bias = (w.numpy().astype(np.float64) for w in
                                   (layer.cell.kernel, layer.cell.recurrent_kernel, layer.cell.bias))
        units = recurrent.shape[0]
        h, c = np.zeros(units), np.zeros(units)
        record = {name: [] for name in "ifgoch"}
        for x_t in x:
            z = x_t @ kernel + h @ recurrent + bias
            i, f, g, o = sigmoid(z[:units]), sigmoid(z[units:2 * units]), np.tanh(z[2 * units:3 * units]), \
                sigmoid(z[3 * units:])
            c = f * c + i * g
            h = o * np.tanh(c)
            for name, value in zip("ifgoch", (i, f, g, o, c, h)):
                record[name].append(value)
        layers.append({name: np.array(values) for name, values in record.items()})
        x = layers[-1]["h"]
    return layers


def test_recorded_gates_obey_the_cell_equations(trace):
    for layer in trace.layers:
        c_prev = np.vstack([np.zeros((1, layer["c"].shape[1])), layer["c"][:-1]])
        np.testing.assert_allclose(layer["c"], layer["f"] * c_prev + layer["i"] * layer["g"], atol=TOL)
        np.testing.assert_allclose(layer["h"], layer["o"] * np.tanh(layer["c"]), atol=TOL)
        for gate in "ifo":
            assert 0 <= layer[gate].min() and layer[gate].max() <= 1
        assert layer["f"].min() < 0.1 and layer["f"].max() > 0.9  # the test covers saturated gates too


def test_every_quantity_matches_an_independent_numpy_lstm(model_and_vocab, trace):
    model, _ = model_and_vocab
    reference = numpy_lstm(model, trace.ids)
    for layer, expected in zip(trace.layers, reference):
        for name in "ifgoch":
            np.testing.assert_allclose(layer[name], expected[name], atol=TOL, err_msg=name)


def test_states_equal_the_models_step_and_call(model_and_vocab, trace):
    model, _ = model_and_vocab
    states = model.initial_state(1)
    weights = model.step_weights()
    for t, char_id in enumerate(trace.ids):  # the sampler's path, one character at a time
        _, states = model.step(tf.constant([char_id]), states, weights)
        for layer, (h, c) in zip(trace.layers, states):
            np.testing.assert_allclose(layer["h"][t], h.numpy()[0], atol=TOL)
            np.testing.assert_allclose(layer["c"][t], c.numpy()[0], atol=TOL)
    _, states = model(tf.constant(trace.ids[None, :]))  # eval's path, the whole text in one call
    for layer, (h, c) in zip(trace.layers, states):
        np.testing.assert_allclose(layer["h"][-1], h.numpy()[0], atol=TOL)
        np.testing.assert_allclose(layer["c"][-1], c.numpy()[0], atol=TOL)


def test_surprisal_and_guesses_equal_a_numpy_softmax_of_the_logits(model_and_vocab, trace):
    model, vocab = model_and_vocab
    logits, _ = model(tf.constant(trace.ids[None, :]))
    logits = logits.numpy()[0].astype(np.float64)  # (time, vocab)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    expected = -np.log2(probs[np.arange(len(TEXT) - 1), trace.ids[1:]])
    np.testing.assert_allclose(trace.surprisal[:-1], expected, atol=1e-4)
    assert np.isnan(trace.surprisal[-1])
    order = np.argsort(-probs, axis=1)[:, :4]
    np.testing.assert_allclose(trace.top_probs, np.take_along_axis(probs, order, axis=1), atol=1e-6)
    np.testing.assert_array_equal(trace.top_ids, order)
    assert trace.vocab_chars == vocab.chars and trace.chars == TEXT


def test_the_traced_loop_is_the_fused_forward_pass():
    rng = np.random.default_rng(0)
    proj = tf.constant(rng.normal(size=(9, 3, 4 * 5)), tf.float32)  # (time, batch, 4*units)
    h0, c0 = (tf.constant(rng.normal(size=(3, 5)), tf.float32) for _ in range(2))
    kernel = tf.constant(rng.normal(size=(5, 20)), tf.float32)
    quantities, (h, c) = sequence_quantities(LSTM, proj, (h0, c0), kernel)
    outputs, h_ref, c_ref = fused_lstm_sequence(proj, h0, c0, kernel, time_major=True)
    assert sorted(quantities) == sorted("hcifgo") and quantities["f"].shape == (9, 3, 5)
    np.testing.assert_allclose(quantities["h"], outputs, atol=1e-6)
    np.testing.assert_allclose(quantities["c"][-1], c_ref, atol=1e-6)
    np.testing.assert_allclose(h, h_ref, atol=1e-6)


def test_out_of_vocabulary_characters_are_skipped_and_counted(model_and_vocab, trace):
    model, vocab = model_and_vocab
    assert known_text(vocab, "pr~int~é") == ("print", {"~": 2, "é": 1})
    skipped = trace_text(model, vocab, TEXT[:40] + "~~é" + TEXT[40:], top_k=4, window=32)
    assert skipped.chars == TEXT and skipped.skipped == {"~": 2, "é": 1}
    np.testing.assert_allclose(skipped.layers[1]["c"], trace.layers[1]["c"], atol=1e-6)


@pytest.mark.parametrize("text", ["", "~é~"])
def test_nothing_to_trace_is_a_one_line_error(model_and_vocab, text):
    model, vocab = model_and_vocab
    with pytest.raises(TextgenError, match="nothing to trace") as error:
        trace_text(model, vocab, text)
    assert "\n" not in str(error.value)


def test_a_trace_too_large_for_memory_is_refused_before_allocating(model_and_vocab, monkeypatch):
    import textgen.trace

    model, vocab = model_and_vocab
    monkeypatch.setattr(textgen.trace, "MAX_TRACE_BYTES", 100 * 7 * 2 * 6 * 4)  # 100 characters' worth
    assert len(trace_text(model, vocab, TEXT[:100])) == 100
    with pytest.raises(TextgenError, match=r"needs 0.0 GiB; trace at most 100 characters at a time"):
        trace_text(model, vocab, TEXT[:101])


def test_gate_batch_rows_equal_traces_and_continue_from_given_states(model_and_vocab, trace):
    model, vocab = model_and_vocab
    rows = np.stack([trace.ids[:50], trace.ids[50:100]])  # (2, 50)
    per_layer = gate_batch(model, rows)
    assert len(per_layer) == 2 and per_layer[0]["g"].shape == (2, 50, 7)
    assert per_layer[0]["g"].dtype == tf.float32
    second = trace_text(model, vocab, TEXT[50:100])  # row 1 from a zero state
    for layer, expected in zip(per_layer, second.layers):
        for name in "ifgoch":
            np.testing.assert_allclose(layer[name][1], expected[name], atol=TOL)
    _, states = model(tf.constant(trace.ids[None, :50]))  # row 0's state carried into the next window
    continued = gate_batch(model, trace.ids[None, 50:100], states)
    np.testing.assert_allclose(continued[1]["c"][0], trace.layers[1]["c"][50:100], atol=TOL)


def test_gate_batch_of_a_mixed_precision_model_is_float32():
    tf.keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(vocab_size=6, embedding_dim=3, units=4, num_layers=2),
                        precision="mixed_bfloat16")
    per_layer = gate_batch(model, np.array([[1, 2, 3, 4, 5]]))
    assert per_layer[1]["f"].dtype == tf.float32 and per_layer[1]["f"].shape == (1, 5, 4)
    c_prev = np.concatenate([np.zeros((1, 4)), per_layer[1]["c"][0, :-1]])
    expected = per_layer[1]["f"][0] * c_prev + per_layer[1]["i"][0] * per_layer[1]["g"][0]
    np.testing.assert_allclose(per_layer[1]["c"][0], expected, atol=0.05)  # bfloat16 arithmetic


def test_gate_batch_of_a_model_under_a_mirrored_strategy(model_and_vocab, trace):
    model, vocab = model_and_vocab
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])  # the trainer's setting
    with strategy.scope():
        mirrored = build_model(model.config)
        mirrored.set_weights(model.get_weights())
        inside = gate_batch(mirrored, trace.ids[None, :40])
    outside = gate_batch(mirrored, trace.ids[None, :40])
    for per_layer in (inside, outside):
        np.testing.assert_allclose(per_layer[1]["h"][0], trace.layers[1]["h"][:40], atol=TOL)


def test_the_compiled_functions_do_not_keep_a_model_alive():
    import gc
    import weakref

    model = build_model(ModelConfig(vocab_size=5, embedding_dim=3, units=4, num_layers=1))
    gate_batch(model, np.array([[0, 1, 2]]))
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None


def test_saturation_counts_values_beyond_the_thresholds():
    f = np.array([[0.05, 0.5], [0.95, 0.5], [0.0, 0.92], [0.1, 0.9]])  # (time, units)
    result = saturation({"f": f, "c": f * 10}, LSTM)
    assert list(result) == ["f"]
    left, right = result["f"]
    np.testing.assert_allclose(left, [0.5, 0.0])  # 0.1 itself is not below 0.1
    np.testing.assert_allclose(right, [0.25, 0.25])
    batched = saturation({"f": np.stack([f, f])}, LSTM, low=0.5, high=0.5)["f"]
    np.testing.assert_allclose(batched[0], [0.75, 0.0])  # over (2, time) rows, other thresholds
    np.testing.assert_allclose(batched[1], [0.25, 0.5])


def test_gate_summaries_reach_tensorboard(model_and_vocab, trace, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, _ = model_and_vocab
    per_layer = gate_batch(model, trace.ids[None, :100])
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        write_gate_summaries(per_layer, step=7, cell=LSTM)
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    events.Reload()
    tags = events.Tags()["tensors"]
    for depth in range(2):
        for name in ("input_gate", "forget_gate", "candidate", "output_gate", "cell"):
            assert f"gates/layer_{depth}/{name}" in tags
    forget = np.asarray(per_layer[1]["f"])
    event = events.Tensors("gates/layer_1/forget_gate_below_0.1")[0]
    assert event.step == 7
    assert float(tf.make_ndarray(event.tensor_proto)) == pytest.approx((forget < 0.1).mean(), abs=1e-6)
    histogram = tf.make_ndarray(events.Tensors("gates/layer_1/forget_gate")[0].tensor_proto)  # (bins, 3)
    assert histogram[:, 2].sum() == forget.size
    writer = tf.summary.create_file_writer(str(tmp_path / "sampled"))
    with writer.as_default():
        write_gate_summaries(per_layer, step=8, cell=LSTM, histogram_values=300)  # 700 values: every 3rd
    writer.close()
    events = EventAccumulator(str(tmp_path / "sampled"), size_guidance={"tensors": 0})
    events.Reload()
    histogram = tf.make_ndarray(events.Tensors("gates/layer_1/forget_gate")[0].tensor_proto)
    assert histogram[:, 2].sum() == len(forget.reshape(-1)[::3]) == 234


def test_a_grus_gate_summaries_are_its_own(tmp_path):
    """A GRU's histograms are its update gate, reset gate and candidate (not the LSTM's), its
    saturation fractions those of z and r, from `gate_batch` of a GRU model."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from textgen.cell import cell_kind

    gru = cell_kind("gru")
    tf.keras.utils.set_random_seed(2)
    model = build_model(ModelConfig(vocab_size=9, embedding_dim=4, units=6, num_layers=1, cell="gru"))
    per_layer = gate_batch(model, np.arange(40).reshape(2, 20) % 9)
    assert sorted(per_layer[0]) == sorted(gru.quantities)
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        write_gate_summaries(per_layer, step=3, cell=gru)
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    events.Reload()
    assert sorted(events.Tags()["tensors"]) == sorted(
        [f"gates/layer_0/{name}" for name in ("update_gate", "reset_gate", "candidate")]
        + [f"gates/layer_0/{gate}_{side}" for gate in ("update_gate", "reset_gate")
           for side in ("below_0.1", "above_0.9")])
    reset = np.asarray(per_layer[0]["r"])
    shown = float(tf.make_ndarray(events.Tensors("gates/layer_0/reset_gate_above_0.9")[0].tensor_proto))
    assert shown == pytest.approx((reset > 0.9).mean(), abs=1e-6)
