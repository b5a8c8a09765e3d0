"""Per-character traces of the LSTM: every gate, cell state and hidden state the model computes.

The trace runs the model's own code, not a copy of its equations: the first layer's input
projections come from the (vocab, 4*units) table that the model's fused path and the sampler
gather from (`CharLSTM.step_weights`), each later layer's from its own x.W + b, and the
recurrence is `textgen.recurrent.lstm_sequence_gates`, the fused path's forward loop, which
keeps i, f, C~, o, C and h of every step. Long texts run in windows with the state carried
from one to the next, each window one XLA-compiled call, so memory beyond the result is constant.

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

from textgen.config import LN2, VizConfig
from textgen.errors import TextgenError
from textgen.model import flatten_state, unflatten_state
from textgen.recurrent import lstm_sequence_gates

QUANTITIES = ("i", "f", "g", "o", "c", "h")  # input gate, forget gate, candidate C~, output gate, C, h
NAMES = {"i": "input gate", "f": "forget gate", "g": "candidate", "o": "output gate",
         "c": "cell", "h": "hidden"}
GATES = ("i", "f", "o")  # the sigmoid gates, whose saturation is measured
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

    def __len__(self) -> int:
        return len(self.chars)


def known_text(vocab, text: str) -> tuple[str, Counter]:
    """`text` without the characters `vocab` lacks, and a Counter of those removed."""
    unknown = set(vocab.unknown_chars(text))
    if not unknown:
        return text, Counter()
    skipped = Counter(ch for ch in text if ch in unknown)
    return "".join(ch for ch in text if ch not in unknown), skipped


def run_layers(model, ids_tm, states):
    """The model's layers over ids_tm (time, batch) from `states`, keeping everything.

    Returns (per layer {"i", "f", "g", "o", "c", "h"}: (time, batch, units) in the model's
    compute dtype, the new states, the last layer's h (time, batch, units)).
    """
    dtype = model.compute_dtype
    proj = tf.gather(model.step_weights()["table"], ids_tm)  # (time, batch, 4*units)
    per_layer, new_states = [], []
    for depth, (layer, (h0, c0)) in enumerate(zip(model.lstm_layers, states)):
        cell = layer.cell
        if depth:
            x = per_layer[-1]["h"]  # (time, batch, units) of the layer below
            # as LSTMLayer.call projects: one matmul for all steps, then bias_add
            proj = tf.nn.bias_add(tf.matmul(tf.reshape(x, (-1, tf.shape(x)[-1])),
                                            tf.cast(cell.kernel, dtype)), tf.cast(cell.bias, dtype))
            proj = tf.reshape(proj, tf.concat([tf.shape(x)[:2], [-1]], axis=0))
        quantities, h, c = lstm_sequence_gates(proj, h0, c0, tf.cast(cell.recurrent_kernel, dtype))
        per_layer.append(quantities)
        new_states.append((h, c))
    return per_layer, new_states, per_layer[-1]["h"]


def _functions(model) -> dict:
    """The model's compiled trace functions (made once per model)."""
    if model not in _COMPILED:
        model_ref = weakref.ref(model)  # the cache must not keep the model alive

        def window(ids, next_ids, flat, k):
            model = model_ref()
            per_layer, states, top = run_layers(model, ids[:, None], unflatten_state(flat))
            logits = model.logits(top[:, 0])  # (time, vocab)
            log_probs = tf.nn.log_softmax(logits)
            top_log_probs, top_ids = tf.math.top_k(log_probs, k)  # (time, k)
            picked = tf.gather(log_probs, tf.maximum(next_ids, 0), batch_dims=1)  # (time,)
            surprisal = tf.where(next_ids >= 0, -picked / LN2, np.nan)
            values = [[tf.cast(q[name][:, 0], tf.float32) for name in QUANTITIES] for q in per_layer]
            return flatten_state(states), values, top_ids, tf.exp(top_log_probs), surprisal

        def batch(ids, flat):
            per_layer, _, _ = run_layers(model_ref(), tf.transpose(ids), unflatten_state(flat))
            return [{name: tf.transpose(tf.cast(q[name], tf.float32), [1, 0, 2]) for name in QUANTITIES}
                    for q in per_layer]

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
    units, depth = model.config.units, len(model.lstm_layers)
    needed = steps * units * depth * len(QUANTITIES) * 4
    if needed > MAX_TRACE_BYTES:
        most = MAX_TRACE_BYTES * steps // needed
        raise TextgenError(f"tracing {steps:,} characters of this model needs {needed / 2**30:.1f} GiB; "
                           f"trace at most {most:,} characters at a time (--max-chars)")
    layers = [{name: np.empty((steps, units), np.float32) for name in QUANTITIES} for _ in range(depth)]
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
            for name, value in zip(QUANTITIES, layer_values):
                layer[name][start:end] = value.numpy()[:n]
        top_ids[start:end], top_probs[start:end] = top.numpy()[:n], probs.numpy()[:n]
        surprisal[start:end] = bits.numpy()[:n]
    return Trace(chars, ids, layers, top_ids, top_probs, surprisal, list(vocab.chars), skipped)


def gate_batch(model, ids, states=None) -> list[dict[str, tf.Tensor]]:
    """Gates, C and h of every step for a batch of windows, per layer, for summaries.

    ids: (batch, time) int; states: the model's [(h, C)] per layer (default zeros).
    Returns per layer {"i", "f", "g", "o", "c", "h"}: (batch, time, units) float32.
    """
    ids = tf.convert_to_tensor(ids, tf.int32)
    states = states if states is not None else model.initial_state(tf.shape(ids)[0])
    return _functions(model)["batch"](ids, flatten_state(states))


def saturation(gates: dict, low: float = 0.1, high: float = 0.9) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per unit, the fraction of values below `low` and above `high` of each sigmoid gate.

    gates: {"i", "f", "o", ...} arrays or tensors (..., units), e.g. one layer of a Trace or of
    `gate_batch`. Returns {gate: (left (units,), right (units,))} for the gates present
    (Karpathy et al. 2015, Fig. 3: a left-saturated forget gate forgets nearly at every step).
    """
    result = {}
    for name in GATES:
        if name in gates:
            values = np.asarray(gates[name])
            values = values.reshape(-1, values.shape[-1])  # (steps, units)
            result[name] = ((values < low).mean(axis=0), (values > high).mean(axis=0))
    return result


def write_gate_summaries(per_layer: list[dict], step: int, prefix: str = "gates",
                         histogram_values: int = 1 << 16) -> None:
    """Histograms of i, f, C~, o and C, and the fractions of saturated gates, per layer, to the
    default `tf.summary` writer (call it inside `writer.as_default()`), e.g. with `gate_batch`'s
    result on validation windows. Tags: `<prefix>/layer_<n>/<quantity>` and
    `<prefix>/layer_<n>/<gate>_below_0.1` / `_above_0.9`. A histogram takes every k-th value, at
    most `histogram_values` (TensorFlow's takes ~0.3 s per million values on a CPU core); the
    saturation fractions count them all.
    """
    for depth, quantities in enumerate(per_layer):
        tag = f"{prefix}/layer_{depth}"
        for name in ("i", "f", "g", "o", "c"):
            values = tf.reshape(quantities[name], [-1])
            stride = -(-int(tf.size(values)) // histogram_values)  # ceil
            tf.summary.histogram(f"{tag}/{NAMES[name].replace(' ', '_')}", values[::stride], step=step)
        for gate, (left, right) in saturation(quantities).items():
            label = NAMES[gate].replace(" ", "_")
            tf.summary.scalar(f"{tag}/{label}_below_0.1", float(left.mean()), step=step)
            tf.summary.scalar(f"{tag}/{label}_above_0.9", float(right.mean()), step=step)
