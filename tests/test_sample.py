"""The sampler: filtering against a numpy reference, greedy decoding, seeded determinism."""

import numpy as np
import pytest
import tensorflow as tf

from textgen.config import ModelConfig, SampleConfig
from textgen.draws import draw_keys
from textgen.errors import TextgenError
from textgen.model import build_model
from textgen.sample import Sampler, choose_next, filter_logits, generate_text, start_ids
from textgen.vocab import Vocabulary


def reference_filter(logits, temperature, top_k, top_p):
    """Plain numpy: temperature, then keep the top k, then the smallest set holding top_p."""
    out = []
    for row in logits / temperature:
        order = np.argsort(-row, kind="stable")
        keep = np.zeros_like(row, dtype=bool)
        k = len(row) if top_k == 0 else min(top_k, len(row))
        keep[order[:k]] = True
        probs = np.exp(row[order[:k]] - row[order[0]])
        probs /= probs.sum()
        mass = 0.0
        for idx, p in zip(order[:k], probs):
            if mass >= top_p:
                keep[idx] = False
            mass += p
        out.append(np.where(keep, row, -np.inf))
    return np.array(out)


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, 0, 1.0), (0.7, 3, 1.0), (1.3, 0, 0.5), (1.0, 5, 0.8), (2.0, 1, 1.0), (1.0, 0, 1e-6),
])
def test_filter_logits_matches_reference(temperature, top_k, top_p):
    logits = np.random.default_rng(0).normal(size=(4, 11)).astype(np.float32) * 3
    got = filter_logits(tf.constant(logits), tf.constant(temperature), tf.constant(top_k),
                        tf.constant(top_p, tf.float32)).numpy()
    want = reference_filter(logits, temperature, top_k, top_p)
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    np.testing.assert_allclose(got[~np.isinf(got)], want[~np.isinf(want)], rtol=1e-6)


def test_choose_next_greedy_and_top_k_one_pick_argmax():
    logits = tf.constant(np.random.default_rng(1).normal(size=(6, 9)).astype(np.float32))
    argmax = np.argmax(logits.numpy(), axis=-1)
    keys = draw_keys(1, tf.range(6))
    greedy = choose_next(logits, tf.constant(0.0), tf.constant(0), tf.constant(1.0), keys, 2)
    top1 = choose_next(logits, tf.constant(1.0), tf.constant(1), tf.constant(1.0), keys, 2)
    np.testing.assert_array_equal(greedy.numpy(), argmax)
    np.testing.assert_array_equal(top1.numpy(), argmax)


def test_sampling_frequencies_follow_the_softmax():
    logits = np.log(np.array([[0.5, 0.3, 0.2]], np.float32))
    draws = [int(choose_next(tf.constant(logits), tf.constant(1.0), tf.constant(0),
                             tf.constant(1.0), draw_keys(7, tf.range(1)), i)[0]) for i in range(2000)]
    freq = np.bincount(draws, minlength=3) / len(draws)
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.2], atol=0.04)


@pytest.fixture(scope="module")
def model_and_vocab():
    vocab = Vocabulary.from_text("abcdefgh \n")
    tf.keras.utils.set_random_seed(0)
    return build_model(ModelConfig(vocab_size=vocab.size, embedding_dim=4, units=8, num_layers=1)), vocab


def test_same_seed_same_text_and_length(model_and_vocab):
    model, vocab = model_and_vocab
    config = SampleConfig(length=150, seed=3, prime="abc")
    first = generate_text(model, vocab, config)
    assert first == generate_text(model, vocab, config)
    assert first[0].startswith("abc") and len(first[0]) == 153
    other = generate_text(model, vocab, SampleConfig(length=150, seed=4, prime="abc"))
    assert other != first


def test_chunks_stream_and_equal_the_unchunked_text(model_and_vocab):
    model, vocab = model_and_vocab
    config = SampleConfig(length=100, seed=9, num_samples=2)
    pieces = []
    streamed = generate_text(model, vocab, config, write=lambda i, s: pieces.append((i, s)),
                             sampler=Sampler(model, chunk=7))
    assert len(pieces) == 2 * 15  # ceil(100 / 7) chunks per sample
    assert "".join(s for i, s in pieces if i == 1) == streamed[1]
    assert streamed == generate_text(model, vocab, config, sampler=Sampler(model, chunk=100))


def test_greedy_matches_a_python_loop_over_model_steps(model_and_vocab):
    model, vocab = model_and_vocab
    text = generate_text(model, vocab, SampleConfig(temperature=0, length=20, prime="ab"))[0]
    states = model.initial_state(1)
    _, states = model(tf.constant(vocab.encode("a")[None, :].astype(np.int32)), states)
    last, expected = int(vocab.encode("b")[0]), "ab"
    for _ in range(20):
        logits, states = model.step(tf.constant([last]), states)
        last = int(np.argmax(logits.numpy()[0]))
        expected += vocab.decode([last])
    assert text == expected


