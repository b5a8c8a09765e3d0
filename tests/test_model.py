"""The language model: shapes, step-by-step equals whole-sequence, state carrying, weights I/O."""

import numpy as np
import pytest
import tensorflow as tf

from textgen.config import ModelConfig
from textgen.model import build_model, count_params, flatten_state, unflatten_state

CONFIG = ModelConfig(vocab_size=23, embedding_dim=8, units=16, num_layers=2, dropout=0.0)


@pytest.fixture(scope="module")
def model():
    tf.keras.utils.set_random_seed(0)
    return build_model(CONFIG)


def random_ids(batch, time, seed=0):
    return tf.constant(np.random.default_rng(seed).integers(0, CONFIG.vocab_size, (batch, time)), tf.int32)


def test_shapes_and_parameter_count(model):
    ids = random_ids(3, 7)
    logits, states = model(ids)
    assert logits.shape == (3, 7, CONFIG.vocab_size) and logits.dtype == tf.float32
    assert len(states) == CONFIG.num_layers
    assert all(h.shape == (3, 16) and c.shape == (3, 16) for h, c in states)
    e, u, v = CONFIG.embedding_dim, CONFIG.units, CONFIG.vocab_size
    expected = v * e + (4 * u * (e + u + 1)) + (4 * u * (u + u + 1)) + (u * v + v)
    assert count_params(model) == expected


def test_stepping_equals_whole_sequence(model):
    ids = random_ids(4, 12, seed=1)
    whole, whole_states = model(ids)
    states = model.initial_state(4)
    steps = []
    for t in range(12):
        logits, states = model.step(ids[:, t], states)
        steps.append(logits)
    np.testing.assert_allclose(np.stack(steps, axis=1), whole.numpy(), atol=1e-5)
    for (h1, c1), (h2, c2) in zip(states, whole_states):
        np.testing.assert_allclose(h1, h2, atol=1e-5)
        np.testing.assert_allclose(c1, c2, atol=1e-5)


def test_carrying_state_across_windows_equals_one_long_window(model):
    ids = random_ids(2, 20, seed=2)
    whole, _ = model(ids)
    first, states = model(ids[:, :10])
    second, _ = model(ids[:, 10:], states)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), whole.numpy(), atol=1e-5)
    # and a zero state is not the same thing: the carried state matters
    fresh, _ = model(ids[:, 10:])
    assert np.abs(fresh.numpy() - whole.numpy()[:, 10:]).max() > 1e-3


def test_state_flattening_round_trip(model):
    states = model.initial_state(2)
    flat = flatten_state(states)
    assert len(flat) == 2 * CONFIG.num_layers
    assert [tuple(map(id, pair)) for pair in unflatten_state(flat)] == [tuple(map(id, p)) for p in states]


def test_weights_round_trip(model, tmp_path):
    path = str(tmp_path / "m.weights.h5")
    model.save_weights(path)
    other = build_model(CONFIG)
    other.load_weights(path)
    ids = random_ids(2, 5, seed=3)
    np.testing.assert_array_equal(model(ids)[0].numpy(), other(ids)[0].numpy())


def test_vocab_size_must_be_set():
    with pytest.raises(ValueError):
        build_model(ModelConfig(vocab_size=0))


def test_fast_training_path_matches_the_plain_cell_path():
    """The fused layers with the first layer's projection table give the same logits and the same
    gradients as keras.layers.RNN over the plain cell, on a training-sized window."""
    config = ModelConfig(vocab_size=11, embedding_dim=6, units=8, num_layers=2)
    tf.keras.utils.set_random_seed(3)
    fast, plain = build_model(config, lstm_path="fused"), build_model(config, lstm_path="rnn")
    plain.set_weights(fast.get_weights())
    ids = tf.constant(np.random.default_rng(4).integers(0, 11, (4, 9)), tf.int32)  # 36 >= vocab
    assert fast._use_projection_table(ids) and not plain._use_projection_table(ids)
    probe = tf.constant(np.random.default_rng(5).normal(size=(4, 9, 11)), tf.float32)
    results = []
    for model in (fast, plain):
        with tf.GradientTape() as tape:
            logits, states = model(ids, model.initial_state(4))
            loss = tf.reduce_sum(logits * probe) + tf.reduce_sum(states[-1][1])
        grads = tape.gradient(loss, model.trainable_variables)
        results.append((logits.numpy(), [np.asarray(tf.convert_to_tensor(g)) for g in grads]))
    np.testing.assert_allclose(results[0][0], results[1][0], atol=1e-5)
    for g_fast, g_plain in zip(results[0][1], results[1][1]):
        assert np.abs(g_plain).max() > 0
        np.testing.assert_allclose(g_fast, g_plain, atol=1e-5)
