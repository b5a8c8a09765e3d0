"""Tests for what the fused loops share (`textgen.fused`) beyond the loops themselves (pinned per
cell in test_recurrent, test_lstm_variants and test_gru): the 4 KiB-aliasing padding of wide
matrix products, which must change the speed only, never a value or a gradient.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from textgen.fused import PAD_COLUMNS, alias_padding, matmul_unaliased, pad_columns


@pytest.mark.parametrize(("columns", "dtype", "padded"), [
    (1024, tf.float32, True), (2048, tf.float32, True), (768, tf.float32, False), (1040, tf.float32, False),
    (1024, tf.bfloat16, False), (2048, tf.float16, True), (64, tf.float32, False)])
def test_only_rows_a_multiple_of_4_kib_apart_are_padded(columns, dtype, padded):
    matrix = tf.zeros((3, columns), dtype)
    assert alias_padding(matrix) == (PAD_COLUMNS if padded else 0)
    assert pad_columns(matrix).shape == (3, columns + (PAD_COLUMNS if padded else 0))


@pytest.mark.parametrize("transpose_a", [False, True])
def test_the_padded_product_and_its_gradients_are_the_plain_ones(transpose_a):
    rng = np.random.default_rng(0)
    a = tf.constant(rng.normal(size=(40, 24)).astype(np.float32))
    b = tf.constant(rng.normal(size=(40 if transpose_a else 24, 1024)).astype(np.float32))
    probe = tf.constant(rng.normal(size=(24 if transpose_a else 40, 1024)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([a, b])
        got = matmul_unaliased(a, b, transpose_a=transpose_a)
        want = tf.matmul(a, b, transpose_a=transpose_a)
        got_loss, want_loss = tf.reduce_sum(got * probe), tf.reduce_sum(want * probe)
    assert got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-4)
    for g, w in zip(tape.gradient(got_loss, [a, b]), tape.gradient(want_loss, [a, b])):
        assert g.shape == w.shape
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-4)
