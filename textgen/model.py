"""The character language model: embedding -> stacked recurrent layers -> logits over the vocabulary.

The recurrent layers run the cell the config names (`ModelConfig.cell`: "lstm" unless chosen;
`textgen.cell.CELLS`), each through `textgen.recurrent.LSTMLayer`; the model asks the cell kind
for the states it carries, its gate blocks, its extra weights and its step.

The model is functional in its state: `call` takes the per-layer states (a tuple per layer, in the
order of its cell kind's `state_names`: (h, C) for the LSTM) and returns the new ones, instead of
hiding them in a stateful layer. The trainer carries them from window to window
(truncated BPTT) and the sampler from step to step, and both can save and restore them exactly.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from textgen.cell import CellKind, config_cell
from textgen.config import ModelConfig, shortlist_for
from textgen.dropout import recurrent_mask, row_dropout
from textgen.head import two_level_biases, two_level_log_probs, two_level_loss_sum
from textgen.parallel import concat_rows, parallel_parts, row_split_sizes, split_rows
from textgen.recurrent import LSTMLayer
from textgen.runformat import fields_before

State = list  # [per layer a tuple of states in `cell_kind.state_names` order: (h, c)], each (batch, units)


@tf.custom_gradient
def gather_rows(table, ids):
    """tf.gather(table, ids), whose gradient is a dense (rows, columns) table.

    tf.gather's own gradient is an IndexedSlices of one row per id; with several row groups
    TensorFlow concatenates all of them and sums them in one single-threaded op. Summing each
    group's rows here keeps that work inside the group, on the group's core.
    """

    def grad(d_rows):
        return tf.math.unsorted_segment_sum(d_rows, ids, tf.shape(table)[0]), None

    return tf.gather(table, ids), grad


@keras.saving.register_keras_serializable(package="textgen")
class CharLSTM(keras.Model):
    """Character-level language model: embedding -> `config.num_layers` `LSTMLayer`s (each running
    the cell `config.cell` names) -> logits.

    Functional in its state: every call takes the per-layer states and returns the new ones, so
    the trainer carries them from window to window and the sampler from step to step.

    Args:
        config: the shape (`textgen.config.ModelConfig`; `vocab_size` set from the vocabulary).
        lstm_path: "auto", "fused", "cudnn" or "rnn" (see `textgen.recurrent`).
        **kwargs: base `keras.Model` arguments; `dtype` (a Keras dtype policy such as
            "mixed_bfloat16") applies to every layer: weights stay float32, the arithmetic runs
            in the policy's compute dtype, logits are float32.

    Call arguments:
        ids: (batch, time) int character ids.
        states: per layer a tuple of (batch, units) states in `cell_kind.state_names` order
            ((h, C) for the LSTM), or None for zeros (`initial_state`).
        training: whether dropout applies.
        dropout_key: training only, the step's `textgen.dropout.dropout_key`.

    Returns:
        (logits (batch, time, vocab) float32, new states).

    Example:

        model = build_model(ModelConfig(vocab_size=65, embedding_dim=32, units=128, num_layers=2))
        logits, states = model(tf.constant([[5, 6, 7]]))         # (1, 3, 65)
        logits, states = model.step(tf.constant([8]), states)    # (1, 65): one more character
    """

    def __init__(self, config: ModelConfig, lstm_path: str = "auto", **kwargs):
        super().__init__(**kwargs)
        policy = self.dtype_policy
        if config.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be set from the vocabulary")
        self.config = config
        self.lstm_path = lstm_path
        self.cell_kind: CellKind = config_cell(config)  # state names, gates, the step
        # N(0, 1), as PyTorch's nn.Embedding: Keras's default, uniform(-0.05, 0.05), feeds the first
        # layer an input ~30x weaker than its recurrent one, and characters the model sees rarely
        # stay near zero, indistinct, for thousands of steps (bench/QUALITY.md, issue 13)
        self.embedding = keras.layers.Embedding(
            config.vocab_size, config.embedding_dim, name="embedding", dtype=policy,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0, seed=None),
        )
        self.lstm_layers = [
            LSTMLayer(config.units, lstm_path=lstm_path, cell=self.cell_kind.name, name=f"lstm_{i}", dtype=policy)
            for i in range(config.num_layers)
        ]
        # uniform(+-1/sqrt(units)), as PyTorch's nn.Linear, whatever the vocabulary: Keras's
        # glorot-uniform also divides by the output width, so with 5,346 characters the head
        # started 4x smaller than with 65 (half PyTorch's) and passed the LSTMs a gradient as weak;
        # on a Chinese corpus that cost 0.7 bits per character after 5 minutes (bench/QUALITY.md)
        bound = 1.0 / config.units ** 0.5
        uniform = keras.initializers.RandomUniform(-bound, bound, seed=None)
        self.shortlist = shortlist_for(config)  # 0: one softmax; N: two-level (adaptive) head
        # one softmax: (units, vocab). Two-level: the N most frequent characters and "the rest"
        # (units, N + 1), then the rest among themselves (units, vocab - N); `frequency_order`
        # lists the character ids by training frequency, set when a run starts
        self.head = keras.layers.Dense(
            self.shortlist + 1 if self.shortlist else config.vocab_size, name="logits", dtype=policy,
            kernel_initializer=uniform,
        )
        if self.shortlist:
            self.tail = keras.layers.Dense(config.vocab_size - self.shortlist, name="tail_logits",
                                           dtype=policy, kernel_initializer=uniform)
            self.frequency_order = self.add_weight(
                name="frequency_order", shape=(config.vocab_size,), dtype="int32", trainable=False,
                initializer=lambda shape, dtype=None: tf.range(shape[0], dtype=tf.int32))

    def logits(self, x):
        """The output layer: (..., units) LSTM outputs -> float32 logits (..., vocab). A two-level
        head returns every character's log-probability (logits that need no normalising)."""
        logits = tf.cast(self.head(x), tf.float32)
        if not self.shortlist:
            return logits
        return two_level_log_probs(logits, tf.cast(self.tail(x), tf.float32), self.frequency_ranks())

    def frequency_ranks(self):
        """(vocab,) int32: each character id's place in `frequency_order` (two-level head only)."""
        return tf.math.invert_permutation(tf.convert_to_tensor(self.frequency_order))

    def output_weights(self) -> dict:
        """The output layer's tensors, for exports (`textgen.export.step_module`): kernel and bias, and
        for a two-level head tail_kernel, tail_bias and ranks (`frequency_ranks`)."""
        weights = {"kernel": self.head.kernel, "bias": self.head.bias}
        if self.shortlist:
            weights.update(tail_kernel=self.tail.kernel, tail_bias=self.tail.bias, ranks=self.frequency_ranks())
        return {name: tf.convert_to_tensor(w) for name, w in weights.items()}

    def _loss_sum(self, x, labels):
        """Sum of -log p(labels) (nats) over the positions of x (..., units), labels (...)."""
        if not self.shortlist:
            return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=labels, logits=tf.cast(self.head(x), tf.float32)))
        return two_level_loss_sum(x, labels, self.head, self.tail, self.frequency_ranks(), self.shortlist)

    def start_output_layer(self, counts, log_frequencies=None) -> None:
        """Before training: a two-level head takes the character `counts` (vocab,) as its
        frequency order (the most frequent are its shortlist); with `log_frequencies` (vocab,)
        the biases start there, so the model predicts them from its first step."""
        if not self.shortlist:
            if log_frequencies is not None:
                self.head.bias.assign(log_frequencies)
            return
        order = np.argsort(-np.asarray(counts), kind="stable").astype(np.int32)  # most frequent first
        self.frequency_order.assign(order)
        if log_frequencies is not None:
            head_bias, tail_bias = two_level_biases(log_frequencies, order, self.shortlist)
            self.head.bias.assign(head_bias)
            self.tail.bias.assign(tail_bias)

    def initial_state(self, batch_size) -> State:
        """The cell's zero states for every layer, each (batch_size, units) in the compute dtype."""
        zeros = self.cell_kind.zero_state(batch_size, self.config.units, self.compute_dtype)
        return [zeros for _ in self.lstm_layers]

    def call(self, ids, states: State | None = None, training: bool = False, dropout_key=None):
        """ids: (batch, time) int. Returns (logits (batch, time, vocab) float32, new states).

        `dropout_key` (training only): the step's `textgen.dropout.dropout_key`; the trainer
        passes one so that masks depend on (seed, step, layer, row) alone. Without it, a random
        key is drawn per call."""
        def group_logits(x, rows, time_major):
            if time_major:
                x = tf.transpose(x, [1, 0, 2])  # (rows, time, units): fewer numbers than logits
            return self.logits(x)  # (rows, time, vocab)

        logits, new_states = self._row_groups(ids, states, training, dropout_key, group_logits)
        return tf.concat(logits, axis=0), new_states

    def sequence_loss(self, ids, targets, states: State | None = None, training: bool = False,
                      dropout_key=None):
        """Mean cross-entropy in nats of `targets` (batch, time) after `ids`, and the new states.

        The number `loss_fn(self(ids, states)[0], targets)` gives, without assembling the
        (batch, time, vocab) logits: each row group scores its own rows (for a 6,000-character
        vocabulary the logits are the largest tensor of a training step), in the layout its
        layers ran in (time-major on the fused path: the targets are transposed, not the outputs).
        """
        def group_loss(x, rows, time_major):
            labels = targets[rows[0]:rows[1]]  # x: (rows, time, units), or time-major
            return self._loss_sum(x, tf.transpose(labels) if time_major else labels)

        sums, new_states = self._row_groups(ids, states, training, dropout_key, group_loss)
        return tf.add_n(sums) / tf.cast(tf.size(targets), tf.float32), new_states

    def _row_groups(self, ids, states, training, dropout_key, finish):
        """Run the batch as `parallel_parts` independent groups of rows (see textgen.parallel).

        Each group goes through the whole layer stack; `finish(x, (start, end), time_major)` maps
        the last layer's outputs for rows start..end, (rows, time, units) or (time, rows, units),
        to what the caller keeps. Returns (the list of those in row order, the batch's new states).
        """
        if states is None:
            states = self.initial_state(tf.shape(ids)[0])
        table = self._input_table() if self._use_projection_table(ids, training) else None
        time_major = self._fused
        config = self.config
        dropping = training and max(config.dropout, config.embedding_dropout, config.recurrent_dropout) > 0
        key = (dropout_key if dropout_key is not None else _random_key()) if dropping else None
        first_row = _replica_first_row(tf.shape(ids)[0])  # of this replica, in the global batch
        parts = self._parallel_parts(ids)
        if parts == 1:
            x, new_states = self._recurrent_stack(ids, states, table, (key, first_row), time_major)
            return [finish(x, (0, None), time_major)], new_states
        sizes = row_split_sizes(ids.shape[0], parts)
        kept, group_states, start = [], [], 0
        for size, group_ids, group_state in zip(sizes, tf.split(ids, sizes),
                                                split_rows(flatten_state(states), sizes)):
            x, group_state = self._recurrent_stack(
                group_ids, unflatten_state(group_state, self.cell_kind), table, (key, first_row + start),
                time_major)
            kept.append(finish(x, (start, start + size), time_major))
            group_states.append(flatten_state(group_state))
            start += size
        return kept, unflatten_state(concat_rows(group_states), self.cell_kind)

    def _recurrent_stack(self, ids, states: State, table, dropout, time_major: bool):
        """Embedding (or the first layer's projection `table`) -> LSTM layers, for some rows.

        ids: (batch, time); `dropout`: (key, global row of the first of these rows), the key
        None when not training. Returns (the last layer's outputs, (time, batch, units) if
        `time_major` else (batch, time, units), new states). The fused path runs time-major so
        that no layer transposes its (time, batch, 4*units) projections.
        """
        key, first_row = dropout
        rows = tf.shape(ids)[0]

        def drop(x, rate, layer):  # layer 0: the embedding; k: after LSTM layer k
            return x if key is None else row_dropout(x, rate, key, layer, first_row, time_major)

        def recurrent(layer):  # LSTM layer k's mask on h_{t-1}, (rows, units), or None
            return None if key is None else recurrent_mask(
                self.config.recurrent_dropout, key, layer, first_row, rows, self.config.units)

        if time_major:
            ids = tf.transpose(ids)  # (time, batch)
        new_states = []
        if table is not None:
            x, state = self.lstm_layers[0].run_projected(gather_rows(table, ids), list(states[0]), time_major,
                                                         recurrent_mask=recurrent(0))
            x = drop(x, self.config.dropout, 1)
            new_states.append(tuple(state))
            layers, states = self.lstm_layers[1:], states[1:]
        else:
            x = self.embedding(ids)  # (batch, time, embedding_dim), or time-major
            x = drop(x, self.config.embedding_dropout, 0)
            layers = self.lstm_layers
        for layer, state in zip(layers, states):
            x, state = layer(x, initial_state=list(state), time_major=time_major,
                             recurrent_mask=recurrent(len(new_states)))  # (..., units)
            x = drop(x, self.config.dropout, len(new_states) + 1)  # on non-recurrent connections only
            new_states.append(tuple(state))
        return x, new_states

    @property
    def _fused(self) -> bool:
        """Whether the layers run the fused CPU path (time-major, row groups, projection table)."""
        return self.lstm_layers[0].path == "fused"

    def _parallel_parts(self, ids) -> int:
        """Row groups for this batch: only on the fused path, with a static batch size."""
        return parallel_parts(ids.shape[0]) if self._fused else 1

    def _use_projection_table(self, ids, training: bool = False) -> bool:
        """Whether the first layer's input projection should come from a lookup table: only on
        the fused path, once built, without embedding dropout in play, and when the batch has at
        least as many characters as the vocabulary (training windows, not single sampling
        steps). Decided on static shapes."""
        first = self.lstm_layers[0]
        n_chars = ids.shape[0] * ids.shape[1] if None not in ids.shape else None
        dropping = bool(training) and self.config.embedding_dropout > 0
        return (first.built and self._fused and not dropping
                and n_chars is not None and n_chars >= self.config.vocab_size)

    def _input_table(self):
        """embedding . W + b of the first layer for every character: (vocab, 4*units).

        For characters, embedding(id).W + b takes only vocab_size distinct values, so one
        (vocab, embedding) @ (embedding, 4*units) matmul and a gather replace a
        (batch*time, embedding) @ (embedding, 4*units) matmul; gradients flow through both.
        """
        cell, dtype = self.lstm_layers[0].cell, self.compute_dtype
        # explicit casts: `sequence_loss` runs outside Keras's autocasting `call`
        return (tf.matmul(tf.cast(self.embedding.embeddings, dtype), tf.cast(cell.kernel, dtype))
                + tf.cast(self.cell_kind.input_bias(cell), dtype))

    def step_weights(self, fold: bool | None = None) -> dict:
        """The weights rearranged for single steps; compute once, outside a sampling loop.

        The first layer's x.W + b is either folded into a (vocab, blocks*units) lookup table
        ("table": one gather a step, fastest) or kept apart ("embedding", "kernel", "bias": gather
        the (vocab, embedding) row, then x.W + b), whichever holds fewer numbers
        (`folds_embedding`; `fold` forces one). Each later layer's weights are in the form its cell
        kind steps with (`CellKind.stacked_weights`: for the LSTM the two matmuls x.W + h.U become
        one [x, h] . [W; U], so a step is one matmul per layer). A cell with extra weights (the
        peephole's) has them under "extras", one dict per layer.
        """
        first, dtype, kind = self.lstm_layers[0].cell, self.compute_dtype, self.cell_kind  # 16 bits under mixed precision
        weights = {
            "recurrent": tf.cast(first.recurrent_kernel, dtype),
            "stacked": [kind.stacked_weights(layer.cell, dtype) for layer in self.lstm_layers[1:]],
        }
        if kind.extra_weights:
            weights["extras"] = [kind.extras(layer.cell, dtype) for layer in self.lstm_layers]
        if folds_embedding(self.config) if fold is None else fold:
            weights["table"] = self._input_table()
        else:
            weights.update(embedding=tf.cast(self.embedding.embeddings, dtype),
                           kernel=tf.cast(first.kernel, dtype), bias=tf.cast(kind.input_bias(first), dtype))
        return weights

    def step(self, ids, states: State, weights: dict | None = None):
        """One time step through the cell equations (no sequence loop): the sampler's hot path.

        ids: (batch,) -> (logits (batch, vocab) float32, new states). Same numbers as `call`.
        """
        x, new_states = step_layers(weights or self.step_weights(), ids, states, self.cell_kind)
        return self.logits(x), new_states

    def get_config(self):
        from textgen.config import to_dict

        return {**super().get_config(), "config": to_dict(self.config), "lstm_path": self.lstm_path}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        model_config = ModelConfig(**{**fields_before("model"), **config.pop("config")})
        return cls(model_config, **config)


