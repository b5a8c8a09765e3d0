"""The one random draw of textgen's samplers: `textgen sample`, every export's `generate` and
`textgen serve`'s rows.

A row's key is a pure function of (sampling seed, choice index) and its draw at a character a pure
function of (key, the character's position in the generated text: 0 for the first character after
the prime), computed from 32-bit integer ops alone (MurmurHash3's finaliser, `textgen.dropout.fmix32`).
Written by hand because TensorFlow's stateless RNGs give different numbers under XLA than without
it (and a LiteRT or ONNX runtime has none of them), and take one seed for the whole batch, which
would tie a row's text to its batch; integer ops give the same bits in every runtime, so the same
seed gives the same text in the compiled sampler, an export's graph and the server.
"""

from __future__ import annotations

import tensorflow as tf

from textgen.dropout import fmix32

_SEED, _INDEX, _POSITION, _SALT = 0x632BE59B, 0x9E3779B9, 0x85EBCA77, 0x7F4A7C15


def _word(value):
    return tf.constant(value, tf.uint32)


def draw_keys(seed, index):
    """The keys of rows (seed, index): (rows, 2) uint32 for index (rows,), (2,) for a scalar.

    seed: an integer tensor, 0 .. 2^31 - 1 (`textgen.config.check_seed`); index: the row's choice
    index (`sample --num-samples` row i is `serve`'s choice i). Distinct (seed, index) pairs give
    distinct keys: each word is a bijection of the one before, so nearby seeds give unrelated draws.
    """
    index = tf.cast(index, tf.uint32)
    seed_word = fmix32(tf.bitwise.bitwise_xor(tf.cast(seed, tf.uint32), _word(_SEED)))
    seed_word = tf.broadcast_to(seed_word, tf.shape(index))  # () or (rows,)
    return tf.stack([seed_word, fmix32(seed_word + index * _word(_INDEX))], axis=-1)


def counter_uniform(keys, positions):
    """One uniform number in (0, 1) per row, a pure function of (the row's key, its position).

    keys: (rows, 2) uint32; positions: int32, (rows,) or a scalar for all rows -> (rows,) float32.
    A position below 0 (a row still reading its prompt in `textgen serve`) draws a number that is
    never used.
    """
    counter = tf.cast(positions, tf.uint32) * _word(_POSITION) + _word(_SALT)
    h = fmix32(tf.bitwise.bitwise_xor(keys[:, 1], counter))
    h = fmix32(tf.bitwise.bitwise_xor(keys[:, 0], h))
    # the top 24 bits (a float32 mantissa), centred in their interval: never exactly 0 or 1
    return (tf.cast(tf.bitwise.right_shift(h, 8), tf.float32) + 0.5) / float(1 << 24)


def inverse_cdf_draw(filtered, keys, positions):
    """Ids (rows,) drawn from filtered, temperature-scaled logits (rows, vocab): the first id whose
    cumulative probability reaches `counter_uniform(keys, positions)` (never a masked id)."""
    cdf = tf.cumsum(tf.nn.softmax(filtered), axis=-1)  # (rows, vocab)
    threshold = counter_uniform(keys, positions)[:, None] * cdf[:, -1:]  # (rows, 1)
    sampled = tf.reduce_sum(tf.cast(cdf < threshold, tf.int32), axis=-1)
    return tf.minimum(sampled, tf.shape(filtered)[-1] - 1)
