"""The GRU cell kind and its Keras layer, written out by hand: Keras's `reset_after=True` GRU.

For input x_t and previous state h_{t-1}:

    z_t = sigmoid(x_t.W_z + b_xz + h_{t-1}.U_z + b_hz)          update gate
    r_t = sigmoid(x_t.W_r + b_xr + h_{t-1}.U_r + b_hr)          reset gate
    h~_t = tanh(x_t.W_h + b_xh + r_t * (h_{t-1}.U_h + b_hh))    candidate
    h_t = z_t * h_{t-1} + (1 - z_t) * h~_t                      hidden state

The weights are Keras's layout and gate order (z, r, h~), so they copy one-to-one to and from
`keras.layers.GRU(reset_after=True)` (and its cuDNN kernel on GPU). Its state is h alone. The
reset gate multiplies h.U_h + b_hh, so the recurrent projection cannot be summed into the input
one as the LSTM's is: the bias has two rows, b_x (row 0, added to x.W: `input_bias`) and b_h
(row 1, the one extra weight the step reads: `extras`'s "recurrent_bias").
`textgen.recurrent_gru` holds the fused training loop; tests/test_gru.py pins both to
`keras.layers.GRU` and to float64 numpy.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from textgen.cell_base import CellKind, GatedCell


class GRUKind(CellKind):
    """The GRU of this module's docstring: state h alone, gate blocks z, r, h~ (Keras's order).

    `step` takes p = x.W + b_x and q = h.U apart, and b_h from `extras["recurrent_bias"]` (row 1
    of `GRUCell`'s (2, 3*units) bias); with `recurrent_proj` None, `inputs_proj` is
    [x.W + b_x, h.U + b_h] side by side, (batch, 6*units), as `stacked_weights` computes it.

    Example:

        gru = cell_kind("gru")
        (h,) = gru.step(tf.random.normal((2, 24)), gru.zero_state(2, 8), tf.random.normal((2, 24)),
                        extras={"recurrent_bias": tf.zeros(24)})
    """

    name = "gru"
    state_names = ("h",)
    gate_names = ("z", "r", "h")
    output_state = "h"
    quantities = ("z", "r", "g", "h")  # "g": the candidate h~ ("h" is the state)
    quantity_names = {"z": "update gate", "r": "reset gate", "g": "candidate", "h": "hidden"}
    sigmoid_gates = ("z", "r")
    extra_weights = ("recurrent_bias",)  # b_h, (3*units,): `GRUCell.recurrent_bias`
    extra_rows = {"recurrent_bias": ("b_hz", "b_hr", "b_hh")}
    cudnn = True

    def bias_initializer(self) -> keras.initializers.Initializer:
        """Zeros, as Keras's GRU (no forget gate to open)."""
        return keras.initializers.Zeros()

    def input_bias(self, layer) -> tf.Tensor:
        """b_x, (3*units,): the bias row added to x.W (row 0 of the (2, 3*units) bias)."""
        return layer.bias[0]

    def stacked_weights(self, layer, dtype) -> tuple:
        """One matmul for a step's both projections: [x, h] . K + b = [x.W + b_x, h.U + b_h].

        K is block-diagonal, (input_dim + units, 6*units); b is (6*units,). What `step` takes as
        `inputs_proj` when `recurrent_proj` is None (the LSTM's stacked [W; U] would sum them).
        """
        kernel, recurrent_kernel = layer.kernel, layer.recurrent_kernel
        top = tf.concat([kernel, tf.zeros_like(kernel)], axis=-1)  # (input_dim, 6*units)
        bottom = tf.concat([tf.zeros_like(recurrent_kernel), recurrent_kernel], axis=-1)  # (units, 6*units)
        return tf.cast(tf.concat([top, bottom], axis=0), dtype), tf.cast(tf.reshape(layer.bias, [-1]), dtype)

    def step(self, inputs_proj, states, recurrent_proj=None, with_gates: bool = False, extras=None):
        """h_t from p = x.W + b_x and q = h_{t-1}.U, each (batch, 3*units), and b_h
        (`extras["recurrent_bias"]`); with `recurrent_proj` None, `inputs_proj` is
        [p, q + b_h] side by side, (batch, 6*units) (`stacked_weights`). See `CellKind.step`."""
        if recurrent_proj is None:
            inputs_proj, recurrent_proj = tf.split(inputs_proj, 2, axis=-1)
        else:
            recurrent_proj = recurrent_proj + self.needs(extras)["recurrent_bias"]
        h_prev = states[0]
        p_z, p_r, p_h = tf.split(inputs_proj, 3, axis=-1)
        q_z, q_r, q_h = tf.split(recurrent_proj, 3, axis=-1)
        update, reset = tf.sigmoid(p_z + q_z), tf.sigmoid(p_r + q_r)
        candidate = tf.tanh(p_h + reset * q_h)
        h = update * h_prev + (1.0 - update) * candidate
        if with_gates:
            return (h,), {"z": update, "r": reset, "g": candidate}
        return (h,)


GRU = GRUKind()


@keras.saving.register_keras_serializable(package="textgen")
class GRUCell(GatedCell):
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

    kind = GRU

    def bias_shape(self, width: int) -> tuple:
        """(2, 3*units): b_x and b_h, Keras's GRU layout."""
        return (2, width)

    @property
    def recurrent_bias(self) -> tf.Tensor:
        """b_h, (3*units,): the bias row added to h.U, inside the reset gate's product for h~."""
        return self.bias[1]

    def call(self, inputs, states, training=False):
        """inputs: (batch, input_dim); states: [h]. Returns (h_t, [h_t])."""
        inputs_proj = tf.matmul(inputs, self.kernel) + self.kind.input_bias(self)  # (batch, 3*units)
        recurrent_proj = tf.matmul(states[0], self.recurrent_kernel)  # (batch, 3*units)
        (h,) = self.kind.step(inputs_proj, states, recurrent_proj, extras=self.kind.extras(self))
        return h, [h]


GRUKind.layer_class = GRUCell
