"""The recurrent layer: runs a cell (`textgen.cell`) over a whole sequence, fast.

Three paths compute the same equations with the same weights (so checkpoints move freely):

- "fused" (default on CPU): the input projection x.W + b of every time step is one big matmul
  before the loop, so the loop itself does only h.U and the gate arithmetic; the backward pass is
  written out by hand (`textgen.fused`). For the LSTM, with `textgen.cell.LSTM.step` this loop is
  the one other place the LSTM equations are written; tests/test_recurrent.py's
  test_fused_and_rnn_paths_agree_forward and test_fused_and_rnn_paths_agree_gradients pin the
  two together (the "rnn" path runs `LSTMCell`, whose call is `LSTM.step`), as
  tests/test_lstm_variants.py does for peephole and CIFG (`textgen.recurrent_variants`).
  Hand-written because the generic `keras.layers.RNN` loop recomputes x.W step by step and
  autodiff of the loop is slow. It runs time-major inside (a time-major caller skips the
  transposes); the model runs one such loop per group of batch rows, side by side (see
  `textgen.parallel`).
- "cudnn" (default when a GPU is visible, for cells cuDNN computes: the LSTM and the GRU):
  NVIDIA's fused kernels through Keras's own cuDNN binding, fed our kernel, recurrent_kernel and
  bias as they are (same layout, same gate order; `textgen.recurrent_gru` for the GRU's). The
  peephole and CIFG cells run fused there too.
- "rnn": the reference, `keras.layers.RNN(cell)`, kept for tests and comparison.
"""

from __future__ import annotations

import importlib

import keras
import tensorflow as tf

from textgen.cell import cell_kind, gate_activations
from textgen.fused import backward_loop, forward_loop, matmul_unaliased, previous_cells, swap_time_batch
from textgen.lstm_ablations import nfg_time_major, noaf_time_major
from textgen.recurrent_gru import cudnn_gru_sequence, gru_time_major
from textgen.recurrent_variants import cifg_time_major, peephole_time_major

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
    proj_tm = inputs_proj if time_major else swap_time_batch(inputs_proj)
    outputs_tm, (h, c) = lstm_time_major(proj_tm, (h0, c0), recurrent_kernel, {}, recurrent_mask)
    return (outputs_tm if time_major else swap_time_batch(outputs_tm)), h, c


def lstm_time_major(proj_tm, states, recurrent_kernel, extras, mask):
    """The LSTM's fused loop in `FUSED`'s form: (outputs (time, batch, units), (h_T, C_T))."""
    h0, c0 = states
    if mask is None:
        outputs, h, c = _lstm_time_major(proj_tm, h0, c0, recurrent_kernel)
    else:
        outputs, h, c = _lstm_time_major_masked(proj_tm, h0, c0, recurrent_kernel, tf.cast(mask, proj_tm.dtype))
    return outputs, (h, c)


def _lstm_cell(z, c):
    """The LSTM equations written again (as `textgen.cell.LSTM.step`), returning also the gates
    the backward pass needs: (h_t, C_t, i, f, C~, o)."""
    i, f, g, o = gate_activations(z)
    c = f * c + i * g
    return o * tf.tanh(c), c, i, f, g, o


