"""Continuous batching for `textgen serve`: concurrent requests share one compiled generation loop.

The engine owns `max_batch` slots. Each slot holds one row: one completion choice with its own
recurrent state, position, temperature, top-k, top-p, seed, stop strings and length. A background
thread runs `textgen.serve.batched_sampler.RowLoop` one chunk of characters at a time over the rows in use, in
the smallest compiled batch size that holds them; between chunks, finished or cancelled rows
leave and waiting rows take their place, so a request that arrives while others are generating
joins at the next chunk boundary, and a request whose client went away stops costing compute
within one chunk.

Results go back through the job's `sink`, called from the engine's thread once per chunk with a
list of `Piece` and `Finish` events; the sink must be thread-safe (the server hands them to its
event loop).
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import tensorflow as tf

from textgen.config import TEMPERATURE
from textgen.errors import TextgenError
from textgen.parallel import available_cpus
from textgen.sample import banned_ids
from textgen.serve.batched_sampler import RowInputs, RowLoop


@dataclass
class Choice:
    """What one row generates: one choice of one completion request.

    prompt_ids: (prompt,) int32, at least one id; the first is the first input, the rest are
    read (and scored) before generation starts.
    """

    index: int
    prompt_ids: np.ndarray
    max_chars: int
    key: tuple[int, int]  # `textgen.serve.batched_sampler.row_key`
    temperature: float = TEMPERATURE
    top_k: int = 0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    top_logprobs: int = 0  # alternatives to report per character (0: none)
    score_prompt: bool = False  # also report the prompt's characters with their logprobs


@dataclass
class Piece:
    """Characters of one choice, with the natural-log probability the model gave each, and the
    `top` alternatives ({character: logprob} per character) when the choice asked for them.
    `prompt` marks the prompt's own characters (the first one is never scored)."""

    index: int
    text: str
    logprobs: list[float]
    top: list[dict[str, float]] | None = None
    prompt: bool = False


@dataclass
class Finish:
    """A choice is done: "stop" (a stop string), "length" (max_chars), "abort" (the server is
    shutting down) or "error" (the engine failed; the message went to the server's log)."""

    index: int
    reason: str


class QueueFull(TextgenError):
    """More rows are waiting than the engine's queue holds."""


class EngineClosed(TextgenError):
    """The engine is shutting down and takes no new requests."""


class Job:
    """One request's choices and where their events go.

    Args:
        choices: the rows to generate.
        sink: called from the engine's thread with a list of `Piece`/`Finish` events.
    """

    def __init__(self, choices: list[Choice], sink: Callable[[list], None]):
        self.choices, self.sink = choices, sink
        self.cancelled = False

    def cancel(self) -> None:
        """Stop generating for this job: its rows leave at the next chunk boundary."""
        self.cancelled = True


@dataclass
class _Row:
    """A choice in progress (engine thread only)."""

    job: Job
    choice: Choice
    last: int
    prompt_left: np.ndarray
    steps: int = 0
    generated: int = 0
    held: str = ""  # generated, not yet sent: may be the start of a stop string
    held_logprobs: list = field(default_factory=list)
    held_top: list = field(default_factory=list)

    @property
    def hold_back(self) -> int:
        """Characters kept back: a stop string may still complete across the next chunk."""
        return max((len(s) for s in self.choice.stop), default=1) - 1


def batch_sizes(max_batch: int) -> list[int]:
    """The compiled batch sizes: powers of two below `max_batch`, and `max_batch` itself."""
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return sizes + [max_batch]


