"""Per-character traces of the LSTM: every gate, cell state and hidden state the model computes.

The trace runs the model's own code, not a copy of its equations: the first layer's input
projections come from the (vocab, blocks*units) table that the model's fused path gathers from
(`CharLSTM.step_weights(fold=True)`), each later layer's from its own x.W + b, and the recurrence
is the cell's own step (`CellKind.step`, which also returns the gates) in a loop, keeping what
the cell computes at every step (for the LSTM: i, f, C~, o, C and h; `cell.quantities`).
Long texts run in windows with the state carried from one to the next, each window one
XLA-compiled call, so memory beyond the result is constant.

    trace = trace_text(model, vocab, "def f(x):\\n    return x\\n")
    trace.layers[0]["f"]   # (time, units) forget gate after each character
    trace.surprisal        # (time,) bits of the next character; NaN for the last
"""

from __future__ import annotations

import weakref
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from textgen.cell import LSTM, CellKind
from textgen.config import LN2, VizConfig
from textgen.errors import TextgenError
from textgen.model import flatten_state, unflatten_state

# The LSTM's (the default cell's) quantities; a model's own are `model.cell_kind.quantities`
QUANTITIES = LSTM.quantities  # input gate, forget gate, candidate C~, output gate, C, h
NAMES = LSTM.quantity_names
MAX_TRACE_BYTES = 4 * 2**30  # a longer trace is refused before its arrays are allocated
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its tf.functions


@dataclass
class Trace:
    """What the model computed at every character of a text.

    Attributes:
        chars: the text traced (a str; step t read chars[t]), out-of-vocabulary characters removed.
        ids: (time,) int32 vocabulary ids of `chars`.
        layers: per layer {"i", "f", "g", "o", "c", "h"}: (time, units) float32, the state after
            reading chars[t] ("g" is the candidate C~).
        top_ids, top_probs: (time, k) the model's k likeliest next characters after chars[t].
        surprisal: (time,) float32 bits of chars[t + 1] given chars[..t]; NaN for the last.
        vocab_chars: the vocabulary, so `vocab_chars[top_ids[t, 0]]` is a character.
        skipped: out-of-vocabulary characters removed from the text, with counts.
    """

    chars: str
    ids: np.ndarray
    layers: list[dict[str, np.ndarray]]
    top_ids: np.ndarray
    top_probs: np.ndarray
    surprisal: np.ndarray
    vocab_chars: list[str]
    skipped: Counter = field(default_factory=Counter)
    cell: CellKind = LSTM  # the model's cell kind: what each layer's dict holds

    def __len__(self) -> int:
        return len(self.chars)

    @property
    def quantities(self) -> tuple[str, ...]:
        """The names each layer's dict holds, in order (`cell.quantities`)."""
        return self.cell.quantities


def known_text(vocab, text: str) -> tuple[str, Counter]:
    """`text` without the characters `vocab` lacks, and a Counter of those removed."""
    unknown = set(vocab.unknown_chars(text))
    if not unknown:
        return text, Counter()
    skipped = Counter(ch for ch in text if ch in unknown)
    return "".join(ch for ch in text if ch not in unknown), skipped


def sequence_quantities(cell: CellKind, proj_tm, states, recurrent_kernel, extras=None):
    """`cell`'s step over time from the input projections, keeping everything it computes.

    proj_tm: (time, batch, blocks*units) = x.W + b; states: the layer's initial states;
    recurrent_kernel: (units, blocks*units); extras: the layer's extra weights
    (`cell.extras(layer)`: the peepholes), if its cell has any. Returns ({quantity: (time, batch, units)} for
    `cell.quantities`, the final states). The LSTM's numbers are the fused path's forward loop's
    (tests/test_trace.py checks them against `textgen.recurrent.fused_lstm_sequence`).
    """
    steps = tf.shape(proj_tm)[0]
    stored = [tf.TensorArray(proj_tm.dtype, size=steps) for _ in cell.quantities]

    def body(t, states, stored):
        states, gates = cell.step(proj_tm[t], states, tf.matmul(cell.output(states), recurrent_kernel),
                                  with_gates=True, extras=extras)
        values = {**gates, **dict(zip(cell.state_names, states))}
        return t + 1, states, [ta.write(t, values[name]) for ta, name in zip(stored, cell.quantities)]

    _, states, stored = tf.while_loop(lambda t, *_: t < steps, body, (tf.constant(0), tuple(states), stored))
    return {name: ta.stack() for name, ta in zip(cell.quantities, stored)}, states


