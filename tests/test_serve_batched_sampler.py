"""The per-row compiled loop: counter RNG, per-row filters against numpy references, prompt forcing
against the sequence model, and a row's independence from the rest of its batch."""

import numpy as np
import pytest
import tensorflow as tf

from textgen.config import ModelConfig
from textgen.model import build_model, flatten_state
from textgen.draws import counter_uniform
from textgen.serve.batched_sampler import TOP_LOGPROBS, RowInputs, RowLoop, row_key
from textgen.sample import choose_next, filter_logits

VOCAB = 12
CHUNK = 8


@pytest.fixture(scope="module")
def model():
    tf.keras.utils.set_random_seed(3)
    return build_model(ModelConfig(vocab_size=VOCAB, embedding_dim=8, units=16, num_layers=2))


@pytest.fixture(scope="module")
def loop(model):
    return RowLoop(model, CHUNK)


def numpy_filter(row, temperature, top_k, top_p):
    """One row: temperature, keep the top k, then the smallest set holding top_p (plain numpy)."""
    row = row / temperature
    order = np.argsort(-row, kind="stable")
    k = len(row) if top_k == 0 else min(top_k, len(row))
    probs = np.exp(row[order[:k]] - row[order[0]])
    probs /= probs.sum()
    before = np.concatenate([[0.0], np.cumsum(probs)[:-1]])
    keep = np.zeros(len(row), bool)
    keep[order[:k][(before < top_p) | (top_p >= 1)]] = True
    return np.where(keep, row, -np.inf)


def settings(rng, rows):
    temperature = rng.choice([0.0, 0.5, 1.0, 1.7], rows).astype(np.float32)
    top_k = rng.choice([0, 1, 3, 20], rows).astype(np.int32)
    top_p = rng.choice([1.0, 0.9, 0.3], rows).astype(np.float32)
    return temperature, top_k, top_p


def test_counter_uniform_is_uniform_and_depends_only_on_key_and_position():
    keys = np.array([row_key(seed, 0) for seed in range(4)], np.uint32)  # (4, 2)
    positions = np.arange(4096, dtype=np.int32)
    u = counter_uniform(np.repeat(keys, 4096, axis=0), np.tile(positions, 4)).numpy().reshape(4, 4096)
    assert 0 < u.min() and u.max() < 1
    counts = np.histogram(u, bins=16, range=(0, 1))[0]
    expected = u.size / 16
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected)), counts
    for row in u:  # neighbouring positions are uncorrelated, and no two keys share a stream
        assert abs(np.corrcoef(row[:-1], row[1:])[0, 1]) < 0.06
    assert abs(np.corrcoef(u[0], u[1])[0, 1]) < 0.06
    # the same (key, position) in another batch, at another row: the same number
    again = counter_uniform(keys[[3, 1]], np.array([17, 4095], np.int32)).numpy()
    np.testing.assert_array_equal(again, [u[3, 17], u[1, 4095]])


def test_per_row_filter_equals_each_row_filtered_with_its_own_settings():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(12, VOCAB)).astype(np.float32) * 3
    temperature, top_k, top_p = settings(rng, 12)
    temperature = np.maximum(temperature, 0.3)
    got = filter_logits(tf.constant(logits), tf.constant(temperature), tf.constant(top_k),
                        tf.constant(top_p)).numpy()
    for i in range(12):
        want = numpy_filter(logits[i], temperature[i], top_k[i], top_p[i])
        np.testing.assert_array_equal(np.isinf(got[i]), np.isinf(want))
        np.testing.assert_allclose(got[i][~np.isinf(want)], want[~np.isinf(want)], rtol=1e-6)


def test_choose_next_inverts_each_rows_filtered_distribution():
    rng = np.random.default_rng(1)
    rows = 64
    logits = rng.normal(size=(rows, VOCAB)).astype(np.float32) * 2
    temperature, top_k, top_p = settings(rng, rows)
    keys = np.array([row_key(i, 5) for i in range(rows)], np.uint32)
    positions = rng.integers(0, 10_000, rows).astype(np.int32)
    got = choose_next(tf.constant(logits), tf.constant(temperature), tf.constant(top_k),
                      tf.constant(top_p), tf.constant(keys), tf.constant(positions)).numpy()
    u = counter_uniform(keys, positions).numpy()
    for i in range(rows):
        if temperature[i] == 0:
            assert got[i] == np.argmax(logits[i])
            continue
        filtered = numpy_filter(logits[i].astype(np.float64), temperature[i], top_k[i], top_p[i])
        probs = np.exp(filtered - filtered.max())
        cdf = np.cumsum(probs / probs.sum())
        assert np.isfinite(filtered[got[i]])
        assert got[i] == np.searchsorted(cdf, u[i]), (i, cdf, u[i])


