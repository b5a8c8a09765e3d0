"""The exported model as a plain `tf.Module`: `step` and `generate`, functions of its own weights.

The SavedModel export saves this module and the LiteRT export converts its `step`. It holds the
weights in the form textgen's sampler steps with (`CharLSTM.step_weights`: the first layer's
(vocab, 4*units) lookup table, or for a large vocabulary the embedding and the first layer's
kernel and bias apart, whichever is smaller; each later layer's stacked [W; U] kernel; the output
layer) as tf.Variables, and its functions are traced from textgen's own step (`textgen.model.step_layers`)
and sampling rule (`textgen.sample.choose_next`), so an export computes what `textgen sample`
computes. Loading it needs TensorFlow alone: no textgen, no Keras objects.
"""

from __future__ import annotations

import tensorflow as tf

from textgen.config import SEED_LIMIT
from textgen.draws import draw_keys
from textgen.export.docs import state_names
from textgen.head import two_level_log_probs
from textgen.cell import config_cell
from textgen.model import flatten_state, step_layers, unflatten_state
from textgen.sample import apply_ban, ban_row, choose_next



class StepModule(tf.Module):
    """A trained `CharLSTM`'s inference functions, with nothing but TensorFlow ops inside.

    Args:
        model: a built float32 `CharLSTM` (its weights are copied).
        with_generate: whether to have `generate` too (a LiteRT conversion needs `step` alone).
        banned: ids `generate` never writes (`textgen.sample.banned_ids` of the run's vocabulary),
            baked into its graph as a constant; `step` returns the model's logits as they are.

    Call arguments of `step` (the SavedModel's `step` signature):
        ids: (batch,) int32 character ids; the states, named by `textgen.export.docs.state_names`
        (h0, c0, h1, c1, ... for the LSTM): (batch, units) float32 each (zeros to start).
        Returns {"logits": (batch, vocab), "new_h0": ..., "new_c0": ..., ...}.

    Call arguments of `generate` (the `generate` signature):
        prime: (n,) int32, n >= 1 (all but the last warm the state up; the last is the first
        input); length: int32 characters to generate; temperature: float32 (0: greedy);
        top_k: int32 (0: off); top_p: float32 (1: off); seed: int64 (`textgen sample --seed`).
        Returns {"ids": (length,) int32}.

    Example:

        module = StepModule(load_run("my-run", "checkpoints").model)
        tf.saved_model.save(module, "out", signatures=module.signatures())
    """

    def __init__(self, model, with_generate: bool = True, banned: tuple[int, ...] = ()):
        super().__init__(name="textgen_export")
        self.banned = tuple(banned)
        config = model.config
        self.num_layers, self.units, self.vocab_size = config.num_layers, config.units, config.vocab_size
        self.cell = config_cell(config)
        weights = model.step_weights()
        # the first layer's input: "table", or "embedding", "kernel", "bias" (`CharLSTM.step_weights`)
        self.first = {name: tf.Variable(weights[name], trainable=False, name=name)
                      for name in ("table", "embedding", "kernel", "bias") if name in weights}
        self.recurrent = tf.Variable(weights["recurrent"], trainable=False, name="recurrent")
        self.stacked = [(tf.Variable(kernel, trainable=False, name=f"kernel{i + 1}"),
                         tf.Variable(bias, trainable=False, name=f"bias{i + 1}"))
                        for i, (kernel, bias) in enumerate(weights["stacked"])]
        # a cell's extra weights per layer (the peepholes), for cells that have them
        self.extras = [{name: tf.Variable(w, trainable=False, name=f"{name}{i}") for name, w in layer.items()}
                       for i, layer in enumerate(weights.get("extras", []))]
        # kernel, bias (+ tail_kernel, tail_bias, ranks for a two-level head): textgen.head
        self.output_weights = {name: tf.Variable(w, trainable=False, name=f"head_{name}")
                               for name, w in model.output_weights().items()}
        state_spec = [tf.TensorSpec((None, self.units), tf.float32, name=n)
                      for n in state_names(self.num_layers, self.cell)]
        self.step = tf.function(self._step, input_signature=[
            tf.TensorSpec((None,), tf.int32, name="ids"), *state_spec])
        if not with_generate:
            return
        self.generate = tf.function(self._generate, input_signature=[
            tf.TensorSpec((None,), tf.int32, name="prime"), tf.TensorSpec((), tf.int32, name="length"),
            tf.TensorSpec((), tf.float32, name="temperature"), tf.TensorSpec((), tf.int32, name="top_k"),
            tf.TensorSpec((), tf.float32, name="top_p"), tf.TensorSpec((), tf.int64, name="seed")])

    def signatures(self) -> dict:
        """The SavedModel signatures: {"step": ..., "generate": ...} (the ones it has)."""
        functions = {"step": self.step, "generate": getattr(self, "generate", None)}
        return {name: f.get_concrete_function() for name, f in functions.items() if f is not None}

    def _logits_and_states(self, ids, flat_states):
        """One step: ids (batch,) and [h0, c0, ...] -> (logits (batch, vocab), new [h0, c0, ...])."""
        weights = {**self.first, "recurrent": self.recurrent, "stacked": self.stacked,
                   **({"extras": list(self.extras)} if self.extras else {})}
        states = unflatten_state(flat_states, self.cell)
        x, states = step_layers(weights, ids, states, self.cell)  # x: (batch, units)
        head = self.output_weights
        logits = tf.matmul(x, head["kernel"]) + head["bias"]  # (batch, vocab), or the head's N + 1
        if "tail_kernel" in head:  # a two-level head: every character's log-probability
            logits = two_level_log_probs(logits, tf.matmul(x, head["tail_kernel"]) + head["tail_bias"],
                                         head["ranks"])
        return logits, flatten_state(states)

    def _step(self, ids, *flat_states):
        logits, new_flat = self._logits_and_states(ids, list(flat_states))
        names = state_names(self.num_layers, self.cell)
        return {"logits": logits, **{f"new_{n}": t for n, t in zip(names, new_flat)}}

    def _generate(self, prime, length, temperature, top_k, top_p, seed):
        checks = [
            tf.debugging.assert_positive(tf.size(prime), message="prime must hold at least one id"),
            tf.debugging.assert_non_negative(prime, message="prime ids must be 0 or more"),
            tf.debugging.assert_less(prime, self.vocab_size, message="prime ids must be below vocab size"),
            tf.debugging.assert_non_negative(length, message="length must be 0 or more"),
            tf.debugging.assert_non_negative(temperature, message="temperature must be 0 or more"),
            tf.debugging.assert_non_negative(top_k, message="top_k must be 0 (off) or more"),
            tf.debugging.assert_positive(top_p, message="top_p must be in (0, 1]"),
            tf.debugging.assert_less_equal(top_p, 1.0, message="top_p must be in (0, 1]"),
        ]
        with tf.control_dependencies(checks):  # nothing reads the prime before the checks pass
            prime = tf.identity(prime)
            flat = flatten_state([self.cell.zero_state(1, self.units)] * self.num_layers)  # (1, units) each

        def warm(i, flat):  # the prime, all but its last id, one step at a time
            return i + 1, self._logits_and_states(tf.reshape(prime[i], (1,)), flat)[1]

        _, flat = tf.while_loop(lambda i, _: i < tf.size(prime) - 1, warm, (tf.constant(0), flat))
        # the seeds `textgen sample` accepts (0 .. SEED_LIMIT - 1) key it as they are; any other is
        # reduced into that range, as exports already in users' hands do. One row: choice 0.
        keys = draw_keys(tf.math.floormod(seed, SEED_LIMIT), tf.zeros((1,), tf.int32))  # (1, 2)
        ban = ban_row(self.vocab_size, self.banned)  # (vocab,) or None: a constant of the graph

        def body(t, last, flat, out):  # as textgen.sample.Sampler: drawn at (key, position t)
            logits, flat = self._logits_and_states(last, flat)  # (1, vocab)
            nxt = choose_next(apply_ban(logits, ban), temperature, top_k, top_p, keys, t)  # (1,)
            return t + 1, nxt, flat, out.write(t, nxt[0])

        out = tf.TensorArray(tf.int32, size=length, element_shape=())
        _, _, _, out = tf.while_loop(lambda t, *_: t < length, body,
                                     (tf.constant(0), tf.reshape(prime[-1], (1,)), flat, out))
        return {"ids": out.stack()}  # (length,)


def save_savedmodel(model, directory, with_generate: bool = True, banned: tuple[int, ...] = ()) -> None:
    """Write `model` (a built CharLSTM) as a SavedModel with `step` and `generate` signatures
    (`step` alone without `with_generate`); `generate` never writes the `banned` ids."""
    module = StepModule(model, with_generate, banned)
    tf.saved_model.save(module, str(directory), signatures=module.signatures())


def convert_litert(saved_model_dir, quantize: str = "none") -> bytes:
    """The `step` signature of a SavedModel written by `save_savedmodel`, as a LiteRT flatbuffer.

    Converted by TensorFlow's own converter (`tf.lite.TFLiteConverter`), which keeps the `step`
    signature and its input and output names. `quantize="dynamic"` stores the weights as int8
    with float32 activations (dynamic-range quantization).
    """
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=["step"])
    if quantize == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()
