"""An LSTM layer that runs `textgen.cell.LSTMCell` over a whole sequence, fast.

Three paths compute the same equations with the same weights (so checkpoints move freely):

- "fused" (default on CPU): the input projection x.W + b of every time step is one big matmul
  before the loop, so the loop itself does only h.U and the gate arithmetic; the backward pass is
  written out by hand (see `_lstm_time_major`). With `textgen.cell.LSTM.step` this loop is the
  one other place the LSTM equations are written; tests/test_recurrent.py's
  test_fused_and_rnn_paths_agree_forward and test_fused_and_rnn_paths_agree_gradients pin the
  two together (the "rnn" path runs `LSTMCell`, whose call is `LSTM.step`). Hand-written because the generic
  `keras.layers.RNN` loop recomputes x.W step by step and autodiff of the loop is slow. It runs
  time-major inside (a time-major caller skips the transposes); the model runs one such loop per
  group of batch rows, side by side (see `textgen.parallel`).
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
    inputs_proj: tf.Tensor, h0: tf.Tensor, c0: tf.Tensor, recurrent_kernel: tf.Tensor,
    time_major: bool = False, recurrent_mask: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Run the recurrence given precomputed input projections, with a hand-written backward pass.

    inputs_proj: (batch, time, 4*units) = x.W + b for every step, or (time, batch, 4*units) with
    `time_major`; h0, c0: (batch, units); recurrent_kernel: (units, 4*units) as a tensor.
    recurrent_mask: None, or (batch, units) multiplying h_{t-1} where it enters the recurrent
    kernel, the same at every time step (variational dropout on the recurrent path; the outputs
    and the carried state stay unmasked).
    Returns (outputs (batch, time, units), or (time, batch, units) with `time_major`, h_T, C_T).
    """
    proj_tm = inputs_proj if time_major else _swap_time_batch(inputs_proj)
    if recurrent_mask is None:
        outputs_tm, h, c = _lstm_time_major(proj_tm, h0, c0, recurrent_kernel)
    else:
        outputs_tm, h, c = _lstm_time_major_masked(proj_tm, h0, c0, recurrent_kernel,
                                                   tf.cast(recurrent_mask, proj_tm.dtype))
    return (outputs_tm if time_major else _swap_time_batch(outputs_tm)), h, c


def _forward_loop(proj_tm, h0, c0, recurrent_kernel, mask=None):
    """The forward recurrence. Returns the stacked (time, batch, units) h, C and gates i, f, C~, o
    (what the backward pass needs), then the final h and C. `mask`: see `fused_lstm_sequence`.

    The LSTM equations written again (as `textgen.cell.LSTM.step`), because the backward pass
    needs exactly these stored gates. Each gate goes to a TensorArray of its own: storing them
    side by side would need a concat per step, and storing the pre-activations would make the
    backward pass recompute every sigmoid and tanh; both measured slower.
    """
    steps = tf.shape(proj_tm)[0]
    stored = [tf.TensorArray(proj_tm.dtype, size=steps) for _ in range(6)]  # h, C, i, f, C~, o

    def body(t, h, c, *stored):
        z = proj_tm[t] + tf.matmul(h if mask is None else h * mask, recurrent_kernel)  # (batch, 4*units)
        i, f, g, o = gate_activations(z)
        c = f * c + i * g
        h = o * tf.tanh(c)
        return (t + 1, h, c) + tuple(ta.write(t, v) for ta, v in zip(stored, (h, c, i, f, g, o)))

    _, h, c, *stored = tf.while_loop(lambda t, *_: t < steps, body, (tf.constant(0), h0, c0, *stored))
    return [ta.stack() for ta in stored] + [h, c]


@tf.function(jit_compile=True)
def _backward_coefficients(cs, c0, i, f, g, o):
    """The step-independent factors of backpropagation through time, for all steps at once.

    cs, i, f, g, o: (time, batch, units) cell states and gates. Returns (dC_t/dh_t (time, batch,
    units), dz/d(dC or dh) per gate (time, batch, 4*units)). Compiled with XLA, which fuses these
    elementwise passes over (time, batch, units) tensors.
    """
    tanh_c = tf.tanh(cs)
    c_prev = tf.concat([c0[None], cs[:-1]], axis=0)  # C_{t-1}
    dc_per_dh = o * (1.0 - tanh_c * tanh_c)  # dC_t/dh_t through h_t = o_t * tanh(C_t)
    dz_scale = tf.concat([
        g * i * (1.0 - i),  # dz_i per dC_t
        c_prev * f * (1.0 - f),  # dz_f per dC_t
        i * (1.0 - g * g),  # dz_c per dC_t
        tanh_c * o * (1.0 - o),  # dz_o per dh_t
    ], axis=-1)
    return dc_per_dh, dz_scale