def test_draw_frequencies_follow_the_softmax():
    logits = np.log(np.array([[0.5, 0.3, 0.2]], np.float32)).repeat(4000, axis=0)
    ids = choose_next(tf.constant(logits), tf.ones(4000), tf.zeros(4000, tf.int32), tf.ones(4000),
                      tf.constant([row_key(9, 0)] * 4000, tf.uint32), tf.range(4000)).numpy()
    np.testing.assert_allclose(np.bincount(ids, minlength=3) / 4000, [0.5, 0.3, 0.2], atol=0.03)


def inputs(rows, prompt, temperature=0.0, top_k=0, top_p=1.0, seed=0, position=0):
    """RowInputs for `rows` identical rows reading `prompt` (ids) from its second character."""
    forced = np.zeros((rows, CHUNK), np.int32)
    feed = prompt[1:CHUNK + 1]
    forced[:, :len(feed)] = feed
    return RowInputs(np.full(rows, prompt[0], np.int32), forced, np.full(rows, len(feed), np.int32),
                     np.full(rows, position, np.int32), np.full(rows, temperature, np.float32),
                     np.full(rows, top_k, np.int32), np.full(rows, top_p, np.float32),
                     np.array([row_key(seed, i) for i in range(rows)], np.uint32))


def test_prompt_is_forced_and_scored_like_the_sequence_model_then_greedy_continues(model, loop):
    prompt = np.array([3, 1, 4, 1, 5, 9], np.int32)
    flat = flatten_state(model.initial_state(1))
    ids, logprobs, top_ids, top_logprobs, flat = loop.run(inputs(1, prompt), flat, tf.constant(True))
    ids, logprobs = ids.numpy()[0], logprobs.numpy()[0]
    np.testing.assert_array_equal(ids[:5], prompt[1:])
    # reference: the sequence path (model.call) over the prompt, then greedy single steps
    logits, states = model(tf.constant(prompt[None, :]))
    log_softmax = tf.nn.log_softmax(logits[0]).numpy()  # (6, vocab)
    np.testing.assert_allclose(logprobs[:5], log_softmax[np.arange(5), prompt[1:]], atol=1e-5)
    best = np.argsort(-log_softmax, axis=-1)[:, :TOP_LOGPROBS]
    np.testing.assert_array_equal(top_ids.numpy()[0, :5], best[:5])
    np.testing.assert_allclose(top_logprobs.numpy()[0, :5], np.take_along_axis(log_softmax, best, -1)[:5],
                               atol=1e-5)
    greedy, step_logits = [], logits[:, -1]
    for _ in range(CHUNK - 5):
        nxt = tf.argmax(step_logits, axis=-1, output_type=tf.int32)
        greedy.append(int(nxt[0]))
        step_logits, states = model.step(nxt, states)
    np.testing.assert_array_equal(ids[5:], greedy)


