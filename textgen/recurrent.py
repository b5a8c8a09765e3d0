"""An LSTM layer that runs `textgen.cell.LSTMCell` over a whole sequence, fast.

Three paths compute the same equations with the same weights (so checkpoints move freely):

- "fused" (default on CPU): the input projection x.W + b of every time step is one big matmul
  before the loop, so the loop itself does only h.U and the gate arithmetic; the backward pass is
  written out by hand (see `_lstm_time_major`). Hand-written because the generic
  `keras.layers.RNN` loop recomputes x.W step by step and autodiff of the loop is slow.
- "cudnn" (default when a GPU is visible): NVIDIA's fused LSTM kernel through Keras's own cuDNN
  binding, fed our kernel, recurrent_kernel and bias as they are (same layout, same gate order).
- "rnn": the reference, `keras.layers.RNN(cell)`, kept for tests and comparison.
"""

from __future__ import annotations

import importlib

import keras
import tensorflow as tf

from textgen.cell import LSTMCell, gate_activations

PATHS = ("auto", "fused", "cudnn", "rnn")


def gpu_available() -> bool:
    """Whether TensorFlow sees a GPU."""
    return bool(tf.config.list_logical_devices("GPU"))


def resolve_path(path: str, gpu: bool | None = None) -> str:
    """The concrete path that `path` selects: "auto" is cuDNN with a GPU, else fused.

    `gpu` overrides the detection (for tests on machines without one).
    """
    if path not in PATHS:
        raise ValueError(f"unknown LSTM path {path!r}; choose one of {', '.join(PATHS)}")
    if path != "auto":
        return path
    return "cudnn" if (gpu_available() if gpu is None else gpu) else "fused"


def cudnn_lstm_sequence(inputs, h0, c0, kernel, recurrent_kernel, bias):
    """The cuDNN kernel over (batch, time, features) with our weights; None without a GPU.

    Uses Keras's TensorFlow-backend binding (the same one `keras.layers.LSTM` uses), which takes
    the Keras weight layout that our cell shares.
    """
    try:
        # a module import: the package also exports a *function* named rnn
        keras_tf_rnn = importlib.import_module("keras.src.backend.tensorflow.rnn")
        _, outputs, (h, c) = keras_tf_rnn.lstm(
            inputs, h0, c0, None, kernel, recurrent_kernel, bias,
            activation=keras.activations.tanh, recurrent_activation=keras.activations.sigmoid,
            return_sequences=True,
        )
    except (ImportError, NotImplementedError):
        return None
    return outputs, h, c