def unit_weights(model) -> list[dict]:
    """Per layer {extra weight: (rows, units) nested lists}: the cell's per-unit weights beside
    its kernels (`CellKind.extra_weights`, rows named by `extra_rows`: the peepholes w_ci, w_cf,
    w_co; the GRU's b_h by gate), rounded to 4 decimals for pages. Empty dicts for the LSTM."""
    kind, units = model.cell_kind, model.config.units
    return [{name: np.round(np.reshape(np.asarray(value, np.float32), (-1, units)), 4).tolist()
             for name, value in kind.extras(layer.cell).items()} for layer in model.lstm_layers]


def run_layers(model, ids_tm, states):
    """The model's layers over ids_tm (time, batch) from `states`, keeping everything.

    Returns (per layer {quantity: (time, batch, units)} for `model.cell_kind.quantities`, in the
    model's compute dtype, the new states, the last layer's output (time, batch, units)).
    """
    dtype, kind = model.compute_dtype, model.cell_kind
    proj = tf.gather(model.step_weights(fold=True)["table"], ids_tm)  # (time, batch, blocks*units)
    per_layer, new_states = [], []
    for depth, (layer, state) in enumerate(zip(model.lstm_layers, states)):
        cell = layer.cell
        if depth:
            x = per_layer[-1][kind.output_state]  # (time, batch, units) of the layer below
            # as LSTMLayer.call projects: one matmul for all steps, then bias_add
            proj = tf.nn.bias_add(tf.matmul(tf.reshape(x, (-1, tf.shape(x)[-1])),
                                            tf.cast(cell.kernel, dtype)), tf.cast(kind.input_bias(cell), dtype))
            proj = tf.reshape(proj, tf.concat([tf.shape(x)[:2], [-1]], axis=0))
        quantities, state = sequence_quantities(kind, proj, state, tf.cast(cell.recurrent_kernel, dtype),
                                                kind.extras(cell, dtype))
        per_layer.append(quantities)
        new_states.append(state)
    return per_layer, new_states, per_layer[-1][kind.output_state]


def _functions(model) -> dict:
    """The model's compiled trace functions (made once per model)."""
    if model not in _COMPILED:
        model_ref = weakref.ref(model)  # the cache must not keep the model alive

        def window(ids, next_ids, flat, k):
            model = model_ref()
            per_layer, states, top = run_layers(model, ids[:, None], unflatten_state(flat, model.cell_kind))
            logits = model.logits(top[:, 0])  # (time, vocab)
            log_probs = tf.nn.log_softmax(logits)
            top_log_probs, top_ids = tf.math.top_k(log_probs, k)  # (time, k)
            picked = tf.gather(log_probs, tf.maximum(next_ids, 0), batch_dims=1)  # (time,)
            surprisal = tf.where(next_ids >= 0, -picked / LN2, np.nan)
            values = [[tf.cast(q[name][:, 0], tf.float32) for name in model.cell_kind.quantities]
                      for q in per_layer]
            return flatten_state(states), values, top_ids, tf.exp(top_log_probs), surprisal

        def batch(ids, flat):
            model = model_ref()
            per_layer, _, _ = run_layers(model, tf.transpose(ids), unflatten_state(flat, model.cell_kind))
            return [{name: tf.transpose(tf.cast(q[name], tf.float32), [1, 0, 2])
                     for name in model.cell_kind.quantities} for q in per_layer]

        # XLA fuses each step's small ops, as in the sampler: on this 2-core CPU a 2 x 256
        # model traced 20,000 characters 1.4 to 3 times faster than the same graph without it
        _COMPILED[model] = {"window": tf.function(window, jit_compile=True),
                            "batch": tf.function(batch, reduce_retracing=True)}
    return _COMPILED[model]


