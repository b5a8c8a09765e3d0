"""What the fused training loops of the (h, C) cells share: the forward recurrence that stores
what the backward pass needs, and backpropagation through time written out by hand.

Hand-written because autodiff of a while_loop accumulates h.U's weight gradient one small matmul
per step and is slow; here the backward loop only carries dh and dC back, and the weight gradient
is a single (units x time*batch) @ (time*batch x blocks*units) matmul after it. Each cell
(`textgen.recurrent` for the LSTM, `textgen.recurrent_variants` for peephole and CIFG) brings its
step and the step-independent coefficients of its backward pass, computed for all steps at once:

    dC_t = dC_t(from t+1) + dh_t * dc_per_dh_t           (everything h_t gives C_t)
    dz_t = [dC_t or dh_t per gate block] * dz_scale_t    (the pre-activations' gradient)
    dh_{t-1} = (dz_t . U^T) * mask,  dC_{t-1} = dC_t * carry_t
"""

from __future__ import annotations

import tensorflow as tf

# CPU matrix products slow down by ~1.7-2x when an operand's rows lie a multiple of 4 KiB apart
# (every row then maps to the same cache sets, "4K aliasing"): the LSTM's 4 x 256 float32 gate
# columns are exactly that. Padded with a few zero columns, the same product runs at full speed
# (bench/RESULTS.md, "4 KiB aliasing"); the padding is sliced off again, so the values are the same.
ALIAS_BYTES = 4096
PAD_COLUMNS = 16


def alias_padding(matrix: tf.Tensor) -> int:
    """Zero columns to add to `matrix` (..., n) so that its rows are not a multiple of 4 KiB apart."""
    columns = matrix.shape[-1]
    return PAD_COLUMNS if columns is not None and (columns * tf.as_dtype(matrix.dtype).size) % ALIAS_BYTES == 0 else 0


def pad_columns(matrix: tf.Tensor) -> tf.Tensor:
    """`matrix` (k, n) with `alias_padding` zero columns after its n (unchanged if none)."""
    pad = alias_padding(matrix)
    return matrix if not pad else tf.pad(matrix, [[0, 0], [0, pad]])


def matmul_unaliased(a: tf.Tensor, b: tf.Tensor, transpose_a: bool = False) -> tf.Tensor:
    """a @ b (a^T @ b with `transpose_a`), computed with b's columns padded where their row stride
    would alias (`alias_padding`); the same (…, n) result. Autodiff pads the gradients alike."""
    padded = pad_columns(b)
    product = tf.matmul(a, padded, transpose_a=transpose_a)
    return product if padded is b else product[:, :b.shape[-1]]


def swap_time_batch(x: tf.Tensor) -> tf.Tensor:
    """(batch, time, features) <-> (time, batch, features)."""
    return tf.transpose(x, [1, 0, 2])


def forward_loop(proj_tm, h0, c0, recurrent_kernel, mask, cell_fn, stored_count: int):
    """The forward recurrence of an (h, C) cell over time-major projections.

    proj_tm: (time, batch, blocks*units) = x.W + b; h0, c0: (batch, units); mask: None or
    (batch, units) multiplying h_{t-1} where it enters the recurrent kernel. `cell_fn(z, c_prev)`
    returns (h_t, C_t, then the gates the backward pass needs), `stored_count` values in all.
    Returns the stacked (time, batch, units) values cell_fn returns, then the final h and C. Each
    goes to a TensorArray of its own: storing them side by side would need a concat per step,
    and storing the pre-activations would make the backward pass recompute every sigmoid and
    tanh; both measured slower.
    """
    steps = tf.shape(proj_tm)[0]
    stored = [tf.TensorArray(proj_tm.dtype, size=steps) for _ in range(stored_count)]
    width = recurrent_kernel.shape[-1]
    kernel = pad_columns(recurrent_kernel)  # once, outside the loop (`alias_padding`)

    def body(t, h, c, *stored):
        h_u = tf.matmul(h if mask is None else h * mask, kernel)
        z = proj_tm[t] + (h_u if kernel is recurrent_kernel else h_u[:, :width])  # (batch, blocks*units)
        values = cell_fn(z, c)
        return (t + 1, values[0], values[1]) + tuple(ta.write(t, v) for ta, v in zip(stored, values))

    _, h, c, *stored = tf.while_loop(lambda t, *_: t < steps, body, (tf.constant(0), h0, c0, *stored))
    return [ta.stack() for ta in stored] + [h, c]


def backward_loop(upstream, hs, h0, c0, recurrent_kernel, mask, coefficients, blocks: str):
    """Backpropagation through time of an (h, C) cell (this module's docstring).

    upstream: (d_outputs (time, batch, units), d_h_T, d_C_T), any of them None; hs: the stored
    (time, batch, units) outputs; coefficients: (dc_per_dh, dz_scale, carry) for all steps;
    blocks: per gate block "c" (its pre-activation's gradient scales dC_t) or "h" (dh_t), e.g.
    "ccch" for the LSTM's i, f, c, o. With a recurrent mask m, dh_{t-1} gains (dz_t.U^T) * m and
    dU = sum_t (h_{t-1} * m)^T dz_t; the mask gets no gradient.
    Returns (dz (time, batch, blocks*units) = d proj, d_h0, d_C0, dU).
    """
    d_outputs, d_h, d_c = upstream
    steps = tf.shape(hs)[0]
    d_h = tf.zeros_like(h0) if d_h is None else d_h
    d_c = tf.zeros_like(c0) if d_c is None else d_c
    d_outputs = tf.zeros_like(hs) if d_outputs is None else d_outputs
    dc_per_dh, dz_scale, carry = coefficients
    kernel_t = tf.transpose(recurrent_kernel)  # (blocks*units, units)
    dzs = tf.TensorArray(hs.dtype, size=steps)

    def masked(h):  # h_{t-1} as the recurrent kernel saw it; h: (..., batch, units)
        return h if mask is None else h * mask

    def body(t, d_h, d_c, dzs):
        d_h = d_h + d_outputs[t]
        d_c = d_c + d_h * dc_per_dh[t]
        dz = tf.concat([d_c if b == "c" else d_h for b in blocks], axis=-1) * dz_scale[t]  # (batch, blocks*units)
        return t - 1, masked(tf.matmul(dz, kernel_t)), d_c * carry[t], dzs.write(t, dz)

    _, d_h0, d_c0, dzs = tf.while_loop(lambda t, *_: t >= 0, body, (steps - 1, d_h, d_c, dzs))
    dz_all = dzs.stack()  # (time, batch, blocks*units)
    units = tf.shape(h0)[-1]
    # dU = sum_t h_{t-1}^T dz_t: h_0's term plus one matmul over the stored h_1..h_{T-1}
    # (slices along time are free; concatenating h_0 in front would copy them all).
    width = recurrent_kernel.shape[-1]
    d_kernel = tf.matmul(masked(h0), dz_all[0], transpose_a=True) + matmul_unaliased(
        tf.reshape(masked(hs[:-1]), (-1, units)), tf.reshape(dz_all[1:], (-1, width)),
        transpose_a=True)  # (units, blocks*units)
    return dz_all, d_h0, d_c0, d_kernel


def previous_cells(cs, c0):
    """C_{t-1} for every step: (time, batch, units) from the stored C_t and C_0."""
    return tf.concat([c0[None], cs[:-1]], axis=0)
