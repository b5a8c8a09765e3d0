"""The fused training loops of the peephole and CIFG cells (`textgen.lstm_variants`), each with
its backward pass written out, on the loop the LSTM's shares (`textgen.fused`).

Both are in `textgen.recurrent.FUSED`'s form: f(proj_tm (time, batch, blocks*units) = x.W + b,
(h_0, C_0), recurrent_kernel, extras, mask) -> (outputs (time, batch, units), (h_T, C_T)). The
equations are written again here (as `textgen.lstm_variants`'s steps, which the forward loops
call) only in the coefficients of the backward pass; tests/test_lstm_variants.py pins values and
gradients to autodiff of the reference cells under `keras.layers.RNN`, with and without a
recurrent dropout mask.

Peephole backward, per step (w_ci, w_cf, w_co the peepholes; s_g the gate's sigmoid slope):

    dz_o = dh_t * tanh(C_t) * s_o
    dC_t = dC_t(from t+1) + dh_t * (o_t * (1 - tanh^2 C_t) + tanh(C_t) * s_o * w_co)
    dz_i = dC_t * C~_t * s_i,  dz_f = dC_t * C_{t-1} * s_f,  dz_c = dC_t * i_t * (1 - C~_t^2)
    dC_{t-1} = dC_t * (f_t + C~_t * s_i * w_ci + C_{t-1} * s_f * w_cf)
    dw_ci = sum dz_i * C_{t-1},  dw_cf = sum dz_f * C_{t-1},  dw_co = sum dz_o * C_t

CIFG backward (C_t = C~_t + f_t * (C_{t-1} - C~_t)):

    dz_f = dC_t * (C_{t-1} - C~_t) * s_f,  dz_c = dC_t * (1 - f_t) * (1 - C~_t^2)
    dz_o = dh_t * tanh(C_t) * s_o,  dC_{t-1} = dC_t * f_t
"""

from __future__ import annotations

import tensorflow as tf

from textgen.fused import backward_loop, forward_loop, previous_cells
from textgen.lstm_variants import cifg_step, peephole_step


def peephole_time_major(proj_tm, states, recurrent_kernel, extras, mask):
    """The peephole cell's fused loop: (outputs (time, batch, units), (h_T, C_T))."""
    h0, c0 = states
    peephole = extras["peephole"]  # (3, units)
    if mask is None:
        outputs, h, c = _peephole(proj_tm, h0, c0, recurrent_kernel, peephole)
    else:
        outputs, h, c = _peephole_masked(proj_tm, h0, c0, recurrent_kernel, peephole, mask)
    return outputs, (h, c)


def cifg_time_major(proj_tm, states, recurrent_kernel, extras, mask):
    """The CIFG cell's fused loop: (outputs (time, batch, units), (h_T, C_T))."""
    h0, c0 = states
    if mask is None:
        outputs, h, c = _cifg(proj_tm, h0, c0, recurrent_kernel)
    else:
        outputs, h, c = _cifg_masked(proj_tm, h0, c0, recurrent_kernel, mask)
    return outputs, (h, c)


@tf.function(jit_compile=True)
def _peephole_coefficients(cs, c0, i, f, g, o, peephole):
    """(dc_per_dh, dz_scale (time, batch, 4*units), carry) of the module docstring, all steps
    at once (XLA fuses the elementwise passes)."""
    tanh_c = tf.tanh(cs)
    c_prev = previous_cells(cs, c0)
    slope_i = g * i * (1.0 - i)  # dz_i per dC_t
    slope_f = c_prev * f * (1.0 - f)  # dz_f per dC_t
    slope_o = tanh_c * o * (1.0 - o)  # dz_o per dh_t
    dc_per_dh = o * (1.0 - tanh_c * tanh_c) + slope_o * peephole[2]
    dz_scale = tf.concat([slope_i, slope_f, i * (1.0 - g * g), slope_o], axis=-1)
    carry = f + slope_i * peephole[0] + slope_f * peephole[1]
    return dc_per_dh, dz_scale, carry


