"""Dropout keyed by (seed, step, layer, global row): masks that do not depend on how a batch is
split, and training that gives the same weights on 1 or 2 row groups (cores) with dropout on.
(Replicas and workers: tests/test_distribute.py trains with dropout too.)"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from conftest import describe, invoke

from textgen import parallel
from textgen.dropout import dropout_key, keep_scale, recurrent_mask, row_dropout
from textgen.model import CharLSTM, flatten_state
from textgen.runs import read_run_meta


def _scale(key, layer, row_offset, rows, steps=7, units=33, rate=0.3, time_major=False):
    return keep_scale(key, tf.constant(layer), tf.constant(row_offset), tf.constant(rows),
                      tf.constant(steps), tf.constant(units), tf.constant(rate), time_major).numpy()


def test_keep_fraction_and_scale():
    scale = _scale(dropout_key(1, 5), 1, 0, rows=64, steps=50, units=100, rate=0.3)
    kept = scale > 0
    assert abs(kept.mean() - 0.7) < 0.01
    np.testing.assert_allclose(scale[kept], 1 / 0.7, rtol=1e-6)


def test_mask_depends_on_global_row_not_on_the_split():
    key = dropout_key(1234, 17)
    whole = _scale(key, 2, 0, rows=16)
    halves = np.concatenate([_scale(key, 2, 0, rows=8), _scale(key, 2, 8, rows=8)], axis=0)
    np.testing.assert_array_equal(whole, halves)
    time_major = _scale(key, 2, 0, rows=16, time_major=True)
    np.testing.assert_array_equal(whole, np.transpose(time_major, (1, 0, 2)))


def test_mask_changes_with_seed_step_and_layer():
    base = _scale(dropout_key(1, 5), 1, 0, rows=32) > 0
    for other in (_scale(dropout_key(2, 5), 1, 0, rows=32), _scale(dropout_key(1, 6), 1, 0, rows=32),
                  _scale(dropout_key(1, 5), 2, 0, rows=32)):
        disagree = (base != (other > 0)).mean()
        assert 0.3 < disagree < 0.5  # independent masks at rate 0.3 disagree 2 * 0.3 * 0.7 = 42%


def test_row_dropout_gradient_is_the_mask():
    x = tf.random.normal((4, 5, 6))
    key = dropout_key(3, 9)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = row_dropout(x, 0.5, key, 1, 0)
        total = tf.reduce_sum(y)
    grad = tape.gradient(total, x).numpy()
    np.testing.assert_allclose(grad, _scale(key, 1, 0, 4, 5, 6, 0.5), rtol=1e-6)
    np.testing.assert_allclose(y.numpy(), x.numpy() * grad, rtol=1e-6)


@pytest.mark.parametrize("embedding_dropout", [0.0, 0.2])  # 0: the first layer uses the projection table
def test_model_dropout_is_the_same_for_one_and_two_row_groups(monkeypatch, embedding_dropout):
    """The model's training-mode loss and gradients with one group of 32 rows equal those with
    two groups of 16: each row sees the same masks (recurrent ones too) wherever it runs."""
    from textgen.config import ModelConfig

    config = ModelConfig(vocab_size=20, embedding_dim=8, units=16, num_layers=2, dropout=0.4,
                         embedding_dropout=embedding_dropout, recurrent_dropout=0.3)
    ids = tf.constant(np.random.default_rng(0).integers(0, 20, (32, 12)), tf.int32)
    targets = tf.roll(ids, -1, axis=1)
    results = []
    for cpus in (1, 2):
        monkeypatch.setattr(parallel, "available_cpus", lambda: cpus)
        tf.keras.utils.set_random_seed(5)
        model = CharLSTM(config)
        model(ids[:1, :1])
        assert model._parallel_parts(ids) == cpus
        with tf.GradientTape() as tape:
            loss, _ = model.sequence_loss(ids, targets, training=True, dropout_key=dropout_key(5, 3))
        grads = tape.gradient(loss, model.trainable_variables)
        results.append((float(loss), [tf.convert_to_tensor(g).numpy() for g in grads]))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-6)
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_training_with_dropout_gives_the_same_weights_on_one_and_two_cores(corpus_file, tmp_path, monkeypatch):
    """`textgen train` with dropout on, batch 32: one row group (1 core) and two (2 cores) end
    with the same weights after several steps."""
    import h5py

    weights = []
    for cpus in (1, 2):
        monkeypatch.setattr(parallel, "available_cpus", lambda: cpus)
        runs = tmp_path / f"runs{cpus}"
        result = invoke("train", corpus_file, "--runs-dir", runs, "--name", "r", "--units", "16",
                        "--embedding-dim", "8", "--num-layers", "2", "--dropout", "0.3",
                        "--embedding-dropout", "0.1", "--recurrent-dropout", "0.2",
                        "--batch-size", "32", "--seq-len", "8",
                        "--steps", "5", "--eval-every", "5", "--quiet")
        assert result.exit_code == 0, describe(result)
        name = read_run_meta(runs / "r")["checkpoints"]["last"]
        found = []
        with h5py.File(runs / "r" / name / "model.weights.h5", "r") as f:
            f.visititems(lambda n, o: found.append((n, o[()])) if isinstance(o, h5py.Dataset) else None)
        weights.append([v for _, v in sorted(found, key=lambda item: item[0])])
    assert max(float(np.abs(a - b).max()) for a, b in zip(*weights)) < 1e-5


def test_recurrent_mask_is_one_per_row_and_unit_and_independent_of_the_split():
    key = dropout_key(1234, 17)
    whole = recurrent_mask(0.3, key, 1, 0, 64, 100).numpy()
    assert whole.shape == (64, 100)
    assert abs((whole > 0).mean() - 0.7) < 0.02
    np.testing.assert_allclose(whole[whole > 0], 1 / 0.7, rtol=1e-6)
    halves = np.concatenate([recurrent_mask(0.3, key, 1, 0, 32, 100).numpy(),
                             recurrent_mask(0.3, key, 1, 32, 32, 100).numpy()])
    np.testing.assert_array_equal(whole, halves)
    other_layer = recurrent_mask(0.3, key, 2, 0, 64, 100).numpy()
    between_layers = _scale(key, 1, 0, rows=64, steps=1, units=100)[:, 0, :]
    for other in (other_layer, between_layers):  # not the next layer's, nor row_dropout's mask
        assert 0.3 < ((whole > 0) != (other > 0)).mean() < 0.5
    assert recurrent_mask(0.0, key, 1, 0, 64, 100) is None


@pytest.mark.parametrize("embedding_dropout", [0.0, 0.2])  # 0: the first layer uses the projection table
def test_recurrent_dropout_changes_training_only(embedding_dropout):
    """Same weights and key: recurrent dropout changes what training computes (the carried
    state), not inference."""
    from textgen.config import ModelConfig

    ids = tf.constant(np.random.default_rng(1).integers(0, 20, (32, 12)), tf.int32)
    targets = tf.roll(ids, -1, axis=1)
    finals = {}  # rate -> [training, inference] final states
    for rate in (0.0, 0.5):
        config = ModelConfig(vocab_size=20, embedding_dim=8, units=16, num_layers=2,
                             embedding_dropout=embedding_dropout, recurrent_dropout=rate)
        tf.keras.utils.set_random_seed(5)
        model = CharLSTM(config)
        model(ids[:1, :1])
        finals[rate] = [np.concatenate([np.ravel(s) for s in flatten_state(model.sequence_loss(
            ids, targets, training=training, dropout_key=dropout_key(5, 3))[1])])
            for training in (True, False)]
    np.testing.assert_allclose(finals[0.0][1], finals[0.5][1], atol=1e-6)  # inference: no mask
    assert np.abs(finals[0.0][0] - finals[0.5][0]).max() > 1e-2  # training: the mask is there