@tf.custom_gradient
def _lstm_time_major(proj_tm, h0, c0, recurrent_kernel):
    """Forward: the LSTM equations over time. Backward: backpropagation through time written out
    (`_lstm_with_gradient`)."""
    return _lstm_with_gradient(proj_tm, h0, c0, recurrent_kernel, None)


@tf.custom_gradient
def _lstm_time_major_masked(proj_tm, h0, c0, recurrent_kernel, mask):
    """`_lstm_time_major` with h_{t-1} x `mask` (batch, units) entering the recurrent kernel."""
    return _lstm_with_gradient(proj_tm, h0, c0, recurrent_kernel, mask)


def _lstm_with_gradient(proj_tm, h0, c0, recurrent_kernel, mask):
    """The forward recurrence and its gradient function, for `tf.custom_gradient`.

    Hand-written because autodiff of a while_loop accumulates h.U's weight gradient one small
    matmul per step; here the loop only carries dh and dC back, and the weight gradient is a single
    (units x time*batch) @ (time*batch x 4*units) matmul after it. With a recurrent `mask` m the
    step is z_t = p_t + (h_{t-1} * m).U, so dh_{t-1} gains (dz_t.U^T) * m and dU = sum_t
    (h_{t-1} * m)^T dz_t; the mask gets no gradient.
    """
    hs, cs, i, f, g, o, h_last, c_last = _forward_loop(proj_tm, h0, c0, recurrent_kernel, mask)

    def masked(h):  # h_{t-1} as the recurrent kernel saw it; h: (..., batch, units)
        return h if mask is None else h * mask

    def grad(d_outputs, d_h_last, d_c_last):
        steps = tf.shape(proj_tm)[0]
        d_h = tf.zeros_like(h0) if d_h_last is None else d_h_last
        d_c = tf.zeros_like(c0) if d_c_last is None else d_c_last
        d_outputs = tf.zeros_like(hs) if d_outputs is None else d_outputs
        # Everything that does not depend on the recurrence is computed for all steps at once,
        # so the sequential loop is down to a few ops and one matmul per step.
        dc_per_dh, dz_scale = _backward_coefficients(cs, c0, i, f, g, o)
        kernel_t = tf.transpose(recurrent_kernel)  # (4*units, units)
        dzs = tf.TensorArray(proj_tm.dtype, size=steps)

        def body(t, d_h, d_c, dzs):
            d_h = d_h + d_outputs[t]
            d_c = d_c + d_h * dc_per_dh[t]
            dz = tf.concat([d_c, d_c, d_c, d_h], axis=-1) * dz_scale[t]  # (batch, 4*units)
            return t - 1, masked(tf.matmul(dz, kernel_t)), d_c * f[t], dzs.write(t, dz)

        _, d_h0, d_c0, dzs = tf.while_loop(lambda t, *_: t >= 0, body, (steps - 1, d_h, d_c, dzs))
        dz_all = dzs.stack()  # (time, batch, 4*units)
        units = tf.shape(h0)[-1]
        # dU = sum_t h_{t-1}^T dz_t: h_0's term plus one matmul over the stored h_1..h_{T-1}
        # (slices along time are free; concatenating h_0 in front would copy them all).
        d_kernel = tf.matmul(masked(h0), dz_all[0], transpose_a=True) + tf.matmul(
            tf.reshape(masked(hs[:-1]), (-1, units)), tf.reshape(dz_all[1:], (-1, 4 * units)),
            transpose_a=True)  # (units, 4*units)
        grads = (dz_all, d_h0, d_c0, d_kernel)
        return grads if mask is None else grads + (tf.zeros_like(mask),)

    return (hs, h_last, c_last), grad


def _swap_time_batch(x: tf.Tensor) -> tf.Tensor:
    """(batch, time, features) <-> (time, batch, features)."""
    return tf.transpose(x, [1, 0, 2])


