"""Greff et al.'s two harmful LSTM ablations, as experiment-only cells: `nfg` and `noaf`.

"LSTM: A Search Space Odyssey" (Greff et al. 2015) found two changes that hurt on speech,
handwriting and music; these cells let bench/cells.py measure them on character-level text.
Both change textgen's `lstm` (Greff's no-peephole variant; `textgen.cell`), one equation each:

`nfg`, no forget gate (f_t = 1): the cell state only accumulates.

    i_t = sigmoid(x_t.W_i + h_{t-1}.U_i + b_i)
    C~_t = tanh(x_t.W_c + h_{t-1}.U_c + b_c)
    C_t = C_{t-1} + i_t * C~_t
    o_t = sigmoid(x_t.W_o + h_{t-1}.U_o + b_o)
    h_t = o_t * tanh(C_t)

Three gate blocks in order i, c, o (the LSTM's without f).

`noaf`, no output activation: h_t = o_t * C_t instead of o_t * tanh(C_t); the LSTM's four gate
blocks i, f, c, o otherwise unchanged.

Backward passes (on `textgen.fused`'s loop; s_g is the gate's sigmoid slope):

    nfg:  dz_i = dC_t * C~_t * s_i,  dz_c = dC_t * i_t * (1 - C~_t^2),  dz_o = dh_t * tanh(C_t) * s_o,
          dC_t gains dh_t * o_t * (1 - tanh^2 C_t),  dC_{t-1} = dC_t
    noaf: as the LSTM's, with dz_o = dh_t * C_t * s_o and dC_t gaining dh_t * o_t

Experiment-only: `textgen train --cell nfg|noaf` trains, samples and evaluates them (they are cell
kinds like any other), but only the four product cells are held to every downstream command by
tests/test_cells_downstream.py. tests/test_lstm_variants.py pins the fused loops to autodiff of
the steps here.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from textgen.cell_base import CellKind, GatedCell, gate_activations
from textgen.fused import backward_loop, forward_loop, previous_cells
from textgen.lstm_variants import LSTM_QUANTITIES, LSTM_QUANTITY_NAMES


def nfg_step(z, c_prev):
    """The no-forget-gate equations from z = x.W + h.U + b (batch, 3*units: i, c, o) and
    C_{t-1}. Returns (h_t, C_t, i, C~, o)."""
    z_i, z_c, z_o = tf.split(z, 3, axis=-1)
    i, g, o = tf.sigmoid(z_i), tf.tanh(z_c), tf.sigmoid(z_o)
    c = c_prev + i * g
    return o * tf.tanh(c), c, i, g, o


def noaf_step(z, c_prev):
    """The no-output-activation equations from z (batch, 4*units: i, f, c, o) and C_{t-1}.
    Returns (h_t, C_t, i, f, C~, o)."""
    i, f, g, o = gate_activations(z)
    c = f * c_prev + i * g
    return o * c, c, i, f, g, o


class NFGKind(CellKind):
    """The no-forget-gate LSTM of this module's docstring: state (h, C), gate blocks i, C~, o;
    its forget gate (always 1) is recorded as a quantity so that traces read like the LSTM's."""

    name = "nfg"
    state_names = ("h", "c")
    gate_names = ("i", "c", "o")
    output_state = "h"
    quantities = LSTM_QUANTITIES
    quantity_names = {**LSTM_QUANTITY_NAMES, "f": "forget gate (fixed at 1)"}
    sigmoid_gates = ("i", "o")

    def step(self, inputs_proj, states, recurrent_proj=None, with_gates: bool = False, extras=None):
        """h_t, C_t from z = x.W + h.U + b, (batch, 3*units); see `CellKind.step`."""
        z = inputs_proj if recurrent_proj is None else inputs_proj + recurrent_proj
        h, c, i, g, o = nfg_step(z, states[1])
        return ((h, c), {"i": i, "f": tf.ones_like(i), "g": g, "o": o}) if with_gates else (h, c)


class NOAFKind(CellKind):
    """The no-output-activation LSTM of this module's docstring: h_t = o_t * C_t."""

    name = "noaf"
    state_names = ("h", "c")
    gate_names = ("i", "f", "c", "o")
    output_state = "h"
    quantities = LSTM_QUANTITIES
    quantity_names = LSTM_QUANTITY_NAMES
    sigmoid_gates = ("i", "f", "o")

    def step(self, inputs_proj, states, recurrent_proj=None, with_gates: bool = False, extras=None):
        """h_t, C_t from z = x.W + h.U + b, (batch, 4*units); see `CellKind.step`."""
        z = inputs_proj if recurrent_proj is None else inputs_proj + recurrent_proj
        h, c, i, f, g, o = noaf_step(z, states[1])
        return ((h, c), {"i": i, "f": f, "g": g, "o": o}) if with_gates else (h, c)


NFG = NFGKind()
NOAF = NOAFKind()