def folds_embedding(config: ModelConfig) -> bool:
    """Whether the inference step folds the embedding into the first layer's input projection:
    only where the (vocab, blocks*units) table holds no more numbers than the embedding and the
    kernel apart (vocab*embedding + embedding*blocks*units). Small vocabularies fold (one gather
    a step instead of a gather and a matmul); large ones keep the export near the weights' size."""
    width = config_cell(config).gate_blocks * config.units
    folded, apart = config.vocab_size * width, (config.vocab_size + width) * config.embedding_dim
    return folded <= apart


def first_projection(weights: dict, ids):
    """x.W + b of the first layer for `ids` (batch,): (batch, blocks*units), from either layout
    of `CharLSTM.step_weights`."""
    if "table" in weights:
        return tf.gather(weights["table"], ids)
    return tf.matmul(tf.gather(weights["embedding"], ids), weights["kernel"]) + weights["bias"]


def step_layers(weights: dict, ids, states: State, cell: CellKind):
    """The layer stack of `CharLSTM.step` as a pure function of `step_weights()`'s tensors.

    ids: (batch,) int; states: per layer a tuple in `cell.state_names` order; the equations are
    `cell.step`. Returns (the last layer's output (batch, units), new states). Public so that
    `textgen.export.step_module` traces the very same step into SavedModel and LiteRT graphs.
    The first layer hands the cell x.W + b and h.U apart (`cell.step`); each later layer steps
    through `cell.stacked_step` from its input and `weights["stacked"]`, so a cell whose
    equations need h.U apart (a GRU) computes it its own way. `weights["extras"]`, where
    present, holds each layer's extra weights (the peepholes).
    """
    extras = weights.get("extras") or [None] * len(states)
    state = states[0]
    recurrent = tf.matmul(cell.output(state), weights["recurrent"])  # (batch, blocks*units)
    new_states = [cell.step(first_projection(weights, ids), state, recurrent, extras=extras[0])]
    x = cell.output(new_states[0])
    for stacked, state, extra in zip(weights["stacked"], states[1:], extras[1:]):
        new_states.append(cell.stacked_step(x, state, stacked, extras=extra))
        x = cell.output(new_states[-1])
    return x, new_states


