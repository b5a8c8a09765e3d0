"""One seed, one text: `textgen sample --seed S`, the SavedModel export's `generate` (its own graph,
no XLA, loaded without textgen's code) and a `textgen serve` request with that seed (the server's
per-row XLA loop, in its own process) write the same characters, for the smallest, a middle and
the largest accepted seed, with the top-k / top-p filters off and on. Sample i of `--num-samples`
is the server's choice i. For a `--min-count` run none of the three ever writes the unknown
symbol, U+FFFD (`textgen.sample.banned_ids`), however hot the temperature. (LiteRT and ONNX exports have only `step`: there is no `generate` to
compare.)"""

from __future__ import annotations

import re

import httpx
import pytest

from conftest import CORPUS_TEXT, RUN_NAME, TINY, describe, invoke, train_run
from serve_process import Server
from textgen.config import SEED_LIMIT

SEEDS = (0, 7, SEED_LIMIT - 1)
FILTERS = ((0, 1.0), (5, 0.8))  # (top_k, top_p): off, then both on
PRIME, LENGTH, TEMPERATURE = "the ", 200, 1.3
UNKNOWN, RARE, FOLDED = "\ufffd", "qxzjkvwyQ", "folded"  # RARE: each once in the corpus


@pytest.fixture(scope="module")
def folded_run(tmp_path_factory):
    """A tiny run trained with `--min-count 2` on the session corpus with nine characters strewn
    through it once each: they fold into U+FFFD, one id of a 12-character vocabulary."""
    base = tmp_path_factory.mktemp("folded-run")
    corpus = base / "rare.txt"
    step = len(CORPUS_TEXT) // len(RARE)
    corpus.write_text("".join(CORPUS_TEXT[i * step:(i + 1) * step] + ch for i, ch in enumerate(RARE)),
                      encoding="utf-8")
    return train_run(base, corpus, FOLDED, [*TINY, "--min-count", "2"])


def export_generate(run, out):
    """`run`'s SavedModel export's `generate` signature, loaded by TensorFlow alone."""
    import tensorflow as tf

    result = invoke("export", run, "--runs-dir", run.parent, "--out", out, "--format", "savedmodel")
    assert result.exit_code == 0, describe(result)
    return tf.saved_model.load(str(out)).signatures["generate"]


@pytest.fixture(scope="module")
def savedmodel(trained_run, tmp_path_factory):
    """The session run's SavedModel `generate` signature, loaded by TensorFlow alone."""
    return export_generate(trained_run, tmp_path_factory.mktemp("seed-export") / "savedmodel")


@pytest.fixture(scope="module")
def server(trained_run, folded_run):
    """One server for both runs (the folded one by its path)."""
    srv = Server(trained_run, folded_run, "--runs-dir", trained_run.parent, "--max-batch", 2,
                 "--max-tokens", LENGTH)
    try:  # stopped even when it does not start in time
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def sampled(run, seed: int, top_k: int, top_p: float, samples: int = 1,
            temperature: float = TEMPERATURE) -> list[str]:
    """`textgen sample`'s texts, the prime cut off."""
    result = invoke("sample", run, "--runs-dir", run.parent, "--seed", seed, "--temp", temperature,
                    "--top-k", top_k, "--top-p", top_p, "--prime", PRIME, "--length", LENGTH,
                    "--num-samples", samples)
    assert result.exit_code == 0, describe(result)
    texts = re.split(r"----- sample \d+ -----\n", result.stdout)[1:] if samples > 1 else [result.stdout]
    assert all(text.startswith(PRIME) and len(text) == len(PRIME) + LENGTH + 1 for text in texts)
    return [text[len(PRIME):-1] for text in texts]


def generated(signature, vocab: str, seed: int, top_k: int, top_p: float,
              temperature: float = TEMPERATURE) -> str:
    import tensorflow as tf

    prime = [vocab.index(ch) for ch in PRIME]
    out = signature(prime=tf.constant(prime, tf.int32), length=tf.constant(LENGTH),
                    temperature=tf.constant(temperature, tf.float32), top_k=tf.constant(top_k),
                    top_p=tf.constant(top_p), seed=tf.constant(seed, tf.int64))
    return "".join(vocab[i] for i in out["ids"].numpy())


def served(url: str, seed: int, top_k: int, top_p: float, n: int = 1, model: str = RUN_NAME,
           temperature: float = TEMPERATURE) -> list[str]:
    body = {"model": model, "prompt": PRIME, "max_tokens": LENGTH, "temperature": temperature,
            "top_k": top_k, "top_p": top_p, "seed": seed, "n": n}
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return [c["text"] for c in sorted(response.json()["choices"], key=lambda c: c["index"])]


@pytest.mark.parametrize("top_k,top_p", FILTERS)
def test_sample_export_and_serve_write_the_same_text_for_a_seed(top_k, top_p, trained_run, savedmodel,
                                                               server):
    from textgen.vocab import Vocabulary

    vocab = Vocabulary.load(trained_run / "vocab.json").chars
    texts = {}
    for seed in SEEDS:
        text = sampled(trained_run, seed, top_k, top_p)[0]
        assert generated(savedmodel, vocab, seed, top_k, top_p) == text, seed
        assert served(server.url, seed, top_k, top_p) == [text], seed
        texts[seed] = text
    assert len(set(texts.values())) == len(SEEDS)  # each seed its own text


def test_sample_i_of_several_is_the_servers_choice_i(trained_run, server):
    several = sampled(trained_run, 7, 5, 0.8, samples=2)
    assert served(server.url, 7, 5, 0.8, n=2) == several
    assert several[0] == sampled(trained_run, 7, 5, 0.8)[0] and several[1] != several[0]
    assert all(len(set(text)) > 3 for text in several)  # drawn text, not one character repeated


def test_a_min_count_runs_unknown_symbol_is_never_written_by_sample_export_or_serve(
        folded_run, server, tmp_path):
    """At temperature 3 an almost untrained model draws each of its 12 characters often: without
    the ban, U+FFFD would be in every one of these 200-character texts."""
    from textgen.vocab import Vocabulary

    vocab = Vocabulary.load(folded_run / "vocab.json")
    assert vocab.unknown_id is not None and vocab.chars[vocab.unknown_id] == UNKNOWN
    assert not set(RARE) & set(vocab.chars) and len(vocab.chars) == 12
    signature = export_generate(folded_run, tmp_path / "savedmodel")
    hot = 3.0
    texts = set()
    for seed in SEEDS:
        text = sampled(folded_run, seed, 0, 1.0, temperature=hot)[0]
        assert UNKNOWN not in text and len(set(text)) > 5, (seed, text)  # hot: many characters
        assert generated(signature, vocab.chars, seed, 0, 1.0, temperature=hot) == text, seed
        assert served(server.url, seed, 0, 1.0, model=FOLDED, temperature=hot) == [text], seed
        texts.add(text)
    assert len(texts) == len(SEEDS)
