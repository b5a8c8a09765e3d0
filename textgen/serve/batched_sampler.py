"""Generation for rows that each carry their own settings: the compiled loop `textgen serve` batches.

`RowLoop` runs one chunk of characters for a batch of rows in one XLA-compiled `tf.while_loop`,
like `textgen.sample.Sampler`, except that every row has its own temperature, top-k, top-p, seed
and position, and may still be reading its prompt: at the steps where a row has prompt characters
left, its next input is the prompt's character instead of a sampled one (and that character's
log-probability is recorded, which scores the prompt).

Every random draw of a row depends only on its key and its position in its own generated text
(`textgen.draws`, the draw of `textgen sample` too), never on the other rows of the batch, so a
fixed seed gives the same text whether the row ran alone or among others, and choice i of a seed
is `textgen sample`'s sample i for that seed.
"""

from __future__ import annotations

import functools
import threading
from typing import NamedTuple

import tensorflow as tf

from textgen.model import flatten_state, unflatten_state
from textgen.parallel import concat_rows, parallel_parts, row_split_sizes, split_rows
from textgen.config import seed_or_random
from textgen.draws import draw_keys
from textgen.sample import apply_ban, ban_row, choose_next

TOP_LOGPROBS = 5  # most alternatives a row can ask for per character (OpenAI's limit too)


def row_key(seed: int | None, index: int) -> tuple[int, int]:
    """The two 32-bit words of a row's key (`textgen.draws.draw_keys`), from a request's seed and
    the choice's index: choice i of seed S draws what `textgen sample --seed S` draws for its
    sample i. The seed is one `textgen.config.check_seed` accepts; None draws one."""
    word0, word1 = draw_keys(tf.constant(seed_or_random(seed), tf.int64), tf.constant(index)).numpy()
    return int(word0), int(word1)


class RowInputs(NamedTuple):
    """One chunk's per-row inputs to `RowLoop` (numpy arrays or tensors, `rows` entries each)."""

    last: object  # (rows,) int32: the next input id
    forced: object  # (rows, chunk) int32: prompt ids that replace the sampled ones ...
    forced_len: object  # (rows,) int32: ... at the steps t < forced_len
    position: object  # (rows,) int32: the row's generated characters so far (its draw counter;
    # below 0 while it reads its prompt: the prompt's length - 1 fewer than its steps)
    temperature: object  # (rows,) float32; 0 is greedy
    top_k: object  # (rows,) int32; 0 is off
    top_p: object  # (rows,) float32; 1 is off
    keys: object  # (rows, 2) uint32: `row_key`