@keras.saving.register_keras_serializable(package="textgen")
class NFGCell(GatedCell):
    """One no-forget-gate LSTM step (this module's docstring: f_t = 1), an experiment-only cell.

    Weights: `kernel` (input_dim, 3*units), `recurrent_kernel` (units, 3*units), `bias`
    (3*units,), gates side by side in order i, c, o, all starting as the LSTM's do.

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

        layer = keras.layers.RNN(NFGCell(64), return_sequences=True)
        outputs = layer(tf.random.normal((8, 20, 16)))   # (8, 20, 64)
    """

    kind = NFG


@keras.saving.register_keras_serializable(package="textgen")
class NOAFCell(GatedCell):
    """One no-output-activation LSTM step (h_t = o_t * C_t), an experiment-only cell.

    Weights as `textgen.cell.LSTMCell`'s (an lstm layer's weights load as they are).

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

        layer = keras.layers.RNN(NOAFCell(64), return_sequences=True)
        outputs = layer(tf.random.normal((8, 20, 16)))   # (8, 20, 64)
    """

    kind = NOAF


NFGKind.layer_class = NFGCell
NOAFKind.layer_class = NOAFCell


def nfg_time_major(proj_tm, states, recurrent_kernel, extras, mask):
    """The no-forget-gate cell's fused loop: (outputs (time, batch, units), (h_T, C_T))."""
    h0, c0 = states
    args = (proj_tm, h0, c0, recurrent_kernel)
    outputs, h, c = _nfg(*args) if mask is None else _nfg_masked(*args, mask)
    return outputs, (h, c)


def noaf_time_major(proj_tm, states, recurrent_kernel, extras, mask):
    """The no-output-activation cell's fused loop: (outputs (time, batch, units), (h_T, C_T))."""
    h0, c0 = states
    args = (proj_tm, h0, c0, recurrent_kernel)
    outputs, h, c = _noaf(*args) if mask is None else _noaf_masked(*args, mask)
    return outputs, (h, c)


@tf.function(jit_compile=True)
def _nfg_coefficients(cs, i, g, o):
    """(dc_per_dh, dz_scale (time, batch, 3*units), carry) of the module docstring."""
    tanh_c = tf.tanh(cs)
    dz_scale = tf.concat([g * i * (1.0 - i), i * (1.0 - g * g), tanh_c * o * (1.0 - o)], axis=-1)
    return o * (1.0 - tanh_c * tanh_c), dz_scale, tf.ones_like(cs)


@tf.function(jit_compile=True)
def _noaf_coefficients(cs, c0, i, f, g, o):
    """(dc_per_dh, dz_scale (time, batch, 4*units), carry) of the module docstring."""
    dz_scale = tf.concat([g * i * (1.0 - i), previous_cells(cs, c0) * f * (1.0 - f), i * (1.0 - g * g),
                          cs * o * (1.0 - o)], axis=-1)
    return o, dz_scale, f


@tf.custom_gradient
def _nfg(proj_tm, h0, c0, recurrent_kernel):
    """Forward: the no-forget-gate equations over time; backward: the module docstring's."""
    return _nfg_with_gradient(proj_tm, h0, c0, recurrent_kernel, None)


@tf.custom_gradient
def _nfg_masked(proj_tm, h0, c0, recurrent_kernel, mask):
    """`_nfg` with h_{t-1} x `mask` (batch, units) entering the recurrent kernel."""
    return _nfg_with_gradient(proj_tm, h0, c0, recurrent_kernel, mask)


def _nfg_with_gradient(proj_tm, h0, c0, recurrent_kernel, mask):
    """The forward recurrence and its gradient function, for `tf.custom_gradient`."""
    hs, cs, i, g, o, h_last, c_last = forward_loop(proj_tm, h0, c0, recurrent_kernel, mask, nfg_step, 5)

    def grad(d_outputs, d_h_last, d_c_last):
        grads = backward_loop((d_outputs, d_h_last, d_c_last), hs, h0, c0, recurrent_kernel, mask,
                              _nfg_coefficients(cs, i, g, o), "cch")
        return grads if mask is None else grads + (tf.zeros_like(mask),)

    return (hs, h_last, c_last), grad


@tf.custom_gradient
def _noaf(proj_tm, h0, c0, recurrent_kernel):
    """Forward: the no-output-activation equations over time; backward: the module docstring's."""
    return _noaf_with_gradient(proj_tm, h0, c0, recurrent_kernel, None)


@tf.custom_gradient
def _noaf_masked(proj_tm, h0, c0, recurrent_kernel, mask):
    """`_noaf` with h_{t-1} x `mask` (batch, units) entering the recurrent kernel."""
    return _noaf_with_gradient(proj_tm, h0, c0, recurrent_kernel, mask)


def _noaf_with_gradient(proj_tm, h0, c0, recurrent_kernel, mask):
    """The forward recurrence and its gradient function, for `tf.custom_gradient`."""
    hs, cs, i, f, g, o, h_last, c_last = forward_loop(proj_tm, h0, c0, recurrent_kernel, mask, noaf_step, 6)

    def grad(d_outputs, d_h_last, d_c_last):
        grads = backward_loop((d_outputs, d_h_last, d_c_last), hs, h0, c0, recurrent_kernel, mask,
                              _noaf_coefficients(cs, c0, i, f, g, o), "ccch")
        return grads if mask is None else grads + (tf.zeros_like(mask),)

    return (hs, h_last, c_last), grad
