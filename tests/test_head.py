"""The two-level (adaptive) output layer: exact log-probabilities, a training loss that equals
them (value and gradients) while skipping the rare characters' softmax where it can, and biases
that start the model at the character frequencies. References are written out in numpy here."""

import numpy as np
import pytest
import tensorflow as tf

from textgen.config import ModelConfig, shortlist_for
from textgen.head import two_level_biases, two_level_log_probs, two_level_loss_sum
from textgen.model import build_model, count_params

VOCAB, SHORTLIST, UNITS = 11, 4, 6


def numpy_log_softmax(z):
    z = z.astype(np.float64)
    return z - np.logaddexp.reduce(z, axis=-1, keepdims=True)


def layers(seed=0):
    rng = np.random.default_rng(seed)
    head = tf.keras.layers.Dense(SHORTLIST + 1)
    tail = tf.keras.layers.Dense(VOCAB - SHORTLIST)
    head.build((None, UNITS))
    tail.build((None, UNITS))
    for layer in (head, tail):
        layer.kernel.assign(rng.normal(size=layer.kernel.shape).astype(np.float32))
        layer.bias.assign(rng.normal(size=layer.bias.shape).astype(np.float32))
    order = rng.permutation(VOCAB).astype(np.int32)  # ids, most frequent first
    ranks = np.argsort(order).astype(np.int32)
    return head, tail, order, ranks


def test_log_probs_are_the_two_softmaxes_chained_in_vocabulary_order():
    head, tail, order, ranks = layers()
    x = np.random.default_rng(1).normal(size=(3, 5, UNITS)).astype(np.float32)
    got = two_level_log_probs(head(x), tail(x), ranks).numpy()  # (3, 5, VOCAB)
    head_lp = numpy_log_softmax(x @ head.kernel.numpy() + head.bias.numpy())
    tail_lp = numpy_log_softmax(x @ tail.kernel.numpy() + tail.bias.numpy())
    expected = np.empty((3, 5, VOCAB))
    for rank, char in enumerate(order):
        expected[..., char] = (head_lp[..., rank] if rank < SHORTLIST
                               else head_lp[..., SHORTLIST] + tail_lp[..., rank - SHORTLIST])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(np.logaddexp.reduce(got, axis=-1), 0.0, atol=1e-5)  # a distribution


def test_loss_and_its_gradients_equal_the_full_log_probs_path():
    head, tail, _, ranks = layers(2)
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(size=(4, 7, UNITS)).astype(np.float32))
    labels = tf.constant(rng.integers(0, VOCAB, (4, 7)), tf.int32)  # frequent and rare alike
    assert 0 < int(tf.reduce_sum(tf.cast(tf.gather(ranks, labels) >= SHORTLIST, tf.int32))) < 28
    variables = [x, *head.trainable_variables, *tail.trainable_variables]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        fast = two_level_loss_sum(x, labels, head, tail, tf.constant(ranks), SHORTLIST)
        log_probs = two_level_log_probs(head(x), tail(x), ranks)
        full = -tf.reduce_sum(tf.gather(log_probs, labels, batch_dims=2))
    np.testing.assert_allclose(fast.numpy(), full.numpy(), rtol=1e-5)
    for got, expected in zip(tape.gradient(fast, variables), tape.gradient(full, variables)):
        np.testing.assert_allclose(tf.convert_to_tensor(got).numpy(), tf.convert_to_tensor(expected).numpy(),
                                   atol=1e-5)


def test_biases_start_the_head_at_the_given_frequencies():
    rng = np.random.default_rng(4)
    log_freq = numpy_log_softmax(rng.normal(size=VOCAB) * 2)
    head, tail, order, ranks = layers(5)
    head_bias, tail_bias = two_level_biases(log_freq, order, SHORTLIST)
    head.bias.assign(head_bias)
    tail.bias.assign(tail_bias)
    zero = np.zeros((1, UNITS), np.float32)
    np.testing.assert_allclose(two_level_log_probs(head(zero), tail(zero), ranks).numpy()[0], log_freq, atol=1e-5)


def test_model_with_a_two_level_head_scores_its_windows_exactly():
    """CharLSTM.sequence_loss (row groups, time-major fused path, the rare rows gathered) equals
    the mean -log p of the model's own log-probabilities, and so do its gradients."""
    config = ModelConfig(vocab_size=VOCAB, embedding_dim=5, units=UNITS, num_layers=2, head_shortlist=SHORTLIST)
    tf.keras.utils.set_random_seed(6)
    model = build_model(config)
    assert model.shortlist == SHORTLIST and count_params(model) == config.parameter_count()
    model.frequency_order.assign(np.random.default_rng(7).permutation(VOCAB).astype(np.int32))
    rng = np.random.default_rng(8)
    ids = tf.constant(rng.integers(0, VOCAB, (4, 9)), tf.int32)
    targets = tf.constant(rng.integers(0, VOCAB, (4, 9)), tf.int32)
    with tf.GradientTape(persistent=True) as tape:
        loss, _ = model.sequence_loss(ids, targets)
        log_probs, _ = model(ids)  # (4, 9, VOCAB)
        reference = -tf.reduce_mean(tf.gather(log_probs, targets, batch_dims=2))
    np.testing.assert_allclose(np.logaddexp.reduce(log_probs.numpy(), axis=-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(loss.numpy(), reference.numpy(), rtol=1e-5)
    for got, expected in zip(tape.gradient(loss, model.trainable_variables),
                             tape.gradient(reference, model.trainable_variables)):
        np.testing.assert_allclose(tf.convert_to_tensor(got).numpy(), tf.convert_to_tensor(expected).numpy(),
                                   atol=1e-5)
    stepped, _ = model.step(ids[:, 0], model.initial_state(4))
    np.testing.assert_allclose(stepped.numpy(), log_probs.numpy()[:, 0], atol=1e-5)


@pytest.mark.parametrize("vocab, given, expected", [
    (6000, None, 1024), (2049, None, 1024), (2048, None, 0), (65, None, 0),  # automatic
    (6000, 0, 0), (6000, 500, 500), (65, 10, 10), (65, 64, 0), (65, 5000, 0),  # given
])
def test_shortlist_choice(vocab, given, expected):
    assert shortlist_for(ModelConfig(vocab_size=vocab, head_shortlist=given)) == expected