def fused_lstm_sequence(
    inputs_proj: tf.Tensor, h0: tf.Tensor, c0: tf.Tensor, recurrent_kernel: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Run the recurrence given precomputed input projections, with a hand-written backward pass.

    inputs_proj: (batch, time, 4*units) = x.W + b for every step; h0, c0: (batch, units);
    recurrent_kernel: (units, 4*units) as a tensor. Returns (outputs (batch, time, units), h_T, c_T).
    """
    proj_tm = tf.transpose(inputs_proj, [1, 0, 2])  # (time, batch, 4*units)
    outputs_tm, h, c = _lstm_time_major(proj_tm, h0, c0, recurrent_kernel)
    return tf.transpose(outputs_tm, [1, 0, 2]), h, c


def _forward_loop(proj_tm, h0, c0, recurrent_kernel):
    """The forward recurrence; also returns the activated gates and cell states for backward."""
    steps = tf.shape(proj_tm)[0]
    dtype = proj_tm.dtype
    hs = tf.TensorArray(dtype, size=steps)
    cs = tf.TensorArray(dtype, size=steps)
    acts = tf.TensorArray(dtype, size=steps)

    def body(t, h, c, hs, cs, acts):
        z = proj_tm[t] + tf.matmul(h, recurrent_kernel)  # (batch, 4*units)
        i, f, g, o = gate_activations(z)  # kept for the backward pass
        c = f * c + i * g
        h = o * tf.tanh(c)
        return t + 1, h, c, hs.write(t, h), cs.write(t, c), acts.write(t, tf.concat([i, f, g, o], -1))

    _, h, c, hs, cs, acts = tf.while_loop(
        lambda t, *_: t < steps, body, (tf.constant(0), h0, c0, hs, cs, acts)
    )
    return hs.stack(), cs.stack(), acts.stack(), h, c  # (time, batch, ...)


@tf.custom_gradient
def _lstm_time_major(proj_tm, h0, c0, recurrent_kernel):
    """Forward: the LSTM equations over time. Backward: backpropagation through time written out.

    Hand-written because autodiff of a while_loop accumulates h.U's weight gradient one small
    matmul per step; here the loop only carries dh and dC back, and the weight gradient is a single
    (units x time*batch) @ (time*batch x 4*units) matmul after it.
    """
    hs, cs, acts, h_last, c_last = _forward_loop(proj_tm, h0, c0, recurrent_kernel)

    def grad(d_outputs, d_h_last, d_c_last):
        steps = tf.shape(proj_tm)[0]
        d_h = tf.zeros_like(h0) if d_h_last is None else d_h_last
        d_c = tf.zeros_like(c0) if d_c_last is None else d_c_last
        d_outputs = tf.zeros_like(hs) if d_outputs is None else d_outputs
        # Everything that does not depend on the recurrence is computed for all steps at once,
        # so the sequential loop is down to a few ops and one matmul per step.
        i, f, g, o = tf.split(acts, 4, axis=-1)  # (time, batch, units) each
        tanh_c = tf.tanh(cs)
        c_prev = tf.concat([c0[None], cs[:-1]], axis=0)  # C_{t-1}
        dc_per_dh = o * (1.0 - tanh_c * tanh_c)  # dC_t/dh_t through h_t = o_t * tanh(C_t)
        dz_scale = tf.concat([
            g * i * (1.0 - i),  # dz_i per dC_t
            c_prev * f * (1.0 - f),  # dz_f per dC_t
            i * (1.0 - g * g),  # dz_c per dC_t
            tanh_c * o * (1.0 - o),  # dz_o per dh_t
        ], axis=-1)  # (time, batch, 4*units)
        kernel_t = tf.transpose(recurrent_kernel)  # (4*units, units)
        dzs = tf.TensorArray(proj_tm.dtype, size=steps)

        def body(t, d_h, d_c, dzs):
            d_h = d_h + d_outputs[t]
            d_c = d_c + d_h * dc_per_dh[t]
            dz = tf.concat([d_c, d_c, d_c, d_h], axis=-1) * dz_scale[t]  # (batch, 4*units)
            return t - 1, tf.matmul(dz, kernel_t), d_c * f[t], dzs.write(t, dz)

        _, d_h0, d_c0, dzs = tf.while_loop(lambda t, *_: t >= 0, body, (steps - 1, d_h, d_c, dzs))
        dz_all = dzs.stack()  # (time, batch, 4*units)
        h_prev = tf.concat([h0[None], hs[:-1]], axis=0)  # h_{t-1}: (time, batch, units)
        units = tf.shape(h0)[-1]
        d_kernel = tf.matmul(tf.reshape(h_prev, (-1, units)), tf.reshape(dz_all, (-1, 4 * units)),
                             transpose_a=True)  # (units, 4*units), one matmul for all steps
        return dz_all, d_h0, d_c0, d_kernel

    return (hs, h_last, c_last), grad


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
        self.cell = LSTMCell(self.units, name="cell", dtype=self.dtype_policy)
        self._rnn = None

    def build(self, input_shape):
        self.cell.build(input_shape)
        if resolve_path(self.lstm_path) == "rnn":
            self._rnn = keras.layers.RNN(self.cell, return_sequences=True, return_state=True)

    def call(self, inputs, initial_state=None):
        """inputs: (batch, time, features). Returns (outputs (batch, time, units), [h_T, C_T])."""
        batch = tf.shape(inputs)[0]
        if initial_state is None:
            initial_state = self.cell.get_initial_state(batch)
        h0, c0 = initial_state
        path = resolve_path(self.lstm_path)
        if path == "rnn":
            outputs, h, c = self._rnn(inputs, initial_state=[h0, c0])
            return outputs, [h, c]
        if path == "cudnn":
            cell = self.cell
            result = cudnn_lstm_sequence(inputs, h0, c0, cell.kernel, cell.recurrent_kernel, cell.bias)
            if result is not None:
                outputs, h, c = result
                return outputs, [h, c]
        proj = tf.einsum("btd,dg->btg", inputs, self.cell.kernel) + self.cell.bias
        return self.run_projected(proj, [h0, c0])

    def run_projected(self, inputs_proj, initial_state):
        """The fused recurrence from precomputed projections x.W + b: (batch, time, 4*units)."""
        h0, c0 = initial_state
        kernel = tf.convert_to_tensor(self.cell.recurrent_kernel)
        outputs, h, c = fused_lstm_sequence(inputs_proj, h0, c0, kernel)
        return outputs, [h, c]

    def get_config(self):
        return {**super().get_config(), "units": self.units, "lstm_path": self.lstm_path}
