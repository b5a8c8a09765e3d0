"""Sequence regression with textgen's hand-written LSTM cell.

This mirrors the Flux.jl example in the project's seed document::

    model = Chain(LSTM(10, 20), Dense(20, 1))
    loss(x, y) = Flux.mse(model(x), y)
    opt = Flux.ADAM()

Here `Chain(LSTM(10, 20), Dense(20, 1))` becomes
`keras.Sequential([keras.Input((seq_len, 10)), keras.layers.RNN(LSTMCell(20)), keras.layers.Dense(1)])`:
10 input features per time step, 20 LSTM units (our `textgen.cell.LSTMCell` run over the
sequence by `keras.layers.RNN`, which returns the last hidden state), then a dense layer down to
one output. It is trained with mean squared error and Adam, like the Flux snippet.

The task needs memory: x is (n, seq_len, 10) standard normal noise and the target is the
running total of feature 0 over the whole sequence, scaled to unit variance,
y = sum_t x[:, t, 0] / sqrt(seq_len), so var(y) = 1 (the loss of the trivial predict-the-mean
baseline). The model only produces its output after the last step, so it must accumulate
feature 0 of every step in its cell state while ignoring the other nine features.

Run: `python examples/regression.py` prints the initial and final training loss.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Allow `python examples/regression.py` from a checkout without installing textgen.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from textgen.cell import LSTMCell  # noqa: E402

N_FEATURES = 10
UNITS = 20


def make_data(n: int = 512, seq_len: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x: (n, seq_len, 10) ~ N(0, 1); y: (n, 1) = sum over time of feature 0 / sqrt(seq_len)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, seq_len, N_FEATURES)).astype(np.float32)
    y = (x[:, :, 0].sum(axis=1) / np.sqrt(seq_len)).astype(np.float32)[:, None]
    return x, y


def build_model(seq_len: int = 8) -> keras.Model:
    """Flux `Chain(LSTM(10, 20), Dense(20, 1))` with our cell."""
    return keras.Sequential(
        [
            keras.Input((seq_len, N_FEATURES)),
            keras.layers.RNN(LSTMCell(UNITS)),
            keras.layers.Dense(1),
        ]
    )


def main(
    epochs: int = 25,
    seed: int = 0,
    n: int = 512,
    seq_len: int = 8,
    batch_size: int = 32,
    learning_rate: float = 1e-2,
) -> tuple[float, float]:
    """Train on the synthetic task; return (initial_loss, final_loss), the training-set MSE."""
    keras.utils.set_random_seed(seed)
    x, y = make_data(n, seq_len, seed)
    model = build_model(seq_len)
    steps = epochs * -(-n // batch_size)
    # Cosine decay to 0 so the last epochs settle instead of bouncing around at the peak rate.
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="mse")
    initial_loss = float(model.evaluate(x, y, batch_size=n, verbose=0))
    model.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0)
    final_loss = float(model.evaluate(x, y, batch_size=n, verbose=0))
    return initial_loss, final_loss


if __name__ == "__main__":
    initial, final = main()
    print(f"initial_loss={initial:.6f}")
    print(f"final_loss={final:.6f}")