@tf.function(jit_compile=True)
def _peephole_weight_gradient(dz_all, cs, c0):
    """(3, units): d w_ci, d w_cf, d w_co from the pre-activations' gradient (time, batch, 4*units)."""
    dz_i, dz_f, _, dz_o = tf.split(dz_all, 4, axis=-1)
    c_prev = previous_cells(cs, c0)
    return tf.stack([tf.reduce_sum(dz_i * c_prev, axis=(0, 1)), tf.reduce_sum(dz_f * c_prev, axis=(0, 1)),
                     tf.reduce_sum(dz_o * cs, axis=(0, 1))])


@tf.custom_gradient
def _peephole(proj_tm, h0, c0, recurrent_kernel, peephole):
    """Forward: the peephole equations over time; backward: the module docstring's."""
    return _peephole_with_gradient(proj_tm, h0, c0, recurrent_kernel, peephole, None)


@tf.custom_gradient
def _peephole_masked(proj_tm, h0, c0, recurrent_kernel, peephole, mask):
    """`_peephole` with h_{t-1} x `mask` (batch, units) entering the recurrent kernel."""
    return _peephole_with_gradient(proj_tm, h0, c0, recurrent_kernel, peephole, mask)


def _peephole_with_gradient(proj_tm, h0, c0, recurrent_kernel, peephole, mask):
    """The forward recurrence and its gradient function, for `tf.custom_gradient`."""
    rows = tuple(tf.unstack(peephole))  # w_ci, w_cf, w_co: taken apart once, outside the loop
    hs, cs, i, f, g, o, h_last, c_last = forward_loop(
        proj_tm, h0, c0, recurrent_kernel, mask, lambda z, c: peephole_step(z, c, rows), 6)

    def grad(d_outputs, d_h_last, d_c_last):
        coefficients = _peephole_coefficients(cs, c0, i, f, g, o, peephole)
        dz_all, d_h0, d_c0, d_kernel = backward_loop((d_outputs, d_h_last, d_c_last), hs, h0, c0,
                                                     recurrent_kernel, mask, coefficients, "ccch")
        grads = (dz_all, d_h0, d_c0, d_kernel, _peephole_weight_gradient(dz_all, cs, c0))
        return grads if mask is None else grads + (tf.zeros_like(mask),)

    return (hs, h_last, c_last), grad


@tf.function(jit_compile=True)
def _cifg_coefficients(cs, c0, f, g, o):
    """(dc_per_dh, dz_scale (time, batch, 3*units)) of the module docstring, all steps at once."""
    tanh_c = tf.tanh(cs)
    dc_per_dh = o * (1.0 - tanh_c * tanh_c)
    dz_scale = tf.concat([(previous_cells(cs, c0) - g) * f * (1.0 - f), (1.0 - f) * (1.0 - g * g),
                          tanh_c * o * (1.0 - o)], axis=-1)
    return dc_per_dh, dz_scale


@tf.custom_gradient
def _cifg(proj_tm, h0, c0, recurrent_kernel):
    """Forward: the CIFG equations over time; backward: the module docstring's."""
    return _cifg_with_gradient(proj_tm, h0, c0, recurrent_kernel, None)


@tf.custom_gradient
def _cifg_masked(proj_tm, h0, c0, recurrent_kernel, mask):
    """`_cifg` with h_{t-1} x `mask` (batch, units) entering the recurrent kernel."""
    return _cifg_with_gradient(proj_tm, h0, c0, recurrent_kernel, mask)


def _cifg_with_gradient(proj_tm, h0, c0, recurrent_kernel, mask):
    """The forward recurrence and its gradient function, for `tf.custom_gradient`."""
    hs, cs, f, g, o, h_last, c_last = forward_loop(proj_tm, h0, c0, recurrent_kernel, mask, cifg_step, 5)

    def grad(d_outputs, d_h_last, d_c_last):
        dc_per_dh, dz_scale = _cifg_coefficients(cs, c0, f, g, o)
        grads = backward_loop((d_outputs, d_h_last, d_c_last), hs, h0, c0, recurrent_kernel, mask,
                              (dc_per_dh, dz_scale, f), "cch")
        return grads if mask is None else grads + (tf.zeros_like(mask),)

    return (hs, h_last, c_last), grad