@tf.function(jit_compile=True)
def _backward_coefficients(cs, c0, i, f, g, o):
    """The step-independent factors of backpropagation through time, for all steps at once.

    cs, i, f, g, o: (time, batch, units) cell states and gates. Returns (dC_t/dh_t (time, batch,
    units), dz/d(dC or dh) per gate (time, batch, 4*units)). Compiled with XLA, which fuses these
    elementwise passes over (time, batch, units) tensors.
    """
    tanh_c = tf.tanh(cs)
    dc_per_dh = o * (1.0 - tanh_c * tanh_c)  # dC_t/dh_t through h_t = o_t * tanh(C_t)
    dz_scale = tf.concat([
        g * i * (1.0 - i),  # dz_i per dC_t
        previous_cells(cs, c0) * f * (1.0 - f),  # dz_f per dC_t
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
    """The forward recurrence and its gradient function, for `tf.custom_gradient`: dC_{t-1} =
    dC_t * f_t; the rest is `textgen.fused.backward_loop`."""
    hs, cs, i, f, g, o, h_last, c_last = forward_loop(proj_tm, h0, c0, recurrent_kernel, mask, _lstm_cell, 6)

    def grad(d_outputs, d_h_last, d_c_last):
        dc_per_dh, dz_scale = _backward_coefficients(cs, c0, i, f, g, o)
        grads = backward_loop((d_outputs, d_h_last, d_c_last), hs, h0, c0, recurrent_kernel, mask,
                              (dc_per_dh, dz_scale, f), "ccch")
        return grads if mask is None else grads + (tf.zeros_like(mask),)

    return (hs, h_last, c_last), grad


# cell name -> its fused loop: f(proj_tm, states, recurrent_kernel, extras, mask) ->
# (outputs (time, batch, units), new states)
FUSED = {"lstm": lstm_time_major, "peephole": peephole_time_major, "cifg": cifg_time_major,
         "gru": gru_time_major, "nfg": nfg_time_major, "noaf": noaf_time_major}


@keras.saving.register_keras_serializable(package="textgen")
class LSTMLayer(keras.layers.Layer):
    """Sequence layer over a cell of `textgen.cell`: (batch, time, features) -> (batch, time, units).

    Runs one of the three paths of this module's docstring with the cell's weights (`self.cell`,
    the cell kind's `layer_class`: `LSTMCell` by default), and returns the final state too, so
    that a caller can carry it into the next window (truncated BPTT) or the next sampling step.

    Args:
        units: positive integer, the width of h (and C).
        lstm_path: "auto" (cuDNN with a GPU for cells it computes, else fused), "fused",
            "cudnn" or "rnn".
        cell: the registered cell name ("lstm", "peephole", "cifg", "gru"; `textgen.cell.CELLS`).
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: (batch, time, features), or (time, batch, features) with `time_major`.
        initial_state: the states in the cell's `state_names` order ([h_0, C_0]), each
            (batch, units), or None for zeros.
        time_major: whether inputs and outputs are (time, batch, ...).
        recurrent_mask: training only, (batch, units) multiplying h_{t-1} where it enters the
            recurrent kernel (variational recurrent dropout), or None.

    Returns:
        (outputs in the layout of the inputs, (..., units); the new states, each (batch, units)).

    Example:

        layer = LSTMLayer(128, cell="cifg")
        outputs, state = layer(tf.random.normal((8, 100, 32)))            # (8, 100, 128)
        more, state = layer(tf.random.normal((8, 100, 32)), initial_state=state)  # carried on
    """

    def __init__(self, units: int, lstm_path: str = "auto", cell: str = "lstm", **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        resolve_path(lstm_path)  # refuse an unknown path now, not at the first call
        self.lstm_path = lstm_path
        self.kind = cell_kind(cell)
        self.cell = self.kind.layer_class(self.units, name="cell", dtype=self.dtype_policy)
        self._rnn = None

    @property
    def path(self) -> str:
        """The path this layer runs: `lstm_path` resolved, cuDNN only for cells it computes."""
        path = resolve_path(self.lstm_path)
        return "fused" if path == "cudnn" and not self.kind.cudnn else path

    def build(self, input_shape):
        self.cell.build(input_shape)
        if self.path == "rnn":
            self._rnn = keras.layers.RNN(self.cell, return_sequences=True, return_state=True)

    def call(self, inputs, initial_state=None, time_major: bool = False, recurrent_mask=None):
        """inputs: (batch, time, features), or (time, batch, features) with `time_major`.

        `recurrent_mask` (batch, units), training only: variational dropout on h_{t-1} where it
        enters the recurrent kernel (see `fused_lstm_sequence`). cuDNN has no such input, so a
        masked call runs the fused loop on any device, as `keras.layers.LSTM` leaves cuDNN when
        given a recurrent dropout.
        Returns (outputs in the layout of the inputs, new states). The fused path runs time-major
        inside, so a time-major caller saves a transpose in and out of every layer.
        """
        batch = tf.shape(inputs)[1 if time_major else 0]
        if initial_state is None:
            initial_state = self.cell.get_initial_state(batch)
        path = self.path
        if path != "fused" and recurrent_mask is None:
            result = self._library_sequence(path, swap_time_batch(inputs) if time_major else inputs,
                                            list(initial_state))
            if result is not None:
                outputs, *states = result
                return (swap_time_batch(outputs) if time_major else outputs), list(states)
        features = tf.shape(inputs)[-1]
        # bias_add, not +: its gradient (BiasAddGrad) sums the rows faster than a broadcast's Sum
        proj = tf.nn.bias_add(matmul_unaliased(tf.reshape(inputs, (-1, features)), self.cell.kernel),
                              self.kind.input_bias(self.cell))  # (time*batch, blocks*units)
        proj = tf.reshape(proj, tf.concat([tf.shape(inputs)[:2], [-1]], axis=0))
        return self.run_projected(proj, initial_state, time_major=time_major, recurrent_mask=recurrent_mask)

    def _library_sequence(self, path, inputs, states):
        """(outputs, *states) from the "rnn" or "cudnn" path on batch-major inputs; None if cuDNN
        is unavailable (then the fused path runs instead)."""
        if path == "rnn":
            return self._rnn(inputs, initial_state=states)
        cell = self.cell
        cudnn = cudnn_gru_sequence if self.kind.name == "gru" else cudnn_lstm_sequence
        return cudnn(inputs, *states, cell.kernel, cell.recurrent_kernel, cell.bias)

    def run_projected(self, inputs_proj, initial_state, time_major: bool = False, recurrent_mask=None):
        """The fused recurrence from precomputed projections x.W + b: (batch, time, blocks*units),
        or (time, batch, blocks*units) with `time_major` (and then time-major outputs)."""
        # explicit casts: the model also calls this outside Keras's autocasting `call`
        dtype = self.compute_dtype
        kernel = tf.cast(self.cell.recurrent_kernel, dtype)
        proj_tm = inputs_proj if time_major else swap_time_batch(inputs_proj)
        mask = None if recurrent_mask is None else tf.cast(recurrent_mask, dtype)
        outputs, states = FUSED[self.kind.name](proj_tm, tuple(initial_state), kernel,
                                                self.kind.extras(self.cell, dtype), mask)
        return (outputs if time_major else swap_time_batch(outputs)), list(states)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "lstm_path": self.lstm_path,
                "cell": self.kind.name}
