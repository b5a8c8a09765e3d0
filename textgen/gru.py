"""The GRU cell written out by hand as a Keras layer: Keras's `reset_after=True` GRU.

For input x_t and previous state h_{t-1} (`textgen.cell.GRUKind` holds the equations):

    z_t = sigmoid(x_t.W_z + b_xz + h_{t-1}.U_z + b_hz)          update gate
    r_t = sigmoid(x_t.W_r + b_xr + h_{t-1}.U_r + b_hr)          reset gate
    h~_t = tanh(x_t.W_h + b_xh + r_t * (h_{t-1}.U_h + b_hh))    candidate
    h_t = z_t * h_{t-1} + (1 - z_t) * h~_t                      hidden state

The weights are Keras's layout and gate order (z, r, h~), so they copy one-to-one to and from
`keras.layers.GRU(reset_after=True)` (and its cuDNN kernel on GPU).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from textgen.cell import GRU


@keras.saving.register_keras_serializable(package="textgen")
class GRUCell(keras.layers.Layer):
    """One GRU step (the module docstring's equations), usable anywhere a Keras RNN cell is.

    Weights: `kernel` (input_dim, 3*units), `recurrent_kernel` (units, 3*units) and `bias`
    (2, 3*units): row 0 the input bias b_x, row 1 the recurrent bias b_h; gates side by side in
    order z, r, h~ (Keras's layout: `set_weights` takes a `keras.layers.GRU`'s weights as they
    are). The biases start at zero, as Keras's.

    Args:
        units: positive integer, the width of h.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: (batch, input_dim) float tensor, x_t.
        states: [h_{t-1}], (batch, units) (`get_initial_state` gives zeros).
        training: unused (no dropout inside the cell); accepted as Keras passes it.

    Returns:
        (h_t, [h_t]): the output and the new state, each (batch, units).

    Example:

        layer = keras.layers.RNN(GRUCell(64), return_sequences=True)
        outputs = layer(tf.random.normal((8, 20, 16)))   # (8, 20, 64)
        keras_gru = keras.layers.GRU(64, return_sequences=True)
        keras_gru.build((None, None, 16))
        keras_gru.set_weights(layer.get_weights())       # the same numbers as `layer`
    """

    kind = GRU  # the cell interface: state names, gates, the step

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        if int(units) <= 0:
            raise ValueError(f"units must be a positive integer, got {units}")
        self.units = int(units)
        self.state_size = [self.units]
        self.output_size = self.units

    def build(self, input_shape):
        input_dim = input_shape[-1]
        width = self.kind.gate_blocks * self.units
        self.kernel = self.add_weight(shape=(input_dim, width), initializer="glorot_uniform", name="kernel")
        self.recurrent_kernel = self.add_weight(
            shape=(self.units, width), initializer="orthogonal", name="recurrent_kernel"
        )
        self.bias = self.add_weight(shape=(2, width), initializer="zeros", name="bias")

    def call(self, inputs, states, training=False):
        """inputs: (batch, input_dim); states: [h]. Returns (h_t, [h_t])."""
        inputs_proj = tf.matmul(inputs, self.kernel) + self.kind.input_bias(self.bias)  # (batch, 3*units)
        recurrent_proj = tf.matmul(states[0], self.recurrent_kernel) + self.kind.recurrent_bias(self.bias)
        (h,) = self.kind.step(inputs_proj, states, recurrent_proj)
        return h, [h]

    def get_initial_state(self, batch_size=None):
        """Zero state [h], (batch_size, units)."""
        return list(self.kind.zero_state(batch_size, self.units, self.compute_dtype))

    def get_config(self):
        return {**super().get_config(), "units": self.units}