def trace_text(model, vocab, text: str, top_k: int = VizConfig.top_k,
               window: int = VizConfig.window) -> Trace:
    """Run `text` through `model` one character at a time and record everything.

    Characters `vocab` lacks are removed and counted in `Trace.skipped`. The text runs in
    windows of `window` characters (the last one padded), the state carried across them.
    Raises TextgenError when no character of the text is in the vocabulary.
    """
    if top_k < 1 or window < 1:
        raise TextgenError(f"top_k and window must be at least 1, got {top_k} and {window}")
    chars, skipped = known_text(vocab, text)
    if not chars:
        what = f" (all {sum(skipped.values()):,} characters are outside its vocabulary)" if skipped else ""
        raise TextgenError(f"nothing to trace: the text is empty{what}; give text the model was trained on")
    ids = vocab.encode(chars).astype(np.int32)  # (time,)
    steps, width, k = len(ids), min(window, len(ids)), min(top_k, vocab.size)
    units, depth, quantities = model.config.units, len(model.lstm_layers), model.cell_kind.quantities
    needed = steps * units * depth * len(quantities) * 4
    if needed > MAX_TRACE_BYTES:
        most = MAX_TRACE_BYTES * steps // needed
        raise TextgenError(f"tracing {steps:,} characters of this model needs {needed / 2**30:.1f} GiB; "
                           f"trace at most {most:,} characters at a time (--max-chars)")
    layers = [{name: np.empty((steps, units), np.float32) for name in quantities} for _ in range(depth)]
    top_ids, top_probs = np.empty((steps, k), np.int32), np.empty((steps, k), np.float32)
    surprisal = np.empty(steps, np.float32)
    run = _functions(model)["window"]
    flat = flatten_state(model.initial_state(1))
    for start in range(0, steps, width):
        end = min(start + width, steps)
        inputs = np.zeros(width, np.int32)
        inputs[: end - start] = ids[start:end]
        following = np.full(width, -1, np.int32)  # the next character, -1 where there is none
        following[: len(ids[start + 1: end + 1])] = ids[start + 1: end + 1]
        flat, values, top, probs, bits = run(tf.constant(inputs), tf.constant(following), flat, k)
        n = end - start
        for layer, layer_values in zip(layers, values):
            for name, value in zip(quantities, layer_values):
                layer[name][start:end] = value.numpy()[:n]
        top_ids[start:end], top_probs[start:end] = top.numpy()[:n], probs.numpy()[:n]
        surprisal[start:end] = bits.numpy()[:n]
    return Trace(chars, ids, layers, top_ids, top_probs, surprisal, list(vocab.chars), skipped,
                 model.cell_kind)


def gate_batch(model, ids, states=None) -> list[dict[str, tf.Tensor]]:
    """Gates, C and h of every step for a batch of windows, per layer, for summaries.

    ids: (batch, time) int; states: the model's states per layer (default zeros).
    Returns per layer {quantity: (batch, time, units) float32} for `model.cell_kind.quantities`.
    """
    ids = tf.convert_to_tensor(ids, tf.int32)
    states = states if states is not None else model.initial_state(tf.shape(ids)[0])
    return _functions(model)["batch"](ids, flatten_state(states))


def saturation(gates: dict, cell: CellKind, low: float = 0.1,
               high: float = 0.9) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per unit, the fraction of values below `low` and above `high` of each sigmoid gate.

    gates: {"i", "f", "o", ...} arrays or tensors (..., units), e.g. one layer of a Trace or of
    `gate_batch`; cell: the model's cell kind (its `sigmoid_gates` are measured). Returns
    {gate: (left (units,), right (units,))} for the gates present (Karpathy et al. 2015, Fig. 3:
    a left-saturated forget gate forgets nearly at every step).
    """
    result = {}
    for name in cell.sigmoid_gates:
        if name in gates:
            values = np.asarray(gates[name])
            values = values.reshape(-1, values.shape[-1])  # (steps, units)
            result[name] = ((values < low).mean(axis=0), (values > high).mean(axis=0))
    return result


def write_gate_summaries(per_layer: list[dict], step: int, cell: CellKind, prefix: str = "gates",
                         histogram_values: int = 1 << 16) -> None:
    """Histograms of every quantity of `cell` but its output state (for the LSTM i, f, C~, o and
    C), and the fractions of saturated gates, per layer, to the
    default `tf.summary` writer (call it inside `writer.as_default()`), e.g. with `gate_batch`'s
    result on validation windows. Tags: `<prefix>/layer_<n>/<quantity>` and
    `<prefix>/layer_<n>/<gate>_below_0.1` / `_above_0.9`. A histogram takes every k-th value, at
    most `histogram_values` (TensorFlow's takes ~0.3 s per million values on a CPU core); the
    saturation fractions count them all.
    """
    for depth, quantities in enumerate(per_layer):
        tag = f"{prefix}/layer_{depth}"
        for name in cell.quantities:
            if name == cell.output_state:
                continue
            values = tf.reshape(quantities[name], [-1])
            stride = -(-int(tf.size(values)) // histogram_values)  # ceil
            label = cell.quantity_names[name].replace(" ", "_")
            tf.summary.histogram(f"{tag}/{label}", values[::stride], step=step)
        for gate, (left, right) in saturation(quantities, cell).items():
            label = cell.quantity_names[gate].replace(" ", "_")
            tf.summary.scalar(f"{tag}/{label}_below_0.1", float(left.mean()), step=step)
            tf.summary.scalar(f"{tag}/{label}_above_0.9", float(right.mean()), step=step)