def test_a_row_generates_the_same_alone_and_in_a_batch(model, loop):
    prompt = np.array([2, 7, 1, 8], np.int32)
    alone = inputs(1, prompt, temperature=0.9, top_k=6, top_p=0.9, seed=11, position=0)
    mixed = inputs(4, prompt, seed=3)
    mixed = RowInputs(*(np.array(a, copy=True) for a in mixed))
    rng = np.random.default_rng(2)
    mixed.temperature[:], mixed.top_k[:], mixed.top_p[:] = settings(rng, 4)
    for field in RowInputs._fields:  # row 2 of the batch is the lone row
        getattr(mixed, field)[2] = getattr(alone, field)[0]
    runs = {}
    for name, rows in (("alone", alone), ("mixed", mixed)):
        count = len(rows.last)
        flat, out = flatten_state(model.initial_state(count)), []
        for _ in range(3):  # the state and position carry across chunks
            ids, logprobs, _, _, flat = loop.run(rows, flat, tf.constant(False))
            out.append((ids.numpy(), logprobs.numpy()))
            rows = rows._replace(last=out[-1][0][:, -1], forced_len=np.zeros(count, np.int32),
                                 position=rows.position + CHUNK)
        row = 0 if name == "alone" else 2
        runs[name] = (np.concatenate([o[0][row] for o in out]), np.concatenate([o[1][row] for o in out]))
    np.testing.assert_array_equal(runs["alone"][0], runs["mixed"][0])
    np.testing.assert_allclose(runs["alone"][1], runs["mixed"][1], atol=1e-6)
    assert len(set(runs["alone"][0][3:].tolist())) > 2  # it really sampled


def test_row_keys_are_the_samplers_keys_computed_in_any_graph():
    """`row_key` (the server's, in Python) is `draw_keys` as textgen sample's XLA loop and an
    export's graph compute it, and no two (seed, index) pairs share a key."""
    from textgen.draws import draw_keys

    seeds = tf.constant([0, 7, 2**31 - 1], tf.int64)
    compiled = tf.function(lambda s, i: draw_keys(s, i), jit_compile=True)
    for seed in seeds:
        want = [row_key(int(seed), i) for i in range(5)]
        assert compiled(seed, tf.range(5)).numpy().tolist() == [list(k) for k in want]
        assert draw_keys(seed, tf.range(5)).numpy().tolist() == [list(k) for k in want]
    keys = {row_key(seed, i) for seed in (0, 1, 2, 7, 2**31 - 1) for i in range(50)}
    assert len(keys) == 250


def test_a_banned_id_is_never_drawn_nor_listed_yet_a_prompt_holding_it_is_scored(model, loop):
    """The ban (`textgen.sample.banned_ids`: a `--min-count` run's unknown symbol) chooses
    characters only: the prompt's characters keep the model's log-probabilities, and the top
    alternatives are the model's own minus the banned id."""
    banned = int(np.argmax(model(tf.constant([[3]]))[0][0, 0]))  # the likeliest id after 3
    prompt = np.array([3, banned, 4, banned, 5, 9], np.int32)
    logits, _ = model(tf.constant(prompt[None, :]))
    log_softmax = tf.nn.log_softmax(logits[0]).numpy()  # (6, vocab)
    ban_loop = RowLoop(model, CHUNK, banned=(banned,))
    flat = flatten_state(model.initial_state(1))
    _, logprobs, top_ids, top_logprobs, _ = ban_loop.run(inputs(1, prompt), flat, tf.constant(True))
    np.testing.assert_allclose(logprobs.numpy()[0, :5], log_softmax[np.arange(5), prompt[1:]], atol=1e-5)
    allowed = np.where(np.arange(VOCAB) == banned, -np.inf, log_softmax)  # (6, vocab)
    best = np.argsort(-allowed, axis=-1)[:, :TOP_LOGPROBS]
    assert best[0, 0] != banned and np.argmax(log_softmax[0]) == banned  # the ban changed the list
    np.testing.assert_array_equal(top_ids.numpy()[0, :5], best[:5])
    np.testing.assert_allclose(top_logprobs.numpy()[0, :5], np.take_along_axis(allowed, best, -1)[:5],
                               atol=1e-5)
    # 32 hot rows, three chunks: the unbanned loop draws the id, the banned one never does
    drawn = {}
    for name, run in (("banned", ban_loop), ("free", loop)):
        rows, ids = inputs(32, prompt[:1], temperature=3.0, seed=5), []
        flat = flatten_state(model.initial_state(32))
        for _ in range(3):
            out, _, _, _, flat = run.run(rows, flat, tf.constant(False))
            ids.append(out.numpy())
            rows = rows._replace(last=ids[-1][:, -1], position=rows.position + CHUNK)
        drawn[name] = np.concatenate(ids, axis=1)  # (32, 3 * CHUNK)
    assert (drawn["free"] == banned).sum() > 10
    assert not (drawn["banned"] == banned).any() and len(np.unique(drawn["banned"])) == VOCAB - 1
