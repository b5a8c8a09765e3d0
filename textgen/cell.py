"""The cell interface, and the textbook LSTM cell written out by hand as a Keras layer.

This is the heart of textgen. For input x_t and previous state (h_{t-1}, C_{t-1}):

    f_t = sigmoid(W_f . [h_{t-1}, x_t] + b_f)        forget gate
    i_t = sigmoid(W_i . [h_{t-1}, x_t] + b_i)        input gate
    C~_t = tanh(W_C . [h_{t-1}, x_t] + b_C)          candidate cell
    C_t = f_t * C_{t-1} + i_t * C~_t                 cell state
    o_t = sigmoid(W_o . [h_{t-1}, x_t] + b_o)        output gate
    h_t = o_t * tanh(C_t)                            hidden state

Each W_g . [h, x] is split as x . kernel_g + h . recurrent_kernel_g, and the four gates are
stored side by side in Keras's layout and order (i, f, c, o), so weights copy one-to-one
to and from `keras.layers.LSTM` (and its cuDNN kernel on GPU).

The cell interface (`CellKind`, `cell_kind(name)`) says what every other part of textgen needs
to know about a cell: its state names and shapes, its gate blocks, which state is its output,
its zero state and its step. The model, the inference step shared by sampler, server and
exporter, the export's state names, the trainer's carried state, the server's flat states, the
tracer and TensorBoard's gate histograms ask it instead of assuming an (h, C) pair. `LSTM.step`
is where the equations above are written; the one other place is the fused training path
(`textgen.recurrent._forward_loop` and its hand-written backward pass), which is pinned to this
cell by tests/test_recurrent.py::test_fused_and_rnn_paths_agree_forward and
::test_fused_and_rnn_paths_agree_gradients (the "rnn" path runs `LSTMCell`, hence `LSTM.step`).

`GRUKind` ("gru") writes out Keras's reset_after GRU the same way; its Keras layer is
`textgen.gru.GRUCell`, its fused loop `textgen.recurrent_gru` (pinned by tests/test_gru.py).
"""

from __future__ import annotations

import keras
import tensorflow as tf

GATE_ORDER = ("i", "f", "c", "o")
DEFAULT_CELL = "lstm"


