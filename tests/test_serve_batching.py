"""The batching engine: rows joining and leaving between chunks, per-row stop strings and lengths,
seeds that give the same text alone or in a batch, prompt scores, cancellation, the queue bound and
closing."""

import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from textgen.config import ModelConfig
from textgen.serve.batching import Choice, Engine, EngineClosed, Finish, Job, Piece, QueueFull, batch_sizes
from textgen.model import build_model
from textgen.serve.batched_sampler import row_key
from textgen.vocab import Vocabulary

CHUNK = 8
MAX_BATCH = 4
MAX_QUEUE = 6
VOCAB = Vocabulary(sorted("abcdefghij \n"))


@pytest.fixture(scope="module")
def engine():
    tf.keras.utils.set_random_seed(5)
    model = build_model(ModelConfig(vocab_size=VOCAB.size, embedding_dim=8, units=16, num_layers=1))
    engine = Engine(model, VOCAB, max_batch=MAX_BATCH, chunk=CHUNK, max_queue=MAX_QUEUE)
    engine.warm_up()
    engine.start()
    yield engine
    engine.close(timeout=30)


class Collector:
    """A job's sink: gathers events per choice and signals when every choice has finished."""

    def __init__(self, count: int):
        self.count, self.events, self.done = count, [], threading.Event()
        self.first_piece = threading.Event()

    def __call__(self, events):
        self.events.extend(events)
        if any(isinstance(e, Piece) for e in events):
            self.first_piece.set()
        if sum(isinstance(e, Finish) for e in self.events) == self.count:
            self.done.set()

    def text(self, index: int, prompt: bool = False) -> str:
        return "".join(e.text for e in self.events
                       if isinstance(e, Piece) and e.index == index and e.prompt == prompt)

    def logprobs(self, index: int, prompt: bool = False) -> list:
        return [lp for e in self.events if isinstance(e, Piece) and e.index == index and e.prompt == prompt
                for lp in e.logprobs]

    def reason(self, index: int) -> str:
        return next(e.reason for e in self.events if isinstance(e, Finish) and e.index == index)


def choice(index=0, prompt="abc", max_chars=40, seed=1, **kwargs) -> Choice:
    return Choice(index, VOCAB.encode(prompt).astype(np.int32), max_chars, row_key(seed, index), **kwargs)


def run(engine, choices, timeout=60) -> Collector:
    collector = Collector(len(choices))
    engine.submit(Job(choices, collector))
    assert collector.done.wait(timeout), collector.events
    return collector


def test_batch_sizes_are_powers_of_two_up_to_the_maximum():
    assert batch_sizes(1) == [1]
    assert batch_sizes(64) == [1, 2, 4, 8, 16, 32, 64]
    assert batch_sizes(24) == [1, 2, 4, 8, 16, 24]


def test_seeded_text_is_the_same_alone_and_among_other_rows(engine):
    lone = dict(prompt="abc defg hij abc defg", max_chars=37, seed=7, temperature=0.9, top_k=5)
    alone = run(engine, [choice(**lone)])
    # the same choice among others that join and leave at other times, with other settings
    others = [Collector(1) for _ in range(3)]
    engine.submit(Job([choice(0, "j", 90, seed=2, temperature=1.5)], others[0]))
    engine.submit(Job([choice(0, "ab", 13, seed=3, top_p=0.5)], others[1]))
    mixed = Collector(1)
    engine.submit(Job([choice(**lone)], mixed))
    engine.submit(Job([choice(0, "\n", 25, seed=4, temperature=0.0)], others[2]))
    assert mixed.done.wait(60) and all(o.done.wait(60) for o in others)
    assert len(alone.text(0)) == 37 and alone.reason(0) == "length"
    assert mixed.text(0) == alone.text(0)
    np.testing.assert_allclose(mixed.logprobs(0), alone.logprobs(0), atol=1e-6)
    assert [len(o.text(0)) for o in others] == [90, 13, 25]
    assert run(engine, [choice(**{**lone, "seed": 8})]).text(0) != alone.text(0)


def test_stop_strings_end_a_choice_even_across_chunk_boundaries(engine):
    full = run(engine, [choice(prompt="a", max_chars=60, seed=9)]).text(0)
    for start in (CHUNK - 2, 2 * CHUNK - 1):  # stop strings that straddle a chunk boundary
        stop = full[start:start + 3]
        cut = full.find(stop)
        got = run(engine, [choice(prompt="a", max_chars=60, seed=9, stop=("zzzz", stop))])
        assert got.text(0) == full[:cut] and got.reason(0) == "stop"
    first = run(engine, [choice(prompt="a", max_chars=60, seed=9, stop=(full[0],))])
    assert first.text(0) == "" and first.reason(0) == "stop"


def test_n_choices_draw_independently_and_prompt_scores_come_back(engine):
    got = run(engine, [choice(i, "hij", 30, seed=12, score_prompt=True, top_logprobs=2) for i in range(3)])
    texts = [got.text(i) for i in range(3)]
    assert len(set(texts)) == 3 and all(len(t) == 30 for t in texts)
    for i in range(3):
        assert got.text(i, prompt=True) == "ij"  # the first character is never scored
        assert len(got.logprobs(i)) == 30 and all(lp <= 0 for lp in got.logprobs(i))
        tops = [t for e in got.events if isinstance(e, Piece) and e.index == i and not e.prompt
                for t in e.top]
        assert len(tops) == 30 and all(len(t) == 2 for t in tops)
        for top, lp in zip(tops, got.logprobs(i)):
            assert max(top.values()) >= lp - 1e-6  # the chosen character is never likelier than the best
    alone = run(engine, [choice(1, "hij", 30, seed=12)])
    assert alone.text(1) == texts[1]  # choice i's draws depend on (seed, i) only


def test_cancelled_rows_leave_within_a_chunk_and_send_nothing_more(engine):
    collector = Collector(1)
    job = Job([choice(0, "a", 10**9, seed=1)], collector)
    engine.submit(job)
    assert collector.first_piece.wait(30)
    job.cancel()
    seen = len(collector.events)
    deadline = time.monotonic() + 10
    while engine.batch_size and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.batch_size == 0
    chunks = engine.chunks
    time.sleep(0.2)
    assert engine.chunks == chunks  # nothing runs any more
    assert len(collector.events) <= seen + 1  # at most the chunk that was running


def test_a_full_queue_is_refused_and_closing_aborts_everything(engine):
    """Runs last: it closes the module's engine."""
    running, waiting = Collector(MAX_BATCH), Collector(MAX_QUEUE)
    engine.submit(Job([choice(i, "a", 10**9) for i in range(MAX_BATCH)], running))
    assert running.first_piece.wait(30)
    engine.submit(Job([choice(i, "b", 10**9) for i in range(MAX_QUEUE)], waiting))
    assert engine.batch_size == MAX_BATCH and engine.queue_length == MAX_QUEUE
    with pytest.raises(QueueFull, match="busy"):
        engine.submit(Job([choice()], Collector(1)))
    engine.close(timeout=30)
    assert running.done.is_set() and waiting.done.is_set()
    assert {running.reason(i) for i in range(MAX_BATCH)} == {"abort"}
    assert {waiting.reason(i) for i in range(MAX_QUEUE)} == {"abort"}
    assert all(len(running.text(i)) > 0 for i in range(MAX_BATCH)) and waiting.text(0) == ""
    with pytest.raises(EngineClosed, match="shutting down"):
        engine.submit(Job([choice()], Collector(1)))