def build_model(config: ModelConfig, lstm_path: str = "auto", precision: str = "float32") -> CharLSTM:
    """A built (weights created) model for `config`; `precision` is a Keras dtype policy name."""
    model = CharLSTM(config, lstm_path=lstm_path, dtype=precision)
    model(tf.zeros((1, 1), dtype=tf.int32))
    return model


def count_params(model: keras.Model) -> int:
    """Number of trainable parameters."""
    return int(sum(int(tf.size(w)) for w in model.trainable_weights))


def _random_key():
    """A fresh dropout key, for training calls that bring none (plain Keras use of the model)."""
    return tf.cast(tf.random.uniform((), maxval=2**31 - 1, dtype=tf.int32), tf.uint32)


def _replica_first_row(rows):
    """Global batch row of this replica's first row: replica r of n trains rows r*rows .. under
    `tf.distribute` (textgen.distribute.Replicas); 0 outside a strategy."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tf.constant(0, tf.int32)
    return tf.cast(context.replica_id_in_sync_group, tf.int32) * tf.cast(rows, tf.int32)


def flatten_state(states: State) -> list:
    """[(h, c), ...] -> [h0, c0, h1, c1, ...] (for saving and tf.function signatures)."""
    return [t for layer in states for t in layer]


def unflatten_state(flat, cell: CellKind) -> State:
    """[h0, c0, h1, c1, ...] -> [(h0, c0), (h1, c1), ...]: `len(cell.state_names)` per layer."""
    flat, per_layer = list(flat), len(cell.state_names)
    return [tuple(flat[i:i + per_layer]) for i in range(0, len(flat), per_layer)]
