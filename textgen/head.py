"""The output layer's two-level (adaptive) softmax, as pure functions of its tensors.

For vocabularies of thousands of characters (Chinese), the output layer dominates a training
step (bench/QUALITY.md). A two-level head (Grave et al., 2017, "Efficient softmax approximation
for GPUs", without their smaller tail projections) scores the N most frequent characters and one
"rest" class at every position, and the rest among themselves only at positions whose target is
one of them. p(c) = p_head(rest) * p_tail(c) for a rare c is a proper distribution over the whole
vocabulary, so bits per character stay exact; only the training loss skips work. The model
(`textgen.model.CharLSTM`) and the exports (`textgen.export.step_module`) both call these functions.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def two_level_log_probs(head_logits, tail_logits, ranks):
    """Every character's log-probability under a two-level head, in vocabulary order.

    head_logits (..., N + 1): the N most frequent characters, then "the rest"; tail_logits
    (..., vocab - N): the rest, in frequency order; ranks (vocab,): each id's frequency rank.
    log p(c) = log p_head(c) for frequent c, log p_head(rest) + log p_tail(c) otherwise.
    """
    shortlist = head_logits.shape[-1] - 1
    head = tf.nn.log_softmax(head_logits)  # (..., N + 1)
    tail = tf.nn.log_softmax(tail_logits) + head[..., shortlist:]  # (..., vocab - N)
    return tf.gather(tf.concat([head[..., :shortlist], tail], axis=-1), ranks, axis=-1)  # (..., vocab)


def two_level_loss_sum(x, labels, head, tail, ranks, shortlist: int):
    """Sum over positions of -log p(label) (nats) under a two-level head, the number
    `two_level_log_probs` gives, but computing the rare characters' softmax only at positions
    whose label is rare: that is the saving (~10% of positions in Chinese text).

    x (..., units), labels (...) int; `head`, `tail`: the layers (units -> N + 1, units -> vocab - N).
    """
    x = tf.reshape(x, [-1, x.shape[-1]])  # (positions, units)
    label_ranks = tf.gather(ranks, tf.reshape(labels, [-1]))  # (positions,)
    rare = label_ranks >= shortlist
    head_labels = tf.where(rare, shortlist, label_ranks)  # a rare label is "the rest" first
    loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=head_labels, logits=tf.cast(head(x), tf.float32)))
    where = tf.where(rare)[:, 0]  # (rare positions,)
    tail_logits = tf.cast(tail(tf.gather(x, where)), tf.float32)  # (rare positions, vocab - N)
    return loss + tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.gather(label_ranks, where) - shortlist, logits=tail_logits))


def two_level_biases(log_frequencies: np.ndarray, order: np.ndarray, shortlist: int):
    """(head bias (N + 1,), tail bias (vocab - N,)) that make a two-level head predict the
    normalised `log_frequencies` (vocab,) when the LSTM output is zero; `order`: ids by frequency."""
    ordered = np.asarray(log_frequencies, np.float64)[order]
    log_rest = np.logaddexp.reduce(ordered[shortlist:])
    head = np.append(ordered[:shortlist], log_rest)
    return head.astype(np.float32), (ordered[shortlist:] - log_rest).astype(np.float32)
