"""The GRU's sequence paths for `textgen.recurrent.LSTMLayer(cell="gru")`: its fused loop (in
`textgen.recurrent.FUSED`'s form) and its cuDNN binding.

- "fused" (default on CPU): the input projection x.W + b_x of every time step is one matmul
  before the loop; the loop does h.U + b_h and the gate arithmetic; the backward pass is written
  out by hand (`_gru_with_gradient`). With `textgen.gru.GRU.step` this loop is the one other
  place the GRU equations are written; tests/test_gru.py pins the two together (values and
  gradients, with and without a recurrent dropout mask).
- "cudnn" (default when a GPU is visible): NVIDIA's GRU kernel through Keras's own cuDNN
  binding, fed our kernel, recurrent_kernel and (2, 3*units) bias as they are.
- "rnn": the reference, `keras.layers.RNN(GRUCell)`, kept for tests and comparison.
"""

from __future__ import annotations

import importlib

import keras
import tensorflow as tf

from textgen.fused import swap_time_batch


def cudnn_gru_sequence(inputs, h0, kernel, recurrent_kernel, bias):
    """The cuDNN GRU over (batch, time, features) with our weights; None without a GPU."""
    try:
        # a module import: the package also exports a *function* named rnn
        keras_tf_rnn = importlib.import_module("keras.src.backend.tensorflow.rnn")
        _, outputs, (h,) = keras_tf_rnn.gru(
            inputs, h0, None, kernel, recurrent_kernel, bias,
            activation=keras.activations.tanh, recurrent_activation=keras.activations.sigmoid,
            return_sequences=True, reset_after=True,
        )
    except (ImportError, NotImplementedError):
        return None
    return outputs, h


def gru_time_major(proj_tm, states, recurrent_kernel, extras, mask):
    """The GRU's fused loop in `textgen.recurrent.FUSED`'s form: proj_tm (time, batch, 3*units) =
    x.W + b_x, states (h_0,), extras {"recurrent_bias": b_h}. Returns (outputs (time, batch,
    units), (h_T,))."""
    outputs, h = fused_gru_sequence(proj_tm, states[0], recurrent_kernel, extras["recurrent_bias"],
                                    time_major=True, recurrent_mask=mask)
    return outputs, (h,)


def fused_gru_sequence(inputs_proj, h0, recurrent_kernel, recurrent_bias, time_major: bool = False,
                       recurrent_mask=None):
    """Run the GRU recurrence given precomputed input projections, with a hand-written backward.

    inputs_proj: (batch, time, 3*units) = x.W + b_x for every step, or (time, batch, 3*units) with
    `time_major`; h0: (batch, units); recurrent_kernel: (units, 3*units) and recurrent_bias
    (3*units,) as tensors. recurrent_mask: None, or (batch, units) multiplying h_{t-1} where it
    enters the recurrent kernel, the same at every step (variational dropout; the carried
    z * h_{t-1} term and the outputs stay unmasked, as in `keras.layers.GRU`).
    Returns (outputs (batch, time, units), or (time, batch, units) with `time_major`, h_T).
    """
    proj_tm = inputs_proj if time_major else swap_time_batch(inputs_proj)
    if recurrent_mask is None:
        outputs_tm, h = _gru_time_major(proj_tm, h0, recurrent_kernel, recurrent_bias)
    else:
        outputs_tm, h = _gru_time_major_masked(proj_tm, h0, recurrent_kernel, recurrent_bias,
                                               tf.cast(recurrent_mask, proj_tm.dtype))
    return (outputs_tm if time_major else swap_time_batch(outputs_tm)), h


def _forward_loop(proj_tm, h0, recurrent_kernel, recurrent_bias, mask=None):
    """The forward recurrence. Returns the stacked (time, batch, ...) h, [z, r] (2*units wide),
    h~ and q_h = h_{t-1}.U_h + b_hh (what the backward pass needs), then the final h.

    The GRU equations written again (as `textgen.gru.GRU.step`), because the backward pass
    needs exactly these stored values; z and r share one sigmoid over 2*units.
    """
    steps = tf.shape(proj_tm)[0]
    units = tf.shape(h0)[-1]
    stored = [tf.TensorArray(proj_tm.dtype, size=steps) for _ in range(4)]  # h, zr, h~, q_h
    # b_hz and b_hr are plain summands: added to every step's projection at once, before the loop,
    # which adds only b_hh (inside the reset gate's product) step by step
    bias_zr, bias_h = tf.split(recurrent_bias, [2 * units, units])
    proj_tm = proj_tm + tf.concat([bias_zr, tf.zeros_like(bias_h)], axis=0)  # (time, batch, 3*units)

    def body(t, h, *stored):
        q = tf.matmul(h if mask is None else h * mask, recurrent_kernel)  # (batch, 3*units)
        p_zr, p_h = tf.split(proj_tm[t], [2 * units, units], axis=-1)
        q_zr, q_h = tf.split(q, [2 * units, units], axis=-1)
        q_h = tf.nn.bias_add(q_h, bias_h)  # h_{t-1}.U_h + b_hh
        zr = tf.sigmoid(p_zr + q_zr)  # (batch, 2*units)
        z, r = tf.split(zr, 2, axis=-1)
        g = tf.tanh(p_h + r * q_h)
        h = g + z * (h - g)  # z * h_{t-1} + (1 - z) * h~
        return (t + 1, h) + tuple(ta.write(t, v) for ta, v in zip(stored, (h, zr, g, q_h)))

    _, h, *stored = tf.while_loop(lambda t, *_: t < steps, body, (tf.constant(0), h0, *stored))
    return [ta.stack() for ta in stored] + [h]


