"""The textbook LSTM cell, written out by hand as a Keras layer.

This is the heart of textgen. For input x_t and previous state (h_{t-1}, C_{t-1}):

    f_t = sigmoid(W_f . [h_{t-1}, x_t] + b_f)        forget gate
    i_t = sigmoid(W_i . [h_{t-1}, x_t] + b_i)        input gate
    C~_t = tanh(W_C . [h_{t-1}, x_t] + b_C)          candidate cell
    C_t = f_t * C_{t-1} + i_t * C~_t                 cell state
    o_t = sigmoid(W_o . [h_{t-1}, x_t] + b_o)        output gate
    h_t = o_t * tanh(C_t)                            hidden state

Each W_g . [h, x] is split as x . kernel_g + h . recurrent_kernel_g, and the four gates are
stored side by side in Keras's layout and order (i, f, c, o), so weights copy one-to-one
to and from `keras.layers.LSTM` (and its cuDNN kernel on GPU).
"""

from __future__ import annotations

import keras
import tensorflow as tf

GATE_ORDER = ("i", "f", "c", "o")


def gate_activations(z: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """(i_t, f_t, C~_t, o_t) from the pre-activations z = x.W + h.U + b, (batch, 4*units)."""
    z_i, z_f, z_c, z_o = tf.split(z, 4, axis=-1)
    return tf.sigmoid(z_i), tf.sigmoid(z_f), tf.tanh(z_c), tf.sigmoid(z_o)


def lstm_gates(z: tf.Tensor, c_prev: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Apply the gate equations to the pre-activations z = x.W + h.U + b.

    z: (batch, 4*units) in gate order i, f, c, o; c_prev: (batch, units).
    Returns (h_t, C_t), each (batch, units).
    """
    input_gate, forget_gate, candidate, output_gate = gate_activations(z)
    c = forget_gate * c_prev + input_gate * candidate
    h = output_gate * tf.tanh(c)
    return h, c


def zero_state(batch_size, units: int, dtype="float32") -> tf.Tensor:
    """The zero h (or C) of one layer: (batch_size, units). The one definition every zero state
    of textgen (a new window stream, a new sample, the cell's own initial state) comes from."""
    return tf.zeros((batch_size, units), dtype=dtype)


class ForgetBiasInitializer(keras.initializers.Initializer):
    """Bias initialiser: zeros, except ones for the forget gate (remember by default)."""

    def __call__(self, shape, dtype=None):
        units = shape[0] // 4
        return keras.ops.concatenate(
            [
                keras.ops.zeros((units,), dtype=dtype),
                keras.ops.ones((units,), dtype=dtype),
                keras.ops.zeros((2 * units,), dtype=dtype),
            ]
        )


@keras.saving.register_keras_serializable(package="textgen")
class LSTMCell(keras.layers.Layer):
    """One LSTM step. Usable anywhere a Keras RNN cell is: `keras.layers.RNN(LSTMCell(64))`.

    Weights: `kernel` (input_dim, 4*units), `recurrent_kernel` (units, 4*units),
    `bias` (4*units,), gates in order i, f, c, o; the forget-gate bias starts at 1.
    State: [h, C], each (batch, units).
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        if int(units) <= 0:
            raise ValueError(f"units must be a positive integer, got {units}")
        self.units = int(units)
        self.state_size = [self.units, self.units]
        self.output_size = self.units

    def build(self, input_shape):
        input_dim = input_shape[-1]
        self.kernel = self.add_weight(
            shape=(input_dim, 4 * self.units), initializer="glorot_uniform", name="kernel"
        )
        self.recurrent_kernel = self.add_weight(
            shape=(self.units, 4 * self.units), initializer="orthogonal", name="recurrent_kernel"
        )
        self.bias = self.add_weight(
            shape=(4 * self.units,), initializer=ForgetBiasInitializer(), name="bias"
        )

    def call(self, inputs, states, training=False):
        """inputs: (batch, input_dim); states: [h, C]. Returns (h_t, [h_t, C_t])."""
        h_prev, c_prev = states[0], states[1]
        z = (
            tf.matmul(inputs, self.kernel)
            + tf.matmul(h_prev, self.recurrent_kernel)
            + self.bias
        )  # (batch, 4*units)
        h, c = lstm_gates(z, c_prev)
        return h, [h, c]

    def get_initial_state(self, batch_size=None):
        """Zero state [h, C], each (batch_size, units)."""
        zeros = zero_state(batch_size, self.units, self.compute_dtype)
        return [zeros, zeros]

    def get_config(self):
        return {**super().get_config(), "units": self.units}