class RowLoop:
    """The compiled chunk loop over rows that each carry their own settings.

    Args:
        model: a built `CharLSTM`; its weights are read once, here.
        chunk: steps per graph call.
        jit_compile: compile each row group's loop with XLA (as `textgen.sample.Sampler` does).
        banned: ids never generated (`textgen.sample.banned_ids` of the model's vocabulary): a
            prompt may still hold them, and is scored as it is.

    Call arguments (`run`):
        rows: `RowInputs`, one entry per row (see there).
        flat_states: the flattened states per layer (`model.cell_kind.state_names`), (rows, units) each.
        want_top: scalar bool, whether to compute each step's top alternatives.

    Returns:
        (ids (rows, chunk), logprobs (rows, chunk): the natural-log probability of each id under
        the model's own distribution (temperature 1, no filter), top_ids and top_logprobs
        (rows, chunk, `self.top`), never a banned id, zeros unless want_top, new flat states).

    Example:
        >>> loop = RowLoop(model, chunk=64)
        >>> ids, logprobs, top_ids, top_logprobs, flat = loop.run(rows, flat, tf.constant(False))
    """

    def __init__(self, model, chunk: int, jit_compile: bool = True, banned: tuple[int, ...] = ()):
        self.model, self.chunk = model, chunk
        self.ban = ban_row(model.config.vocab_size, banned)  # (vocab,) or None: `apply_ban`
        # The step weights, rearranged once: a server's weights never change, so no chunk pays
        # for the (vocab, 4*units) table and the stacked kernels again.
        self.weights = model.step_weights()
        # alternatives a vocabulary can give (a banned id is never one)
        self.top = min(TOP_LOGPROBS, model.config.vocab_size - len(banned))
        self.jit_compile = jit_compile
        self._functions: dict[tuple, object] = {}  # one traced function per kind and row count
        self._lock = threading.Lock()

    def run(self, rows: RowInputs, flat_states, want_top):
        """One chunk for every row. Rows run as `parallel_parts` loops side by side (one per core
        when each gets >= 16 rows); no row's numbers depend on how they are grouped."""
        count = int(rows.last.shape[0])
        kind = "groups" if parallel_parts(count) > 1 else "group"
        return self._function(kind, count)(tuple(rows), list(flat_states), want_top)

    def _function(self, kind: str, count: int):
        """The compiled loop for `count` rows ("group"), or the graph running its row groups side
        by side ("groups"). One tf.function per row count: each is traced once, and TensorFlow
        does not warn about retracing a function for every batch size."""
        with self._lock:
            if (kind, count) not in self._functions:
                # a new callable per row count: TensorFlow's retracing warning counts traces per callable
                body = functools.partial(self._group_loop if kind == "group" else self._run_groups)
                self._functions[kind, count] = tf.function(
                    body, jit_compile=self.jit_compile if kind == "group" else None)
            return self._functions[kind, count]

    def _run_groups(self, rows, flat_states, want_top):
        count = len(rows)
        sizes = row_split_sizes(rows[0].shape[0], parallel_parts(rows[0].shape[0]))
        outputs = [self._function("group", size)(tuple(group[:count]), group[count:], want_top)
                   for size, group in zip(sizes, split_rows([*rows, *flat_states], sizes))]
        *results, flats = zip(*outputs)
        return (*(tf.concat(list(parts), axis=0) for parts in results), concat_rows(list(flats)))

    def _group_loop(self, rows, flat_states, want_top):
        last, forced, forced_len, position, temperature, top_k, top_p, keys = rows
        count = tf.shape(last)[0]
        weights = self.weights
        no_top = (tf.zeros((count, self.top)), tf.zeros((count, self.top), tf.int32))

        def body(t, last, flat, ids, logprobs, top_ids, top_logprobs):
            states = unflatten_state(flat, self.model.cell_kind)
            logits, states = self.model.step(last, states, weights)  # (rows, vocab)
            sampled = choose_next(apply_ban(logits, self.ban), temperature, top_k, top_p, keys,
                                  position + t)
            nxt = tf.where(t < forced_len, tf.gather(forced, t, axis=1), sampled)  # (rows,)
            # the ban chooses characters only: a prompt's characters are scored as they are
            log_probs = tf.nn.log_softmax(logits)  # (rows, vocab)
            chosen = tf.gather(log_probs, nxt[:, None], batch_dims=1)[:, 0]  # (rows,)
            # The alternatives are characters the draw could choose, so never a banned one; their
            # values stay the model's own log-probabilities (not renormalised after the ban), on
            # the scale of `chosen`: a character listed among them has the logprob it has there.
            allowed = apply_ban(log_probs, self.ban)  # (rows, vocab)
            best, best_ids = tf.cond(want_top, lambda: tuple(tf.math.top_k(allowed, self.top)),
                                     lambda: no_top)
            return (t + 1, nxt, flatten_state(states), ids.write(t, nxt), logprobs.write(t, chosen),
                    top_ids.write(t, best_ids), top_logprobs.write(t, best))

        arrays = [tf.TensorArray(dtype, size=self.chunk)
                  for dtype in (tf.int32, tf.float32, tf.int32, tf.float32)]
        _, _, flat, *arrays = tf.while_loop(
            lambda t, *_: t < self.chunk, body, (tf.constant(0), last, list(flat_states), *arrays))
        ids, logprobs = (tf.transpose(a.stack()) for a in arrays[:2])  # (rows, chunk)
        top_ids, top_logprobs = (tf.transpose(a.stack(), [1, 0, 2]) for a in arrays[2:])  # (rows, chunk, top)
        return ids, logprobs, top_ids, top_logprobs, flat