def gate_activations(z: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """(i_t, f_t, C~_t, o_t) from the pre-activations z = x.W + h.U + b, (batch, 4*units)."""
    z_i, z_f, z_c, z_o = tf.split(z, 4, axis=-1)
    return tf.sigmoid(z_i), tf.sigmoid(z_f), tf.tanh(z_c), tf.sigmoid(z_o)


def zero_state(batch_size, units: int, dtype="float32") -> tf.Tensor:
    """The zero h (or C) of one layer: (batch_size, units). The one definition every zero state
    of textgen (a new window stream, a new sample, the cell's own initial state) comes from."""
    return tf.zeros((batch_size, units), dtype=dtype)


class CellKind:
    """What textgen needs to know about one kind of recurrent cell, without its weights.

    A cell kind is a small stateless object; `cell_kind(name)` returns the registered one. Code
    outside the cell asks it for the number and names of the states it carries, the gate blocks
    its kernels hold, and the step equations, instead of assuming an (h, C) pair.

    Attributes:
        name: the name users choose it by ("lstm").
        state_names: the per-layer states in the order they are carried, saved and exported
            (("h", "c") for the LSTM: the export's inputs are h0, c0, h1, c1, ...).
        gate_names: the gate blocks of `kernel`, `recurrent_kernel` and `bias`, in storage order.
        output_state: the state that is also the layer's output and feeds the recurrent kernel.
        quantities: what the step computes and a trace records, gate values then states.
        quantity_names: a readable name per quantity, for traces and summaries.
        sigmoid_gates: the quantities that are sigmoid gates (whose saturation is measured).

    Example:

        cell = cell_kind("lstm")
        states = cell.zero_state(batch_size=2, units=8)   # (h, c), each (2, 8)
        z = tf.random.normal((2, cell.gate_blocks * 8))    # x.W + h.U + b
        h, c = cell.step(z, states)
    """

    name: str = ""
    state_names: tuple[str, ...] = ()
    gate_names: tuple[str, ...] = ()
    output_state: str = ""
    quantities: tuple[str, ...] = ()
    quantity_names: dict = {}
    sigmoid_gates: tuple[str, ...] = ()

    @property
    def gate_blocks(self) -> int:
        """How many (…, units) blocks side by side the kernels and bias hold (4 for the LSTM)."""
        return len(self.gate_names)

    @property
    def output_index(self) -> int:
        """Where `output_state` sits in `state_names`."""
        return self.state_names.index(self.output_state)

    def state_shapes(self, batch_size, units: int) -> tuple[tuple, ...]:
        """The shape of each state of one layer, in `state_names` order."""
        return tuple((batch_size, units) for _ in self.state_names)

    def zero_state(self, batch_size, units: int, dtype="float32") -> tuple[tf.Tensor, ...]:
        """One layer's states before the first character: zeros, one per `state_names`."""
        zeros = zero_state(batch_size, units, dtype)
        return tuple(zeros for _ in self.state_names)

    def output(self, states):
        """The state of one layer that is its output (h)."""
        return states[self.output_index]

    def step(self, inputs_proj, states, recurrent_proj=None, with_gates: bool = False):
        """One step of the equations: pre-activations -> new states.

        Args:
            inputs_proj: x.W + b, (batch, gate_blocks*units), in `gate_names` order; or the whole
                pre-activation x.W + h.U + b when `recurrent_proj` is None.
            states: the layer's previous states, in `state_names` order.
            recurrent_proj: h_{t-1}.U, (batch, gate_blocks*units), or None (already summed in).
                Kept apart in the interface for cells whose equations do not simply add it.
            with_gates: also return the gate values.

        Returns:
            The new states (a tuple in `state_names` order); with `with_gates`, (new states,
            {quantity: (batch, units)} for the gate quantities).
        """
        raise NotImplementedError


class LSTMKind(CellKind):
    """The textbook LSTM of this module's docstring: state (h, C), gates i, f, C~, o.

    Example:

        from textgen.cell import cell_kind
        lstm = cell_kind("lstm")
        lstm.state_names, lstm.gate_blocks   # (("h", "c"), 4)
    """

    name = "lstm"
    state_names = ("h", "c")
    gate_names = GATE_ORDER
    output_state = "h"
    quantities = ("i", "f", "g", "o", "c", "h")  # "g": the candidate C~ ("c" is the cell state)
    quantity_names = {"i": "input gate", "f": "forget gate", "g": "candidate", "o": "output gate",
                      "c": "cell", "h": "hidden"}
    sigmoid_gates = ("i", "f", "o")

    def step(self, inputs_proj, states, recurrent_proj=None, with_gates: bool = False):
        """h_t, C_t from z = x.W + h.U + b (the module docstring's equations); see `CellKind.step`."""
        c_prev = states[1]
        z = inputs_proj if recurrent_proj is None else inputs_proj + recurrent_proj  # (batch, 4*units)
        input_gate, forget_gate, candidate, output_gate = gate_activations(z)
        c = forget_gate * c_prev + input_gate * candidate
        h = output_gate * tf.tanh(c)
        if with_gates:
            return (h, c), {"i": input_gate, "f": forget_gate, "g": candidate, "o": output_gate}
        return h, c


class GRUKind(CellKind):
    """Keras's `reset_after=True` GRU: state h alone, gate blocks z, r, h~ (Keras's order).

        z_t = sigmoid(x_t.W_z + b_xz + h_{t-1}.U_z + b_hz)          update gate
        r_t = sigmoid(x_t.W_r + b_xr + h_{t-1}.U_r + b_hr)          reset gate
        h~_t = tanh(x_t.W_h + b_xh + r_t * (h_{t-1}.U_h + b_hh))    candidate
        h_t = z_t * h_{t-1} + (1 - z_t) * h~_t                      hidden state

    The reset gate multiplies h.U_h + b_hh, so the recurrent projection cannot be summed into the
    input one as the LSTM's is: `step` takes p = x.W + b_x and q = h.U + b_h apart (bias row 0
    and row 1 of `textgen.gru.GRUCell`'s (2, 3*units) bias, `input_bias` and `recurrent_bias`).

    Example:

        gru = cell_kind("gru")
        h, = gru.step(tf.random.normal((2, 24)), gru.zero_state(2, 8), tf.random.normal((2, 24)))
    """

    name = "gru"
    state_names = ("h",)
    gate_names = ("z", "r", "h")
    output_state = "h"
    quantities = ("z", "r", "g", "h")  # "g": the candidate h~ ("h" is the state)
    quantity_names = {"z": "update gate", "r": "reset gate", "g": "candidate", "h": "hidden"}
    sigmoid_gates = ("z", "r")

    @staticmethod
    def input_bias(bias):
        """b_x, (3*units,): the bias row added to x.W (row 0 of the (2, 3*units) bias)."""
        return bias[0]

    @staticmethod
    def recurrent_bias(bias):
        """b_h, (3*units,): the bias row added to h.U, inside the reset gate's product for h~."""
        return bias[1]

    @staticmethod
    def stacked_weights(kernel, recurrent_kernel, bias):
        """One matmul for a step's both projections: [x, h] . K + b = [x.W + b_x, h.U + b_h].

        K is block-diagonal, (input_dim + units, 6*units); b is (6*units,). What `step` takes as
        `inputs_proj` when `recurrent_proj` is None (the LSTM's stacked [W; U] would sum them).
        """
        top = tf.concat([kernel, tf.zeros_like(kernel)], axis=-1)  # (input_dim, 6*units)
        bottom = tf.concat([tf.zeros_like(recurrent_kernel), recurrent_kernel], axis=-1)  # (units, 6*units)
        return tf.concat([top, bottom], axis=0), tf.reshape(bias, [-1])

    def step(self, inputs_proj, states, recurrent_proj=None, with_gates: bool = False):
        """h_t from p = x.W + b_x and q = h_{t-1}.U + b_h, each (batch, 3*units) (this class's
        equations); with `recurrent_proj` None, `inputs_proj` is [p, q] side by side,
        (batch, 6*units) (`stacked_weights`). See `CellKind.step`."""
        if recurrent_proj is None:
            inputs_proj, recurrent_proj = tf.split(inputs_proj, 2, axis=-1)
        h_prev = states[0]
        p_z, p_r, p_h = tf.split(inputs_proj, 3, axis=-1)
        q_z, q_r, q_h = tf.split(recurrent_proj, 3, axis=-1)
        update, reset = tf.sigmoid(p_z + q_z), tf.sigmoid(p_r + q_r)
        candidate = tf.tanh(p_h + reset * q_h)
        h = update * h_prev + (1.0 - update) * candidate
        if with_gates:
            return (h,), {"z": update, "r": reset, "g": candidate}
        return (h,)


LSTM = LSTMKind()
GRU = GRUKind()
CELLS = {LSTM.name: LSTM, GRU.name: GRU}  # issue 28 registers "peephole" and "cifg" here too


def cell_kind(name: str) -> CellKind:
    """The registered cell kind called `name`; ValueError naming the choices for another."""
    if name not in CELLS:
        raise ValueError(f"unknown cell {name!r}; choose one of {', '.join(CELLS)}")
    return CELLS[name]


def config_cell(config) -> CellKind:
    """The cell kind a `ModelConfig` asks for: the one place the model, the exporter, the server
    and the trainer read it from (its `cell` field once ModelConfig has one, else the LSTM)."""
    return cell_kind(getattr(config, "cell", DEFAULT_CELL))


class ForgetBiasInitializer(keras.initializers.Initializer):
    """Bias initialiser: zeros, except ones for the forget gate (remember by default)."""

    def __call__(self, shape, dtype=None):
        units = shape[0] // 4
        return keras.ops.concatenate(
            [
                keras.ops.zeros((units,), dtype=dtype),
                keras.ops.ones((units,), dtype=dtype),
                keras.ops.zeros((2 * units,), dtype=dtype),
            ]
        )


@keras.saving.register_keras_serializable(package="textgen")
class LSTMCell(keras.layers.Layer):
    """One LSTM step (the module docstring's equations), usable anywhere a Keras RNN cell is.

    Weights: `kernel` (input_dim, 4*units), `recurrent_kernel` (units, 4*units) and `bias`
    (4*units,), gates side by side in order i, f, c, o (Keras's layout: `set_weights` takes a
    `keras.layers.LSTM`'s weights as they are); the forget-gate bias starts at 1.

    Args:
        units: positive integer, the width of h and C.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: (batch, input_dim) float tensor, x_t.
        states: [h_{t-1}, C_{t-1}], each (batch, units) (`get_initial_state` gives zeros).
        training: unused (no dropout inside the cell); accepted as Keras passes it.

    Returns:
        (h_t, [h_t, C_t]): the output and the new states, each (batch, units).

    Example:

        layer = keras.layers.RNN(LSTMCell(64), return_sequences=True)
        outputs = layer(tf.random.normal((8, 20, 16)))   # (8, 20, 64)
    """

    kind = LSTM  # the cell interface: state names, gates, the step

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        if int(units) <= 0:
            raise ValueError(f"units must be a positive integer, got {units}")
        self.units = int(units)
        self.state_size = [self.units for _ in self.kind.state_names]
        self.output_size = self.units

    def build(self, input_shape):
        input_dim = input_shape[-1]
        blocks = self.kind.gate_blocks
        self.kernel = self.add_weight(
            shape=(input_dim, blocks * self.units), initializer="glorot_uniform", name="kernel"
        )
        self.recurrent_kernel = self.add_weight(
            shape=(self.units, blocks * self.units), initializer="orthogonal", name="recurrent_kernel"
        )
        self.bias = self.add_weight(
            shape=(blocks * self.units,), initializer=ForgetBiasInitializer(), name="bias"
        )

    def call(self, inputs, states, training=False):
        """inputs: (batch, input_dim); states: [h, C]. Returns (h_t, [h_t, C_t])."""
        z = (
            tf.matmul(inputs, self.kernel)
            + tf.matmul(self.kind.output(states), self.recurrent_kernel)
            + self.bias
        )  # (batch, 4*units)
        new_states = self.kind.step(z, states)
        return self.kind.output(new_states), list(new_states)

    def get_initial_state(self, batch_size=None):
        """Zero state [h, C], each (batch_size, units)."""
        return list(self.kind.zero_state(batch_size, self.units, self.compute_dtype))

    def get_config(self):
        return {**super().get_config(), "units": self.units}
