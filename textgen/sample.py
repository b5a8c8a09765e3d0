"""Sampling: temperature, top-k and top-p, with the whole generation loop in one compiled graph.

`filter_logits` and `choose_next` are pure functions of their inputs (the draw is keyed by seed,
row and position: `textgen.draws`), so the same seed always gives the same text. `Sampler.generate`
runs a `tf.while_loop` of `chunk` steps per graph call and yields each chunk, so text streams out
while it is being generated.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import tensorflow as tf

from textgen.config import SampleConfig, seed_or_random
from textgen.draws import draw_keys, inverse_cdf_draw
from textgen.model import flatten_state, unflatten_state
from textgen.parallel import concat_rows, row_split_sizes, split_rows
from textgen.vocab import Vocabulary, start_ids

CHUNK = 64  # characters generated per graph call before they are streamed out
ROWS_PER_GROUP = 32  # streams per compiled sampling loop; more run as several loops side by side


def filter_logits(logits, temperature, top_k, top_p):
    """Temperature-scale logits and mask (to -inf) what top-k / top-p exclude.

    logits: (batch, vocab) float32; temperature > 0; top_k 0 = off; top_p 1.0 = off. Each of
    temperature, top_k and top_p is a scalar (one setting for every row) or a (batch,) tensor
    (one per row, as `textgen serve` batches requests with different settings).
    """
    logits = logits / _per_row(temperature)
    # A real branch (also under XLA): with both filters off the sort is skipped, which is a
    # quarter of a step with 64 streams.
    return tf.cond(tf.reduce_any((top_k > 0) | (top_p < 1.0)),
                   lambda: _top_k_top_p(logits, top_k, top_p), lambda: logits)


def _per_row(value):
    """A scalar or (batch,) setting as a column that broadcasts against (batch, vocab)."""
    return tf.reshape(value, [-1, 1])  # (1, 1) or (batch, 1)


def _top_k_top_p(logits, top_k, top_p):
    """Mask (to -inf) the logits outside the top k and outside the top-p nucleus.

    One descending sort serves both filters (and keeps k a tensor, which XLA needs). top_k and
    top_p are scalars or (batch,).
    """
    vocab = tf.shape(logits)[-1]
    sorted_logits = tf.sort(logits, direction="DESCENDING")  # (batch, vocab)
    k = _per_row(tf.where(top_k > 0, tf.minimum(top_k, vocab), vocab))  # (1 or batch, 1)
    top_p = _per_row(top_p)
    # (batch, 1): smallest logit in the top k
    kth = tf.gather(sorted_logits, tf.broadcast_to(k - 1, tf.shape(logits[:, :1])), batch_dims=1)
    in_top_k = tf.range(vocab)[None, :] < k  # (1 or batch, vocab): sorted positions kept by top-k
    sorted_logits = tf.where(in_top_k, sorted_logits, -np.inf)
    probs = tf.nn.softmax(sorted_logits)
    before = tf.cumsum(probs, axis=-1, exclusive=True)  # mass of strictly more likely chars
    kept = tf.where(in_top_k & ((before < top_p) | (top_p >= 1.0)), sorted_logits, np.inf)
    threshold = tf.maximum(tf.reduce_min(kept, axis=-1, keepdims=True), kth)
    return tf.where(logits < threshold, -np.inf, logits)


def banned_ids(vocab: Vocabulary) -> tuple[int, ...]:
    """The ids never generated for `vocab`: its unknown symbol (U+FFFD, which stands for the rare
    characters a `--min-count` run folded together), if it has one. The one rule of `textgen
    sample`, `textgen serve` and the SavedModel export's `generate`."""
    return () if vocab.unknown_id is None else (vocab.unknown_id,)


def ban_row(vocab_size: int, banned: tuple[int, ...]) -> np.ndarray | None:
    """(vocab,) float32: 0, and -inf at the `banned` ids, to add to logits (`apply_ban`); None
    when nothing is banned (then no op is added to a graph)."""
    if not banned:
        return None
    row = np.zeros(vocab_size, np.float32)
    row[list(banned)] = -np.inf
    return row


def apply_ban(logits, ban):
    """logits (batch, vocab) with the banned ids at -inf (`ban`: `ban_row`'s row, or a constant of
    it; None: unchanged), so neither a draw nor the greedy argmax can choose them."""
    return logits if ban is None else logits + ban


def greedy_or_drawn(logits, temperature, top_k, top_p, draw):
    """Next ids (batch,) from logits (batch, vocab): greedy argmax where temperature == 0, else
    `draw(filtered)`, the ids drawn from the filtered, temperature-scaled logits (batch, vocab).
    The one greedy rule of `textgen sample`, its exports and `textgen serve`'s rows."""
    greedy = tf.argmax(logits, axis=-1, output_type=tf.int32)
    safe_temperature = tf.where(temperature > 0, temperature, 1.0)  # greedy rows draw, unused
    sampled = draw(filter_logits(logits, safe_temperature, top_k, top_p))
    return tf.where(temperature > 0, sampled, greedy)