@keras.saving.register_keras_serializable(package="textgen")
class LSTMLayer(keras.layers.Layer):
    """Sequence layer over our `LSTMCell`: (batch, time, features) -> (batch, time, units).

    Runs one of the three paths of this module's docstring with the cell's weights (`self.cell`),
    and returns the final state too, so that a caller can carry it into the next window
    (truncated BPTT) or the next sampling step.

    Args:
        units: positive integer, the width of h and C.
        lstm_path: "auto" (cuDNN with a GPU, else fused), "fused", "cudnn" or "rnn".
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: (batch, time, features), or (time, batch, features) with `time_major`.
        initial_state: [h_0, C_0], each (batch, units), or None for zeros.
        time_major: whether inputs and outputs are (time, batch, ...).
        recurrent_mask: training only, (batch, units) multiplying h_{t-1} where it enters the
            recurrent kernel (variational recurrent dropout), or None.

    Returns:
        (outputs in the layout of the inputs, (..., units); [h_T, C_T], each (batch, units)).

    Example:

        layer = LSTMLayer(128)
        outputs, state = layer(tf.random.normal((8, 100, 32)))            # (8, 100, 128)
        more, state = layer(tf.random.normal((8, 100, 32)), initial_state=state)  # carried on
    """

    cell_class = LSTMCell  # the Keras cell it runs (`textgen.recurrent_gru.GRULayer`: GRUCell)

    def __init__(self, units: int, lstm_path: str = "auto", **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        resolve_path(lstm_path)  # refuse an unknown path now, not at the first call
        self.lstm_path = lstm_path
        self.cell = self.cell_class(self.units, name="cell", dtype=self.dtype_policy)
        self._rnn = None

    def build(self, input_shape):
        self.cell.build(input_shape)
        if resolve_path(self.lstm_path) == "rnn":
            self._rnn = keras.layers.RNN(self.cell, return_sequences=True, return_state=True)

    def call(self, inputs, initial_state=None, time_major: bool = False, recurrent_mask=None):
        """inputs: (batch, time, features), or (time, batch, features) with `time_major`.

        `recurrent_mask` (batch, units), training only: variational dropout on h_{t-1} where it
        enters the recurrent kernel (see `fused_lstm_sequence`). cuDNN has no such input, so a
        masked call runs the fused loop on any device, as `keras.layers.LSTM` leaves cuDNN when
        given a recurrent dropout.
        Returns (outputs in the layout of the inputs, [h_T, C_T]). The fused path runs time-major
        inside, so a time-major caller saves a transpose in and out of every layer.
        """
        batch = tf.shape(inputs)[1 if time_major else 0]
        if initial_state is None:
            initial_state = self.cell.get_initial_state(batch)
        h0, c0 = initial_state
        path = resolve_path(self.lstm_path)
        if path != "fused" and recurrent_mask is None:
            result = self._library_sequence(path, _swap_time_batch(inputs) if time_major else inputs, h0, c0)
            if result is not None:
                outputs, h, c = result
                return (_swap_time_batch(outputs) if time_major else outputs), [h, c]
        cell = self.cell
        features = tf.shape(inputs)[-1]
        # bias_add, not +: its gradient (BiasAddGrad) sums the rows faster than a broadcast's Sum
        proj = tf.nn.bias_add(tf.matmul(tf.reshape(inputs, (-1, features)), cell.kernel),
                              cell.bias)  # (time*batch, 4*units)
        proj = tf.reshape(proj, tf.concat([tf.shape(inputs)[:2], [4 * self.units]], axis=0))
        return self.run_projected(proj, [h0, c0], time_major=time_major, recurrent_mask=recurrent_mask)

    def _library_sequence(self, path, inputs, h0, c0):
        """(outputs, h, c) from the "rnn" or "cudnn" path on batch-major inputs; None if cuDNN
        is unavailable (then the fused path runs instead)."""
        if path == "rnn":
            return self._rnn(inputs, initial_state=[h0, c0])
        cell = self.cell
        return cudnn_lstm_sequence(inputs, h0, c0, cell.kernel, cell.recurrent_kernel, cell.bias)

    def run_projected(self, inputs_proj, initial_state, time_major: bool = False, recurrent_mask=None):
        """The fused recurrence from precomputed projections x.W + b: (batch, time, 4*units),
        or (time, batch, 4*units) with `time_major` (and then time-major outputs)."""
        h0, c0 = initial_state
        # an explicit cast: the model also calls this outside Keras's autocasting `call`
        kernel = tf.cast(self.cell.recurrent_kernel, self.compute_dtype)
        outputs, h, c = fused_lstm_sequence(inputs_proj, h0, c0, kernel, time_major=time_major,
                                            recurrent_mask=recurrent_mask)
        return outputs, [h, c]

    def get_config(self):
        return {**super().get_config(), "units": self.units, "lstm_path": self.lstm_path}
