"""An LSTM layer that runs `textgen.cell.LSTMCell` over a whole sequence, fast.

Two paths compute the same equations with the same weights:

- "fused" (default on CPU): the input projection x.W + b of every time step is one big matmul
  before the loop, so the loop itself does only h.U and the gate arithmetic. Hand-written
  because the generic `keras.layers.RNN` loop recomputes x.W step by step.
- "rnn": the reference, `keras.layers.RNN(cell)`, kept for tests and comparison.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from textgen.cell import LSTMCell, lstm_gates

PATHS = ("auto", "fused", "rnn")


def resolve_path(path: str) -> str:
    """The concrete path that `path` selects on this machine."""
    if path not in PATHS:
        raise ValueError(f"unknown LSTM path {path!r}; choose one of {', '.join(PATHS)}")
    return "fused" if path == "auto" else path


def fused_lstm_sequence(
    inputs_proj: tf.Tensor, h0: tf.Tensor, c0: tf.Tensor, recurrent_kernel: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Run the recurrence given precomputed input projections.

    inputs_proj: (batch, time, 4*units) = x.W + b for every step; h0, c0: (batch, units).
    Returns (outputs (batch, time, units), h_T, c_T).
    """
    steps = tf.shape(inputs_proj)[1]
    proj_tm = tf.transpose(inputs_proj, [1, 0, 2])  # (time, batch, 4*units)
    outputs = tf.TensorArray(inputs_proj.dtype, size=steps)

    def body(t, h, c, outputs):
        z = proj_tm[t] + tf.matmul(h, recurrent_kernel)  # (batch, 4*units)
        h, c = lstm_gates(z, c)
        return t + 1, h, c, outputs.write(t, h)

    _, h, c, outputs = tf.while_loop(
        lambda t, *_: t < steps, body, (tf.constant(0), h0, c0, outputs)
    )
    return tf.transpose(outputs.stack(), [1, 0, 2]), h, c


@keras.saving.register_keras_serializable(package="textgen")
class LSTMLayer(keras.layers.Layer):
    """Sequence layer over our `LSTMCell`: (batch, time, features) -> (batch, time, units).

    `call(inputs, initial_state=None)` returns (outputs, [h_T, C_T]) so that a caller can carry
    the state into the next window (truncated BPTT) or the next sampling step.
    """

    def __init__(self, units: int, lstm_path: str = "auto", **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        resolve_path(lstm_path)  # refuse an unknown path now, not at the first call
        self.lstm_path = lstm_path
        self.cell = LSTMCell(self.units, name="cell")
        self._rnn = None

    def build(self, input_shape):
        self.cell.build(input_shape)
        if resolve_path(self.lstm_path) == "rnn":
            self._rnn = keras.layers.RNN(self.cell, return_sequences=True, return_state=True)

    def call(self, inputs, initial_state=None):
        batch = tf.shape(inputs)[0]
        if initial_state is None:
            initial_state = self.cell.get_initial_state(batch)
        h0, c0 = initial_state
        if resolve_path(self.lstm_path) == "rnn":
            outputs, h, c = self._rnn(inputs, initial_state=[h0, c0])
            return outputs, [h, c]
        proj = tf.einsum("btd,dg->btg", inputs, self.cell.kernel) + self.cell.bias
        outputs, h, c = fused_lstm_sequence(proj, h0, c0, self.cell.recurrent_kernel)
        return outputs, [h, c]

    def get_config(self):
        return {**super().get_config(), "units": self.units, "lstm_path": self.lstm_path}
