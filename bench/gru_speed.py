"""Training speed of textgen's fused GRU layer stack against its fused LSTM stack and Keras's GRU.

Every contender trains embedding -> L recurrent layers -> dense logits with the same compiled
step (`train_speed.py`'s: forward + backward + Adam lr 2e-3 with global-norm clipping at 5.0,
float32, mean sparse softmax cross-entropy, the state carried from window to window):

  gru         `textgen.recurrent.LSTMLayer(cell="gru")` x L, fused path, time-major
  lstm        `textgen.recurrent.LSTMLayer` x L, fused path, time-major (the same model around it)
  keras_gru   `keras.layers.GRU(reset_after=True)` x L (the anchor, as keras.layers.LSTM is for
              the LSTM in train_speed.py)
  keras_lstm  `keras.layers.LSTM` x L

The textgen stacks run as `textgen.model.CharLSTM` runs them on the fused path: the batch in
row groups side by side (`textgen.parallel`, one per core), the first layer's input projection
gathered from an embedding . W + b_x table; everything but the cell is the same for gru and lstm. All contenders live in
one process and run round-robin, one at a time, each timing --steps steps per repeat; reported:
median chars/s, the median per-repeat ratios, and the ratio of the fastest repeats (on a machine
loaded by other work, the least disturbed estimate).

    python bench/gru_speed.py                         # shape a: 2 x 256, embedding 64, batch 64, seq 100, vocab 65
    python bench/gru_speed.py --repeats 3 --steps 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.train_speed import CLIP_NORM, LEARNING_RATE, SHAPES  # noqa: E402

CONTENDERS = ("gru", "lstm", "keras_gru", "keras_lstm")


def build_step(kind: str, shape, seed: int):
    """(compiled step (x, y, flat_states) -> (loss, flat_states), initial flat states)."""
    import keras
    import tensorflow as tf

    from textgen.parallel import concat_rows, parallel_parts, row_split_sizes, split_rows
    from textgen.recurrent import LSTMLayer

    keras.utils.set_random_seed(seed)
    per_layer = 1 if "gru" in kind else 2
    ours = not kind.startswith("keras")
    if kind == "gru":
        layers = [LSTMLayer(shape.units, lstm_path="fused", cell="gru") for _ in range(shape.num_layers)]
    elif kind == "lstm":
        layers = [LSTMLayer(shape.units, lstm_path="fused") for _ in range(shape.num_layers)]
    else:
        rnn = keras.layers.GRU if kind == "keras_gru" else keras.layers.LSTM
        layers = [rnn(shape.units, return_sequences=True, return_state=True) for _ in range(shape.num_layers)]

    class LM(keras.Model):
        def __init__(self):
            super().__init__()
            self.embedding = keras.layers.Embedding(shape.vocab, shape.embedding_dim)
            self.rnns = layers
            self.head = keras.layers.Dense(shape.vocab)

        def call(self, ids, flat_states):
            """ids (batch, time) -> (logits (time, batch, vocab) for ours, else (batch, time, vocab))."""
            if not ours:
                x, new = self.embedding(ids), []
                for i, layer in enumerate(self.rnns):
                    x, *state = layer(x, initial_state=list(flat_states[per_layer * i: per_layer * (i + 1)]))
                    new += state
                return self.head(x), new
            # as textgen.model.CharLSTM on the fused path: row groups side by side, the first
            # layer's input projection gathered from an (embedding . W + b_x) table
            first = self.rnns[0].cell
            bias = first.kind.input_bias(first)
            table = tf.matmul(self.embedding.embeddings, first.kernel) + bias  # (vocab, blocks*units)
            sizes = row_split_sizes(shape.batch, parallel_parts(shape.batch))
            logits, groups = [], []
            for group_ids, group_flat in zip(tf.split(ids, sizes), split_rows(list(flat_states), sizes)):
                x, new = tf.gather(table, tf.transpose(group_ids)), []  # (time, rows, blocks*units)
                for i, layer in enumerate(self.rnns):
                    state = list(group_flat[per_layer * i: per_layer * (i + 1)])
                    run = layer.run_projected if i == 0 else layer
                    x, state = run(x, initial_state=state, time_major=True)
                    new += list(state)
                logits.append(self.head(x))  # (time, rows, vocab)
                groups.append(new)
            return tf.concat(logits, axis=1), concat_rows(groups)

    model = LM()
    if ours:  # the table needs the first layer's weights before the first call
        model.embedding.build((None,))
        for i, layer in enumerate(layers):
            layer.build((None, None, shape.units if i else shape.embedding_dim))
    flat = [tf.zeros((shape.batch, shape.units))] * (per_layer * shape.num_layers)
    model(tf.zeros((shape.batch, shape.seq_len), tf.int32), flat)  # build the weights
    optimizer = keras.optimizers.Adam(learning_rate=LEARNING_RATE, global_clipnorm=CLIP_NORM)
    optimizer.build(model.trainable_variables)

    def step(x, y, flat_states):
        with tf.GradientTape() as tape:
            logits, states = model(x, flat_states, training=True)
            labels = tf.transpose(y) if ours else y
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss, states

    return tf.function(step, reduce_retracing=True), flat


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="a", choices=sorted(SHAPES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per contender per repeat")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf

    shape = SHAPES[args.shape]
    rng = np.random.default_rng(args.seed)
    batches = [tuple(tf.constant(rng.integers(0, shape.vocab, (shape.batch, shape.seq_len)), tf.int32)
                     for _ in range(2)) for _ in range(4)]
    print(f"gru_speed: tensorflow {tf.__version__}, GPUs {len(tf.config.list_physical_devices('GPU'))}, "
          f"load average {os.getloadavg()[0]:.2f}; shape {shape.describe().split(';')[0]}, float32")
    runs = {}
    for kind in CONTENDERS:
        step, flat = build_step(kind, shape, args.seed)
        for i in range(args.warmup):
            _, flat = step(*batches[i % 4], flat)
        runs[kind] = [step, flat]
    chars = args.steps * shape.batch * shape.seq_len
    rates = {kind: [] for kind in CONTENDERS}
    for rep in range(args.repeats):
        order = CONTENDERS[rep % 4:] + CONTENDERS[:rep % 4]
        for kind in order:
            step, flat = runs[kind]
            t0 = time.perf_counter()
            for n in range(args.steps):
                loss, flat = step(*batches[n % 4], flat)
                float(loss)  # synchronise
            rates[kind].append(chars / (time.perf_counter() - t0))
            runs[kind][1] = flat
    for kind in CONTENDERS:
        print(f"  {kind:11s} median {statistics.median(rates[kind]):9,.0f} chars/s "
              f"(min {min(rates[kind]):,.0f}, max {max(rates[kind]):,.0f})")
    for ours, other in (("gru", "lstm"), ("gru", "keras_gru"), ("lstm", "keras_lstm")):
        ratios = [a / b for a, b in zip(rates[ours], rates[other])]
        print(f"  ratio {ours}/{other}: median {statistics.median(ratios):.2f}, fastest repeats "
              f"{max(rates[ours]) / max(rates[other]):.2f} (per repeat: {', '.join(f'{q:.2f}' for q in ratios)})")
    print(f"  load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
