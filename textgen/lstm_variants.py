"""Two variants of the LSTM (Greff et al. 2015, "LSTM: A Search Space Odyssey"): peephole and CIFG.

`peephole` (Gers & Schmidhuber 2000; Greff's "vanilla" LSTM) lets the gates read the cell state:

    i_t = sigmoid(x_t.W_i + h_{t-1}.U_i + b_i + w_ci * C_{t-1})
    f_t = sigmoid(x_t.W_f + h_{t-1}.U_f + b_f + w_cf * C_{t-1})
    C~_t = tanh(x_t.W_c + h_{t-1}.U_c + b_c)
    C_t = f_t * C_{t-1} + i_t * C~_t
    o_t = sigmoid(x_t.W_o + h_{t-1}.U_o + b_o + w_co * C_t)      (the new cell state)
    h_t = o_t * tanh(C_t)

w_ci, w_cf, w_co are per-unit vectors (`peephole`, (3, units), rows i, f, o) beside the LSTM's
kernel, recurrent_kernel and bias, which keep the LSTM's layout (i, f, c, o): an `lstm` layer's
weights load into it, and with the peepholes at zero (how they start) it *is* that LSTM.

`cifg` (coupled input and forget gate) drops the input gate: i_t = 1 - f_t.

    f_t = sigmoid(x_t.W_f + h_{t-1}.U_f + b_f)
    C~_t = tanh(x_t.W_c + h_{t-1}.U_c + b_c)
    C_t = f_t * C_{t-1} + (1 - f_t) * C~_t
    o_t = sigmoid(x_t.W_o + h_{t-1}.U_o + b_o)
    h_t = o_t * tanh(C_t)

Three gate blocks in order f, c, o (Keras's i, f, c, o without i), so its kernels are 3*units
wide: a quarter fewer gate weights and matmul work than the LSTM's. The forget bias starts at 1.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from textgen.cell_base import CellKind, GatedCell

LSTM_QUANTITIES = ("i", "f", "g", "o", "c", "h")  # "g": the candidate C~ ("c" is the cell state)
LSTM_QUANTITY_NAMES = {"i": "input gate", "f": "forget gate", "g": "candidate", "o": "output gate",
                       "c": "cell", "h": "hidden"}


def peephole_step(z, c_prev, peephole):
    """The peephole equations from z = x.W + h.U + b (batch, 4*units) and C_{t-1}; `peephole`
    (3, units) rows w_ci, w_cf, w_co, or those three rows apart (a loop takes them apart once,
    not at every step). Returns (h_t, C_t, i, f, C~, o)."""
    w_ci, w_cf, w_co = peephole if isinstance(peephole, (tuple, list)) else tf.unstack(peephole)
    z_i, z_f, z_c, z_o = tf.split(z, 4, axis=-1)
    i = tf.sigmoid(z_i + w_ci * c_prev)
    f = tf.sigmoid(z_f + w_cf * c_prev)
    g = tf.tanh(z_c)
    c = f * c_prev + i * g
    o = tf.sigmoid(z_o + w_co * c)  # reads the new cell state
    return o * tf.tanh(c), c, i, f, g, o


def cifg_step(z, c_prev):
    """The CIFG equations from z = x.W + h.U + b (batch, 3*units: f, c, o) and C_{t-1}.
    Returns (h_t, C_t, f, C~, o); the input gate is 1 - f."""
    z_f, z_c, z_o = tf.split(z, 3, axis=-1)
    f, g, o = tf.sigmoid(z_f), tf.tanh(z_c), tf.sigmoid(z_o)
    c = g + f * (c_prev - g)  # = f * C_{t-1} + (1 - f) * C~
    return o * tf.tanh(c), c, f, g, o


class PeepholeKind(CellKind):
    """The peephole LSTM of this module's docstring: state (h, C), gates i, f, C~, o, and the
    extra weight `peephole` (3, units) its step reads."""

    name = "peephole"
    state_names = ("h", "c")
    gate_names = ("i", "f", "c", "o")
    output_state = "h"
    quantities = LSTM_QUANTITIES
    quantity_names = LSTM_QUANTITY_NAMES
    sigmoid_gates = ("i", "f", "o")
    extra_weights = ("peephole",)
    extra_rows = {"peephole": ("w_ci", "w_cf", "w_co")}

    def step(self, inputs_proj, states, recurrent_proj=None, with_gates: bool = False, extras=None):
        """h_t, C_t from z = x.W + h.U + b and `extras["peephole"]`; see `CellKind.step`."""
        peephole = self.needs(extras)["peephole"]
        z = inputs_proj if recurrent_proj is None else inputs_proj + recurrent_proj  # (batch, 4*units)
        h, c, i, f, g, o = peephole_step(z, states[1], peephole)
        return ((h, c), {"i": i, "f": f, "g": g, "o": o}) if with_gates else (h, c)


class CIFGKind(CellKind):
    """The coupled-input-forget-gate LSTM of this module's docstring: state (h, C), gate blocks
    f, C~, o; the input gate 1 - f is recorded as a quantity too."""

    name = "cifg"
    state_names = ("h", "c")
    gate_names = ("f", "c", "o")
    output_state = "h"
    quantities = LSTM_QUANTITIES
    quantity_names = {**LSTM_QUANTITY_NAMES, "i": "input gate (1 - f)"}
    sigmoid_gates = ("f", "o")  # i = 1 - f saturates exactly when f does

    def step(self, inputs_proj, states, recurrent_proj=None, with_gates: bool = False, extras=None):
        """h_t, C_t from z = x.W + h.U + b, (batch, 3*units); see `CellKind.step`."""
        z = inputs_proj if recurrent_proj is None else inputs_proj + recurrent_proj
        h, c, f, g, o = cifg_step(z, states[1])
        return ((h, c), {"i": 1.0 - f, "f": f, "g": g, "o": o}) if with_gates else (h, c)


PEEPHOLE = PeepholeKind()
CIFG = CIFGKind()


@keras.saving.register_keras_serializable(package="textgen")
class PeepholeLSTMCell(GatedCell):
    """One peephole-LSTM step (this module's docstring), usable anywhere a Keras RNN cell is.

    Weights: `kernel` (input_dim, 4*units), `recurrent_kernel` (units, 4*units), `bias`
    (4*units,), gates i, f, c, o as in `textgen.cell.LSTMCell` (whose weights load as they are),
    and `peephole` (3, units), rows w_ci, w_cf, w_co, starting at zero. Weight decay leaves the
    peepholes alone (`textgen.steps.make_optimizer`): like a bias, each scales one unit's own
    signal, and shrinking them towards zero would only pull the cell back to the plain LSTM.

    Args:
        units: positive integer, the width of h and C.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: (batch, input_dim) float tensor, x_t.
        states: [h_{t-1}, C_{t-1}], each (batch, units).
        training: unused; accepted as Keras passes it.

    Returns:
        (h_t, [h_t, C_t]), each (batch, units).

    Example:

        layer = keras.layers.RNN(PeepholeLSTMCell(64), return_sequences=True)
        outputs = layer(tf.random.normal((8, 20, 16)))   # (8, 20, 64)
    """

    kind = PEEPHOLE

    def build_extras(self):
        """`peephole` (3, units): w_ci, w_cf, w_co, zero at first (the cell starts as the LSTM)."""
        self.peephole = self.add_weight(shape=(3, self.units), initializer="zeros", name="peephole")


@keras.saving.register_keras_serializable(package="textgen")
class CIFGCell(GatedCell):
    """One CIFG step (this module's docstring: i_t = 1 - f_t), usable anywhere a Keras RNN cell is.

    Weights: `kernel` (input_dim, 3*units), `recurrent_kernel` (units, 3*units), `bias`
    (3*units,), gates side by side in order f, c, o; the forget-gate bias starts at 1.

    Args:
        units: positive integer, the width of h and C.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: (batch, input_dim) float tensor, x_t.
        states: [h_{t-1}, C_{t-1}], each (batch, units).
        training: unused; accepted as Keras passes it.

    Returns:
        (h_t, [h_t, C_t]), each (batch, units).

    Example:

        layer = keras.layers.RNN(CIFGCell(64), return_sequences=True)
        outputs = layer(tf.random.normal((8, 20, 16)))   # (8, 20, 64)
    """

    kind = CIFG


PeepholeKind.layer_class = PeepholeLSTMCell
CIFGKind.layer_class = CIFGCell