def test_many_streams_run_as_groups_whose_texts_do_not_depend_on_the_grouping(model_and_vocab):
    """More than ROWS_PER_GROUP streams run as several compiled loops; each stream draws with its
    own key (seed, stream index), so stream i's text is the same however many streams ran beside
    it, and streams with the same prime and state still differ."""
    from textgen.parallel import row_split_sizes
    from textgen.sample import ROWS_PER_GROUP

    model, vocab = model_and_vocab
    many = SampleConfig(length=40, seed=5, num_samples=ROWS_PER_GROUP + 3, prime="ab")
    texts = generate_text(model, vocab, many)
    assert texts == generate_text(model, vocab, many)
    first = row_split_sizes(ROWS_PER_GROUP + 3, 2)[0]  # 18 streams in group 0, 17 in group 1
    few = SampleConfig(length=40, seed=5, num_samples=ROWS_PER_GROUP, prime="ab")
    assert texts[:ROWS_PER_GROUP] == generate_text(model, vocab, few)  # across both groups
    assert generate_text(model, vocab, SampleConfig(length=40, seed=5, prime="ab")) == texts[:1]
    assert texts[first:first + 3] != texts[:3]  # same prime and state: only the keys differ
    greedy = SampleConfig(temperature=0, length=30, num_samples=ROWS_PER_GROUP + 3, prime="ab")
    one = generate_text(model, vocab, SampleConfig(temperature=0, length=30, prime="ab"))[0]
    assert generate_text(model, vocab, greedy) == [one] * (ROWS_PER_GROUP + 3)


def test_prime_outside_vocabulary_is_refused_by_name(model_and_vocab):
    _, vocab = model_and_vocab
    with pytest.raises(TextgenError, match="'z'"):
        start_ids(vocab, "abz")


@pytest.mark.parametrize("kwargs,fragment", [
    ({"temperature": -0.5}, "--temp"), ({"top_p": 0.0}, "--top-p"), ({"top_p": 1.5}, "--top-p"),
    ({"length": -1}, "--length"), ({"top_k": -2}, "--top-k"), ({"num_samples": 0}, "--num-samples"),
])
def test_bad_options_are_refused(kwargs, fragment):
    with pytest.raises(TextgenError, match=fragment):
        SampleConfig(**kwargs).validate()


def _fake_generate(chunks: int, width: int, rows_seen: list):
    """A stand-in for Sampler.generate: `chunks` chunks of ids, fast, recording each call."""
    def generate(self, prime_ids, config):
        rng = np.random.default_rng(0)
        for _ in range(chunks):
            rows_seen.append(None)
            yield rng.integers(0, 11, (config.num_samples, width))
    return generate


class _Sink:
    """A text stream that keeps only counts: what was written, and when sample 1 began."""

    def __init__(self):
        self.chars, self.writes = 0, []

    def write(self, text):
        self.chars += len(text)
        self.writes.append(text[:40])

    def flush(self):
        pass


def test_every_sample_streams_in_order_under_its_header(trained_run, monkeypatch):
    """With several samples the first streams while it is generated (its text reaches the
    output before generation ends), the others follow in order, each under its header."""
    import io

    from textgen.sample import sample_run

    calls = []
    out = io.StringIO()
    seen_at_second_chunk = []

    def generate(self, prime_ids, config):
        for k in range(3):
            if k == 1:
                seen_at_second_chunk.append(out.getvalue())
            calls.append(k)
            yield np.full((config.num_samples, 4), k + 1)

    monkeypatch.setattr(Sampler, "generate", generate)
    sample_run(str(trained_run), trained_run.parent, "best", SampleConfig(num_samples=3, length=12), out)
    vocab = Vocabulary.load(trained_run / "vocab.json")
    body = vocab.decode([1] * 4 + [2] * 4 + [3] * 4)
    assert out.getvalue() == "".join(f"----- sample {i} -----\n{body}\n" for i in (1, 2, 3))
    assert seen_at_second_chunk == [f"----- sample 1 -----\n{vocab.decode([1] * 4)}"]


def test_long_samples_keep_memory_flat(trained_run, monkeypatch):
    """Two samples of 2 million characters each: what is held at any time stays far below the
    text's size (pieces are written or spooled to disk as they come, never accumulated)."""
    import tracemalloc

    from textgen.inference import load_run
    from textgen.sample import sample_run

    load_run(str(trained_run), trained_run.parent)  # warm the imports outside the measurement
    monkeypatch.setattr(Sampler, "generate", _fake_generate(2000, 1000, []))
    sink = _Sink()
    tracemalloc.start()
    try:
        sample_run(str(trained_run), trained_run.parent, "best",
                   SampleConfig(num_samples=2, length=2_000_000), sink)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sink.chars > 4_000_000
    assert peak < 3_000_000, f"peak {peak:,} bytes for 4,000,000 characters"
