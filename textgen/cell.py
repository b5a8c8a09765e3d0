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

The cell interface (`textgen.cell_base.CellKind`; `cell_kind(name)` here) says what every other part of textgen needs
to know about a cell: its state names and shapes, its gate blocks, which state is its output,
its zero state and its step. The model, the inference step shared by sampler, server and
exporter, the export's state names, the trainer's carried state, the server's flat states, the
tracer and TensorBoard's gate histograms ask it instead of assuming an (h, C) pair. `LSTM.step`
is where the equations above are written; the one other place is the fused training path
(`textgen.recurrent`'s step function and its hand-written backward pass), which is pinned to this
cell by tests/test_recurrent.py::test_fused_and_rnn_paths_agree_forward and
::test_fused_and_rnn_paths_agree_gradients (the "rnn" path runs `LSTMCell`, hence `LSTM.step`).

The registry `CELLS` holds every cell `textgen train --cell` offers: "lstm" (this one),
"peephole" and "cifg" (`textgen.lstm_variants`), "gru" (`textgen.gru`), and the experiment-only
"nfg" and "noaf" (`textgen.lstm_ablations`); `textgen.config.CELL_NAMES` lists the same
names for validation without TensorFlow (tests/test_cell.py holds the two equal).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from textgen.cell_base import CellKind, GatedCell, gate_activations, zero_state
from textgen.gru import GRU
from textgen.lstm_ablations import NFG, NOAF
from textgen.lstm_variants import CIFG, PEEPHOLE

__all__ = ["CELLS", "DEFAULT_CELL", "GATE_ORDER", "LSTM", "CellKind", "LSTMCell", "LSTMKind", "cell_kind",
           "config_cell", "gate_activations", "zero_state"]

GATE_ORDER = ("i", "f", "c", "o")
DEFAULT_CELL = "lstm"


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
    cudnn = True

    def step(self, inputs_proj, states, recurrent_proj=None, with_gates: bool = False, extras=None):
        """h_t, C_t from z = x.W + h.U + b (the module docstring's equations); see `CellKind.step`."""
        c_prev = states[1]
        z = inputs_proj if recurrent_proj is None else inputs_proj + recurrent_proj  # (batch, 4*units)
        input_gate, forget_gate, candidate, output_gate = gate_activations(z)
        c = forget_gate * c_prev + input_gate * candidate
        h = output_gate * tf.tanh(c)
        if with_gates:
            return (h, c), {"i": input_gate, "f": forget_gate, "g": candidate, "o": output_gate}
        return h, c


LSTM = LSTMKind()


@keras.saving.register_keras_serializable(package="textgen")
class LSTMCell(GatedCell):
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


LSTMKind.layer_class = LSTMCell
CELLS = {kind.name: kind for kind in (LSTM, PEEPHOLE, CIFG, GRU, NFG, NOAF)}


def cell_kind(name: str) -> CellKind:
    """The registered cell kind called `name`; ValueError naming the choices for another."""
    if name not in CELLS:
        raise ValueError(f"unknown cell {name!r}; choose one of {', '.join(CELLS)}")
    return CELLS[name]


def config_cell(config) -> CellKind:
    """The cell kind a `ModelConfig` asks for: the one place the model, the exporter, the server
    and the trainer read it from (its `cell` field; the LSTM for a config without one)."""
    return cell_kind(getattr(config, "cell", DEFAULT_CELL))