class Engine:
    """Batches choices from many requests into one compiled loop, in a background thread.

    Args:
        model: a built `CharLSTM`.
        vocab: its `Vocabulary`.
        max_batch: rows generated side by side.
        chunk: characters per row per graph call.
        max_queue: rows that may wait for a slot; `submit` raises `QueueFull` beyond.

    Example:
        >>> engine = Engine(model, vocab, max_batch=64, chunk=64); engine.start()
        >>> engine.submit(Job([Choice(0, ids, 100, row_key(1, 0))], sink=print))
        >>> engine.close()
    """

    def __init__(self, model, vocab, max_batch: int = 64, chunk: int = 64, max_queue: int = 256):
        self.vocab, self.max_batch, self.chunk, self.max_queue = vocab, max_batch, chunk, max_queue
        self.loop = RowLoop(model, chunk, banned=banned_ids(vocab))
        self.sizes = batch_sizes(max_batch)
        # one (rows, units) array per state of each layer: h, C per layer for the LSTM
        self._units = [model.config.units] * (len(model.cell_kind.state_names) * model.config.num_layers)
        self._pending: deque[_Row] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._rows: list[_Row] = []  # engine thread only, in slot order
        self._states = [np.zeros((0, u), np.float32) for u in self._units]  # (rows, units) each
        self.characters = 0  # generated so far (prompt characters not counted)
        self.chunks = 0  # graph calls so far
        self.busy_seconds = 0.0  # spent in those calls

    @property
    def queue_length(self) -> int:
        """Rows waiting for a slot."""
        return len(self._pending)

    @property
    def batch_size(self) -> int:
        """Rows in slots now (generating or reading their prompt)."""
        return len(self._rows)

    def warm_up(self) -> float:
        """Compile the loop for every batch size now (seconds taken), so no request waits for it."""
        start = time.perf_counter()
        empty = [np.zeros((0, u), np.float32) for u in self._units]
        # XLA compiles outside the GIL: one size per core at a time
        with ThreadPoolExecutor(available_cpus()) as pool:
            list(pool.map(lambda size: self._run([], empty, size, want_top=False), self.sizes[::-1]))
        return time.perf_counter() - start

    def start(self) -> None:
        """Start the engine's thread."""
        self._thread = threading.Thread(target=self._serve, name="textgen-engine", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job's rows; they join the batch at the next chunk boundary with free slots."""
        if any(len(choice.prompt_ids) == 0 for choice in job.choices):
            raise ValueError("every choice needs at least one prompt id (its first input)")
        with self._cond:
            if self._closing:
                raise EngineClosed("the server is shutting down; send the request again later")
            if len(self._pending) + len(job.choices) > self.max_queue:
                raise QueueFull(f"the server is busy ({len(self._pending)} choices waiting); "
                                "try again shortly")
            for choice in job.choices:
                if choice.max_chars == 0 and not choice.score_prompt:  # nothing to compute
                    job.sink([Finish(choice.index, "length")])
                    continue
                ids = np.asarray(choice.prompt_ids, np.int32)
                self._pending.append(_Row(job, choice, int(ids[0]), ids[1:]))
            self._cond.notify()

    def close(self, timeout: float | None = None) -> None:
        """Stop: rows in progress end with "abort" at the next chunk boundary, waiting ones at
        once; then the thread exits."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _serve(self) -> None:
        """The engine thread: admit, drop cancelled, run a chunk, deliver; until closed."""
        while True:
            with self._cond:
                while not (self._rows or self._pending or self._closing):
                    self._cond.wait()
                if self._closing:
                    break
                self._admit()
            self._keep([row for row in self._rows if not row.job.cancelled])
            if not self._rows:
                continue
            try:
                self._generate()
            except Exception:  # a bug or an out-of-memory must not take the server down
                traceback.print_exc(file=sys.stderr)
                self._deliver({row.job: [Finish(row.choice.index, "error")] for row in self._rows})
                self._keep([])
        with self._cond:
            ending = self._rows + [row for row in self._pending if not row.job.cancelled]
            self._pending.clear()
        events: dict[Job, list] = {}
        for row in ending:
            events.setdefault(row.job, []).extend(self._flush(row, "abort"))
        self._deliver(events)
        self._keep([])

    def _admit(self) -> None:
        """Move waiting rows into free slots (caller holds the lock)."""
        admitted = []
        while self._pending and len(self._rows) + len(admitted) < self.max_batch:
            row = self._pending.popleft()
            if not row.job.cancelled:
                admitted.append(row)
        if admitted:
            self._rows.extend(admitted)
            self._states = [np.concatenate([s, np.zeros((len(admitted), s.shape[1]), np.float32)])
                            for s in self._states]

    def _keep(self, rows: list[_Row]) -> None:
        """Keep only `rows` (a sub-list of the rows in slot order) and their states."""
        if len(rows) == len(self._rows):
            return
        kept = set(map(id, rows))
        mask = np.array([id(row) in kept for row in self._rows], bool)
        self._rows = rows
        self._states = [s[mask] for s in self._states]

    def _run(self, rows: list[_Row], states: list[np.ndarray], size: int, want_top: bool):
        """One graph call for `rows` (and their `states`) padded to `size` rows.

        Returns ([ids, logprobs, top_ids, top_logprobs] as numpy, forced_len, the rows' new states).
        """
        chunk = self.chunk
        last, forced_len, position = (np.zeros(size, np.int32) for _ in range(3))
        forced = np.zeros((size, chunk), np.int32)
        temperature, top_p = np.zeros(size, np.float32), np.ones(size, np.float32)
        top_k, keys = np.zeros(size, np.int32), np.zeros((size, 2), np.uint32)
        for i, row in enumerate(rows):
            choice, feed = row.choice, row.prompt_left[:chunk]
            # the draw's position counts generated characters only, as `textgen sample`'s does:
            # the prompt's first id is the first input, its other ids are read in steps of their own
            position[i] = row.steps - (len(choice.prompt_ids) - 1)
            last[i], forced_len[i] = row.last, len(feed)
            forced[i, :len(feed)] = feed
            temperature[i], top_k[i], top_p[i], keys[i] = (choice.temperature, choice.top_k,
                                                           choice.top_p, choice.key)
        flat = [np.concatenate([s, np.zeros((size - len(s), s.shape[1]), np.float32)]) for s in states]
        start = time.perf_counter()
        outputs = self.loop.run(RowInputs(last, forced, forced_len, position, temperature, top_k,
                                          top_p, keys), flat, tf.constant(want_top))
        *results, new_flat = outputs
        results = [r.numpy() for r in results]
        self.busy_seconds += time.perf_counter() - start
        self.chunks += 1
        return results, forced_len, [s.numpy()[: len(rows)] for s in new_flat]

    def _generate(self) -> None:
        """Run one chunk for the rows in their slots and deliver what each produced."""
        rows = self._rows
        size = next(s for s in self.sizes if s >= len(rows))
        want_top = any(row.choice.top_logprobs for row in rows)
        outputs, forced_len, self._states = self._run(rows, self._states, size, want_top)
        ids, logprobs, top_ids, top_logprobs = outputs  # (rows, chunk) and (rows, chunk, top)
        events: dict[Job, list] = {}
        finished = set()
        for i, row in enumerate(rows):
            out = events.setdefault(row.job, [])
            read = int(forced_len[i])
            if read and row.choice.score_prompt:
                out.append(Piece(row.choice.index, self.vocab.decode(ids[i, :read]),
                                 logprobs[i, :read].tolist(), self._top(row, top_ids[i, :read],
                                                                        top_logprobs[i, :read]), True))
            row.prompt_left = row.prompt_left[read:]
            row.last, row.steps = int(ids[i, -1]), row.steps + self.chunk
            if len(row.prompt_left):
                continue
            take = min(self.chunk - read, row.choice.max_chars - row.generated)
            new = slice(read, read + take)
            row.generated += take
            self.characters += take
            row.held += self.vocab.decode(ids[i, new])
            row.held_logprobs += logprobs[i, new].tolist()
            top = self._top(row, top_ids[i, new], top_logprobs[i, new])
            row.held_top += top or []
            done = self._release(row, out)
            if done:
                finished.add(id(row))
        self._deliver(events)
        self._keep([row for row in rows if id(row) not in finished])

    def _top(self, row: _Row, top_ids: np.ndarray, top_logprobs: np.ndarray):
        """{character: logprob} of the row's requested number of alternatives, per character."""
        k = row.choice.top_logprobs
        if not k:
            return None
        chars = self.vocab.chars
        return [{chars[j]: float(lp) for j, lp in zip(ids[:k], lps[:k])}
                for ids, lps in zip(top_ids, top_logprobs)]

    def _release(self, row: _Row, out: list) -> bool:
        """Send what of the row's held text is final; True when the row is finished."""
        stops = [(row.held.find(s), s) for s in row.choice.stop]
        hits = [at for at, _ in stops if at >= 0]
        if hits:
            out.extend(self._flush(row, "stop", upto=min(hits)))
            return True
        if row.generated >= row.choice.max_chars:
            out.extend(self._flush(row, "length"))
            return True
        send = len(row.held) - row.hold_back
        if send > 0:
            out.append(self._take(row, send))
        return False

    def _take(self, row: _Row, count: int) -> Piece:
        """The first `count` held characters as a Piece, removed from the held text."""
        top = row.held_top[:count] if row.choice.top_logprobs else None
        piece = Piece(row.choice.index, row.held[:count], row.held_logprobs[:count], top)
        row.held, row.held_logprobs = row.held[count:], row.held_logprobs[count:]
        row.held_top = row.held_top[count:]
        return piece

    def _flush(self, row: _Row, reason: str, upto: int | None = None) -> list:
        """The row's last events: what is held (up to `upto` characters), then its Finish."""
        count = len(row.held) if upto is None else upto
        events = [self._take(row, count)] if count else []
        return events + [Finish(row.choice.index, reason)]

    @staticmethod
    def _deliver(events: dict[Job, list]) -> None:
        """Hand each job its events (one sink call per job), unless it was cancelled."""
        for job, job_events in events.items():
            if job_events and not job.cancelled:
                job.sink(job_events)
