"""The cell interface (`CellKind`) and what every hand-written cell layer shares (`GatedCell`).

A cell kind says what the rest of textgen needs to know about one kind of recurrent cell: its
state names, its gate blocks, its step equations, the extra weights its step reads. A gated cell
is the Keras layer that holds one cell's weights: `kernel` (input_dim, blocks*units),
`recurrent_kernel` (units, blocks*units), `bias`, and whatever extra weights its kind adds (the
peephole's). `textgen.cell` registers the kinds; this module imports no cell of its own, so that
every cell's module can build on it without an import cycle.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def gate_activations(z: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """(i_t, f_t, C~_t, o_t) from the pre-activations z = x.W + h.U + b, (batch, 4*units)."""
    z_i, z_f, z_c, z_o = tf.split(z, 4, axis=-1)
    return tf.sigmoid(z_i), tf.sigmoid(z_f), tf.tanh(z_c), tf.sigmoid(z_o)


def zero_state(batch_size, units: int, dtype="float32") -> tf.Tensor:
    """The zero h (or C) of one layer: (batch_size, units). The one definition every zero state
    of textgen (a new window stream, a new sample, the cell's own initial state) comes from."""
    return tf.zeros((batch_size, units), dtype=dtype)


class GateBiasInitializer(keras.initializers.Initializer):
    """Bias initialiser for gates side by side: zeros, except ones for the forget gate "f"
    (remember by default), wherever `gate_names` puts it (4 blocks for the LSTM, 3 for CIFG)."""

    def __init__(self, gate_names=("i", "f", "c", "o")):
        self.gate_names = tuple(gate_names)

    def __call__(self, shape, dtype=None):
        units = shape[-1] // len(self.gate_names)
        return keras.ops.concatenate([
            (keras.ops.ones if name == "f" else keras.ops.zeros)((units,), dtype=dtype)
            for name in self.gate_names])

    def get_config(self):
        return {"gate_names": list(self.gate_names)}


class CellKind:
    """What textgen needs to know about one kind of recurrent cell, without its weights.

    A cell kind is a small stateless object; `textgen.cell.cell_kind(name)` returns the
    registered one. Code outside the cell asks it for the number and names of the states it
    carries, the gate blocks its kernels hold, the extra weights it reads and the step equations,
    instead of assuming an (h, C) pair.

    Attributes:
        name: the name users choose it by ("lstm").
        state_names: the per-layer states in the order they are carried, saved and exported
            (("h", "c") for the LSTM: the export's inputs are h0, c0, h1, c1, ...).
        gate_names: the gate blocks of `kernel`, `recurrent_kernel` and `bias`, in storage order.
        output_state: the state that is also the layer's output and feeds the recurrent kernel.
        quantities: what the step computes and a trace records, gate values then states.
        quantity_names: a readable name per quantity, for traces and summaries.
        sigmoid_gates: the quantities that are sigmoid gates (whose saturation is measured).
        extra_weights: names of the layer's weights beyond kernel, recurrent_kernel and bias
            that the step reads (`extras`), e.g. ("peephole",).
        extra_rows: per extra weight, the names of its rows of `units` numbers (its per-unit
            vectors: the peephole's w_ci, w_cf, w_co), for pages that show them.
        cudnn: whether a cuDNN kernel computes this cell ("auto" picks it on a GPU).
        layer_class: the Keras cell layer (a `GatedCell`) holding this kind's weights.

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
    extra_weights: tuple[str, ...] = ()
    extra_rows: dict = {}
    cudnn: bool = False
    layer_class: type | None = None

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

    def bias_initializer(self) -> keras.initializers.Initializer:
        """How `bias` starts: zeros, ones for the forget gate."""
        return GateBiasInitializer(self.gate_names)

    def input_bias(self, layer) -> tf.Tensor:
        """The bias added to x.W in the input projection x.W + b, (blocks*units,)."""
        return layer.bias

    def extras(self, layer, dtype=None) -> dict:
        """{name: tensor} of `layer`'s `extra_weights` (cast to `dtype` if given): what `step`
        reads beside the pre-activations."""
        return {name: (getattr(layer, name) if dtype is None else tf.cast(getattr(layer, name), dtype))
                for name in self.extra_weights}

    def stacked_weights(self, layer, dtype) -> tuple:
        """A later layer's weights for single steps: ([W; U] (input+units, blocks*units), b),
        so that its x.W + h.U is one matmul (`stacked_step`)."""
        return (tf.cast(tf.concat([layer.kernel, layer.recurrent_kernel], axis=0), dtype),
                tf.cast(layer.bias, dtype))

    def stacked_step(self, x, states, stacked, extras=None):
        """One step of a later layer from its input x (batch, input) and `stacked_weights`.
        Returns the new states. A cell whose step needs h.U apart overrides this."""
        kernel, bias = stacked
        z = tf.matmul(tf.concat([x, self.output(states)], axis=-1), kernel) + bias  # (batch, blocks*units)
        return self.step(z, states, extras=extras)

    def step(self, inputs_proj, states, recurrent_proj=None, with_gates: bool = False, extras=None):
        """One step of the equations: pre-activations -> new states.

        Args:
            inputs_proj: x.W + b, (batch, gate_blocks*units), in `gate_names` order; or the whole
                pre-activation x.W + h.U + b when `recurrent_proj` is None.
            states: the layer's previous states, in `state_names` order.
            recurrent_proj: h_{t-1}.U, (batch, gate_blocks*units), or None (already summed in).
                Kept apart in the interface for cells whose equations do not simply add it.
            with_gates: also return the gate values.
            extras: {name: tensor} of the layer's `extra_weights` (`extras(layer)`); a cell
                with extra weights refuses to step without them.

        Returns:
            The new states (a tuple in `state_names` order); with `with_gates`, (new states,
            {quantity: (batch, units)} for the gate quantities).
        """
        raise NotImplementedError

    def needs(self, extras) -> dict:
        """`extras`, checked to hold every one of `extra_weights` (ValueError naming those missing)."""
        missing = [name for name in self.extra_weights if not extras or name not in extras]
        if missing:
            raise ValueError(f"the {self.name} cell's step needs its {', '.join(missing)} weights "
                             "(pass extras=kind.extras(layer))")
        return extras


class GatedCell(keras.layers.Layer):
    """One step of the cell kind `kind` as a Keras layer, usable anywhere a Keras RNN cell is.

    Weights: `kernel` (input_dim, blocks*units), `recurrent_kernel` (units, blocks*units), `bias`
    (blocks*units,), gate blocks side by side in `kind.gate_names` order, and the kind's
    `extra_weights` (built by `build_extras`). Subclasses set `kind` and document their equations.

    Args:
        units: positive integer, the width of h (and C).
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).
    """

    kind: CellKind = CellKind()

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        if int(units) <= 0:
            raise ValueError(f"units must be a positive integer, got {units}")
        self.units = int(units)
        self.state_size = [self.units for _ in self.kind.state_names]
        self.output_size = self.units

    def build(self, input_shape):
        input_dim = input_shape[-1]
        width = self.kind.gate_blocks * self.units
        self.kernel = self.add_weight(shape=(input_dim, width), initializer="glorot_uniform", name="kernel")
        self.recurrent_kernel = self.add_weight(
            shape=(self.units, width), initializer="orthogonal", name="recurrent_kernel")
        self.bias = self.add_weight(shape=self.bias_shape(width), initializer=self.kind.bias_initializer(),
                                    name="bias")
        self.build_extras()

    def bias_shape(self, width: int) -> tuple:
        """The shape of `bias`: (blocks*units,) here; the GRU's has two rows."""
        return (width,)

    def build_extras(self):
        """Create the kind's `extra_weights` (none for the LSTM)."""

    def call(self, inputs, states, training=False):
        """inputs: (batch, input_dim); states in `kind.state_names` order. Returns (h_t, new states)."""
        z = (tf.matmul(inputs, self.kernel) + tf.matmul(self.kind.output(states), self.recurrent_kernel)
             + self.bias)  # (batch, blocks*units)
        new_states = self.kind.step(z, states, extras=self.kind.extras(self))
        return self.kind.output(new_states), list(new_states)

    def get_initial_state(self, batch_size=None):
        """Zero states, each (batch_size, units)."""
        return list(self.kind.zero_state(batch_size, self.units, self.compute_dtype))

    def get_config(self):
        return {**super().get_config(), "units": self.units}