def choose_next(logits, temperature, top_k, top_p, keys, positions):
    """Next ids (batch,) from logits (batch, vocab); greedy argmax where temperature == 0.

    keys: (batch, 2) uint32 (`textgen.draws.draw_keys`); positions: int32, (batch,) or a scalar:
    each row's position in its generated text. The one draw of `textgen sample`, the exports'
    `generate` and `textgen serve` (`textgen.draws.inverse_cdf_draw`).
    """
    return greedy_or_drawn(logits, temperature, top_k, top_p,
                           lambda filtered: inverse_cdf_draw(filtered, keys, positions))


class Sampler:
    """Compiled generation for one model: one graph call produces `chunk` characters.

    The loop runs the model's one-character step (`CharLSTM.step`, the same step the server and
    the exports run) and `choose_next` in a `tf.while_loop`, compiled with XLA; `generate`
    yields the ids chunk by chunk, so text can be written as it is made.

    Args:
        model: a built `CharLSTM`.
        chunk: characters per graph call (the states are carried from call to call).
        jit_compile: compile the loop with XLA (much faster on a CPU; False to debug).
        banned: ids never generated (`banned_ids` of the model's vocabulary).

    Example:

        loaded = load_run("my-run", "runs")                    # textgen.inference
        sampler = sampler_for(loaded.model, loaded.vocab)      # a Sampler that bans <unk>
        ids, _ = start_ids(loaded.vocab, "ROMEO:")
        for chunk in sampler.generate(ids, SampleConfig(length=200, seed=1)):
            print(loaded.vocab.decode(chunk[0]), end="")     # chunk: (num_samples, n) ids
    """

    def __init__(self, model, chunk: int = CHUNK, jit_compile: bool = True,
                 banned: tuple[int, ...] = ()):
        self.model, self.chunk = model, chunk
        self._ban = ban_row(model.config.vocab_size, banned)  # (vocab,) or None: `apply_ban`
        # XLA fuses each step's small element-wise ops (gates, filters) into a few kernels: the
        # loop is latency-bound, so this is most of the speed. `steps` is static for XLA.
        self._run_group = tf.function(self._run_eager, jit_compile=jit_compile)
        self._run = tf.function(self._run_groups)
        self._prime = tf.function(lambda ids, flat: self._prime_eager(ids, flat), reduce_retracing=True)

    def _prime_eager(self, ids, flat_states):
        _, states = self.model(ids, unflatten_state(flat_states, self.model.cell_kind))
        return flatten_state(states)

    def _run_groups(self, last, flat_states, steps, temperature, top_k, top_p, keys, offset):
        """Generate `steps` ids after `last` (batch,); returns (ids (batch, steps), new state).

        Streams run in groups of up to ROWS_PER_GROUP, each group its own compiled loop, and
        TensorFlow runs the loops side by side: a step's matmuls are too small to use a second
        core, a second loop does (64 streams on 2 cores: 1.4x). Each stream draws with its own
        key (`keys`, (batch, 2)), so the grouping never changes a text.
        """
        batch = last.shape[0]
        sizes = row_split_sizes(batch, -(-batch // ROWS_PER_GROUP))
        ids, new_flats = [], []
        for group_last, group_keys, *group_flat in split_rows([last, keys, *flat_states], sizes):
            group_ids, group_flat = self._run_group(
                group_last, group_flat, steps, temperature, top_k, top_p, group_keys, offset)
            ids.append(group_ids)
            new_flats.append(group_flat)
        return tf.concat(ids, axis=0), concat_rows(new_flats)

    def _run_eager(self, last, flat_states, steps, temperature, top_k, top_p, keys, offset):
        """One group's compiled loop: `steps` ids after `last` (rows,), the one at step t drawn
        with the rows' keys (rows, 2) at position offset + t; returns (ids (rows, steps), new state)."""
        batch = tf.shape(last)[0]
        out = tf.TensorArray(tf.int32, size=steps)
        weights = self.model.step_weights()  # once per chunk, outside the loop

        def body(t, last, flat, out):
            states = unflatten_state(flat, self.model.cell_kind)
            logits, states = self.model.step(last, states, weights)  # (batch, vocab)
            nxt = choose_next(apply_ban(logits, self._ban), temperature, top_k, top_p, keys, offset + t)
            return t + 1, nxt, flatten_state(states), out.write(t, nxt)

        _, last, flat, out = tf.while_loop(
            lambda t, *_: t < steps, body, (tf.constant(0), last, list(flat_states), out)
        )
        ids = tf.reshape(tf.transpose(out.stack()), (batch, steps))  # (batch, steps)
        return ids, flat

    def generate(self, prime_ids: np.ndarray, config: SampleConfig) -> Iterator[np.ndarray]:
        """Yield chunks of generated ids, (num_samples, n) each, `config.length` in all.

        prime_ids: (prime_len,) with prime_len >= 1; all but the last warm up the state and the
        last one is the first input.
        """
        batch = config.num_samples
        keys = draw_keys(seed_or_random(config.seed), tf.range(batch))  # (batch, 2): row i is choice i
        flat = flatten_state(self.model.initial_state(batch))
        primed = np.tile(np.asarray(prime_ids, np.int32)[None, :], (batch, 1))  # (batch, prime)
        if primed.shape[1] > 1:
            flat = self._prime(tf.constant(primed[:, :-1]), flat)
        last = tf.constant(primed[:, -1])
        # one group: the compiled loop itself (a graph around it costs ~3 ms per call)
        run = self._run_group if batch <= ROWS_PER_GROUP else self._run
        done = 0
        while done < config.length:
            # Always a full chunk (one compiled shape); the last one is cut to length.
            ids, flat = run(
                last, flat, self.chunk, tf.constant(config.temperature, tf.float32),
                tf.constant(config.top_k), tf.constant(config.top_p, tf.float32),
                keys, tf.constant(done),
            )
            ids = ids.numpy()[:, : config.length - done]  # (batch, n)
            last = tf.constant(ids[:, -1])
            done += ids.shape[1]
            yield ids


def generate_text(model, vocab: Vocabulary, config: SampleConfig,
                  write: Callable[[int, str], None] | None = None,
                  sampler: Sampler | None = None) -> list[str]:
    """Generate `config.num_samples` texts; `write(sample_index, text)` is called per chunk."""
    pieces: list[list[str]] = [[] for _ in range(config.num_samples)]

    def keep(index: int, piece: str) -> None:
        pieces[index].append(piece)  # joined once at the end: linear, however long the text
        if write:
            write(index, piece)

    stream_text(model, vocab, config, keep, sampler)
    return ["".join(p) for p in pieces]


def stream_text(model, vocab: Vocabulary, config: SampleConfig, write: Callable[[int, str], None],
                sampler: Sampler | None = None) -> None:
    """Generate `config.num_samples` texts, handing each piece to `write(sample_index, text)` as
    soon as it exists (the prime first, if there is one), keeping none of it."""
    ids, echo = start_ids(vocab, config.prime)
    if echo:
        for i in range(config.num_samples):
            write(i, config.prime)
    sampler = sampler or sampler_for(model, vocab)
    for chunk in sampler.generate(ids, config):
        for i, row in enumerate(chunk):
            write(i, vocab.decode(row))


def sampler_for(model, vocab: Vocabulary) -> Sampler:
    """A Sampler for `model` that never generates `vocab`'s unknown symbol, if it has one."""
    return Sampler(model, banned=banned_ids(vocab))


SPOOL_BYTES = 1 << 20  # a waiting sample is held in memory up to this size, then on disk


def sample_run(run: str | None, runs_dir: str, which: str, config: SampleConfig, out,
               warn: Callable[[str], None] | None = None) -> None:
    """Load a run's `best`/`last` checkpoint and stream generated text to the file `out`.

    One sample is written as it is generated, then a newline. Several are written in order,
    each under a line `----- sample <i> -----` and followed by a newline: the first streams as
    it is generated; the others are generated alongside it (one batch) and wait in temporary
    files (memory up to SPOOL_BYTES each), then follow. Memory stays flat however long they are.
    """
    import tempfile

    from textgen.inference import load_run

    loaded = load_run(run, runs_dir, which, warn=warn)
    start_ids(loaded.vocab, config.prime)  # refuse a bad prime before any output
    several = config.num_samples > 1
    waiting = [tempfile.SpooledTemporaryFile(SPOOL_BYTES, mode="w+", encoding="utf-8", newline="")
               for _ in range(config.num_samples - 1)]
    try:
        if several:
            out.write("----- sample 1 -----\n")

        def write(index: int, piece: str) -> None:
            if index == 0:
                out.write(piece)
                out.flush()
            else:
                waiting[index - 1].write(piece)

        stream_text(loaded.model, loaded.vocab, config, write)
        out.write("\n")
        for index, spool in enumerate(waiting, start=2):
            out.write(f"----- sample {index} -----\n")
            spool.seek(0)
            while block := spool.read(1 << 16):
                out.write(block)
            out.write("\n")
        out.flush()
    finally:
        for spool in waiting:
            spool.close()
