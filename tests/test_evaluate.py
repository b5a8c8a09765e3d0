"""`textgen eval` and `textgen info`: bpc against a whole-text reference, OOV counting, the CLI."""

import math

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from textgen.cli import main
from textgen.config import ModelConfig
from textgen.corpus import iter_text
from textgen.evaluate import evaluate
from textgen.model import build_model, count_params
from textgen.vocab import Vocabulary

TEXT = "abracadabra, cadabra abra!\n" * 20


@pytest.fixture(scope="module")
def model_and_vocab():
    vocab = Vocabulary.from_text(TEXT)
    tf.keras.utils.set_random_seed(1)
    return build_model(ModelConfig(vocab_size=vocab.size, embedding_dim=4, units=8, num_layers=2)), vocab


def reference_bpc(model, vocab, text):
    """The whole text in one call, one stream: mean cross-entropy of chars 2..N, in bits."""
    ids = vocab.encode(text).astype(np.int32)[None, :]
    logits, _ = model(tf.constant(ids[:, :-1]))
    nats = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=ids[:, 1:], logits=logits)
    return float(tf.reduce_mean(nats)) / math.log(2)


def test_windows_with_carried_state_equal_the_whole_text(model_and_vocab):
    model, vocab = model_and_vocab
    blocks = [TEXT[i:i + 50] for i in range(0, len(TEXT), 50)]  # blocks straddle windows
    result = evaluate(model, vocab, blocks, window=7)
    assert result.scored == len(TEXT) - 1
    assert result.bpc == pytest.approx(reference_bpc(model, vocab, TEXT), abs=1e-4)
    assert result.perplexity == pytest.approx(2 ** result.bpc, rel=1e-6)


def test_out_of_vocabulary_characters_are_counted_and_skipped(model_and_vocab):
    model, vocab = model_and_vocab
    text = "abra#cad@abra#"
    result = evaluate(model, vocab, [text], window=4)
    assert result.unknown == {"#": 2, "@": 1}
    assert result.bpc == pytest.approx(reference_bpc(model, vocab, "abracadabra"), abs=1e-4)


def test_iter_text_streams_blocks_that_join_to_the_file(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(("line\r\n" * 1000 + "中文").encode())
    blocks = list(iter_text([path], block_bytes=7))  # splits CRLF pairs and UTF-8 sequences
    assert len(blocks) > 100
    assert "".join(blocks) == "line\n" * 1000 + "中文"


def test_parameter_count_formula_matches_the_model():
    config = ModelConfig(vocab_size=37, embedding_dim=5, units=7, num_layers=3)
    assert config.parameter_count() == count_params(build_model(config))


@pytest.fixture
def trained_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.txt").write_text(TEXT * 3)
    result = CliRunner().invoke(main, [
        "train", "c.txt", "--name", "r", "--runs-dir", "runs", "--units", "16", "--embedding-dim",
        "8", "--num-layers", "1", "--batch-size", "4", "--seq-len", "16", "--steps", "20",
        "--eval-every", "20", "--quiet"])
    assert result.exit_code == 0, result.output
    return tmp_path


def test_eval_and_info_commands(trained_run):
    (trained_run / "other.txt").write_text("abra cadabra ~~ abra\n")
    result = CliRunner().invoke(main, ["eval", "r", "other.txt", "--runs-dir", "runs", "--quiet"])
    assert result.exit_code == 0, result.output
    bpc = float(result.stdout.split("bits per character:")[1].split()[0])
    # the reference: the run's model over the whole text at once, -log2 p written out in numpy
    from textgen.inference import load_run

    loaded = load_run("r", trained_run / "runs")
    ids = loaded.vocab.encode("abra cadabra  abra\n").astype(np.int32)  # the '~'s skipped
    logits = np.asarray(loaded.model(ids[None])[0][0], np.float64)  # (time, vocab)
    log_norm = np.logaddexp.reduce(logits, axis=-1)
    reference = np.mean(log_norm[:-1] - logits[np.arange(len(ids) - 1), ids[1:]]) / np.log(2)
    assert bpc == pytest.approx(reference, abs=1e-4)
    assert f"characters scored: {len(ids) - 1}" in result.stdout
    assert "out-of-vocabulary characters skipped: 2 (1 distinct: '~')" in result.stdout
    info = CliRunner().invoke(main, ["info", "--runs-dir", "runs"])
    assert info.exit_code == 0, info.output
    for fragment in ("1 x 16 LSTM", "steps:            20", "best val bpc:", "c.txt",
                     "strategy auto, precision float32"):
        assert fragment in info.stdout
    params = ModelConfig(vocab_size=len(set(TEXT)), embedding_dim=8, units=16, num_layers=1)
    assert f"parameters:       {params.parameter_count():,}" in info.stdout


def test_eval_errors_are_one_line(trained_run):
    result = CliRunner().invoke(main, ["eval", "r", "missing.txt", "--runs-dir", "runs"])
    assert result.exit_code == 2 and result.stderr.strip() == "Error: path not found: missing.txt"
    (trained_run / "bin.dat").write_bytes(b"\0\1\2")
    result = CliRunner().invoke(main, ["eval", "r", "bin.dat", "--runs-dir", "runs"])
    assert result.exit_code == 2 and "looks like a binary file" in result.stderr
    assert "Traceback" not in result.output