@tf.function(jit_compile=True)
def _backward_coefficients(hs, h0, zr, g, q_h):
    """The step-independent factors of backpropagation through time, for all steps at once.

    With a = the pre-activations and dh_t the gradient reaching h_t:
        da_z = dh_t * (h_{t-1} - h~) z (1 - z),   da_h = dh_t * (1 - z)(1 - h~^2),
        da_r = da_h * q_h r (1 - r),              dq_h = da_h * r,
    so dq_t = [da_z, da_r, dq_h] = [dh_t]*3 * coefficients_q, and dp_t's h~ block is dh_t * A_h.
    Returns (coefficients_q (time, batch, 3*units), A_h and z (time, batch, units)); XLA fuses
    these elementwise passes.
    """
    z, r = tf.split(zr, 2, axis=-1)
    h_prev = tf.concat([h0[None], hs[:-1]], axis=0)  # h_{t-1}
    a_h = (1.0 - z) * (1.0 - g * g)
    coefficients_q = tf.concat([(h_prev - g) * z * (1.0 - z), a_h * q_h * r * (1.0 - r), a_h * r], axis=-1)
    return coefficients_q, a_h, z


@tf.function(jit_compile=True)
def _projection_gradients(d_hs, coefficients_q, a_h):
    """(dq (time, batch, 3*units), dp (time, batch, 3*units)) from the dh_t of every step: the
    gradients of h.U + b_h and of x.W + b_x, which differ only in the h~ block (r's factor)."""
    d_q = tf.concat([d_hs, d_hs, d_hs], axis=-1) * coefficients_q
    units = tf.shape(d_hs)[-1]
    return d_q, tf.concat([d_q[..., :2 * units], d_hs * a_h], axis=-1)


@tf.custom_gradient
def _gru_time_major(proj_tm, h0, recurrent_kernel, recurrent_bias):
    """Forward: the GRU equations over time. Backward: `_gru_with_gradient`."""
    return _gru_with_gradient(proj_tm, h0, recurrent_kernel, recurrent_bias, None)


@tf.custom_gradient
def _gru_time_major_masked(proj_tm, h0, recurrent_kernel, recurrent_bias, mask):
    """`_gru_time_major` with h_{t-1} x `mask` (batch, units) entering the recurrent kernel."""
    return _gru_with_gradient(proj_tm, h0, recurrent_kernel, recurrent_bias, mask)


def _gru_with_gradient(proj_tm, h0, recurrent_kernel, recurrent_bias, mask):
    """The forward recurrence and its gradient function, for `tf.custom_gradient`.

    Hand-written for the LSTM's reason (`textgen.recurrent`): the loop carries only dh back, one
    (batch, 3*units) @ (3*units, units) matmul a step; the weight gradients are single matmuls
    after it. With q_t = (h_{t-1} * m).U + b_h: dh_{t-1} = dh_t * z + (dq_t.U^T) * m, dU =
    sum_t (h_{t-1} * m)^T dq_t, db_h = sum_t dq_t; the candidate's pre-activation gradient goes
    whole to x.W + b_x and times r to h.U + b_h. The mask gets no gradient.
    """
    hs, zr, g, q_h, h_last = _forward_loop(proj_tm, h0, recurrent_kernel, recurrent_bias, mask)

    def masked(h):  # h_{t-1} as the recurrent kernel saw it; h: (..., batch, units)
        return h if mask is None else h * mask

    def grad(d_outputs, d_h_last):
        steps = tf.shape(proj_tm)[0]
        d_h = tf.zeros_like(h0) if d_h_last is None else d_h_last
        d_outputs = tf.zeros_like(hs) if d_outputs is None else d_outputs
        coefficients_q, a_h, z = _backward_coefficients(hs, h0, zr, g, q_h)
        kernel_t = tf.transpose(recurrent_kernel)  # (3*units, units)
        d_hs = tf.TensorArray(proj_tm.dtype, size=steps)

        def body(t, d_h, d_hs):
            d_h = d_h + d_outputs[t]
            d_q = tf.concat([d_h, d_h, d_h], axis=-1) * coefficients_q[t]  # (batch, 3*units)
            return t - 1, d_h * z[t] + masked(tf.matmul(d_q, kernel_t)), d_hs.write(t, d_h)

        _, d_h0, d_hs = tf.while_loop(lambda t, *_: t >= 0, body, (steps - 1, d_h, d_hs))
        d_q, d_p = _projection_gradients(d_hs.stack(), coefficients_q, a_h)  # (time, batch, 3*units)
        units = tf.shape(h0)[-1]
        # dU: h_0's term plus one matmul over the stored h_1..h_{T-1} (as the LSTM's)
        d_kernel = tf.matmul(masked(h0), d_q[0], transpose_a=True) + tf.matmul(
            tf.reshape(masked(hs[:-1]), (-1, units)), tf.reshape(d_q[1:], (-1, 3 * units)),
            transpose_a=True)  # (units, 3*units)
        grads = (d_p, d_h0, d_kernel, tf.reduce_sum(d_q, axis=[0, 1]))
        return grads if mask is None else grads + (tf.zeros_like(mask),)

    return (hs, h_last), grad
