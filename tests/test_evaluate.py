"""`textgen eval` and `textgen info`: bpc against a whole-text reference, OOV counting, the CLI."""

import math
from pathlib import Path

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


def _table(stdout: str) -> dict[str, list[str]]:
    """{file: [bits/char, perplexity, characters, unknown (skipped)]} of `textgen eval`'s table."""
    lines = stdout.splitlines()
    assert lines[0].split() == ["file", "bits/char", "perplexity", "characters", "unknown", "(skipped)"]
    rows = {}
    for line in lines[1:]:
        if line.startswith(("out-of-vocabulary", "rare characters")):
            break
        name, bpc, perplexity, chars, skipped = line.split(None, 4)
        rows[name] = [bpc, perplexity, chars, skipped]
    return rows


def test_eval_and_info_commands(trained_run):
    (trained_run / "other.txt").write_text("abra cadabra ~~ abra\n")
    result = CliRunner().invoke(main, ["eval", "r", "other.txt", "--runs-dir", "runs", "--quiet"])
    assert result.exit_code == 0, result.output
    rows = _table(result.stdout)
    assert list(rows) == ["other.txt", "total"] and rows["other.txt"] == rows["total"]
    assert rows["total"][2:] == ["21", "2 (9.52%)"]  # 2 of 21 characters skipped
    assert "out-of-vocabulary characters skipped: 2 of 21 (9.52%; 1 distinct: '~')" in result.stdout
    # the reference: the run's model over the whole text at once, -log2 p written out in numpy
    from textgen.inference import load_run

    loaded = load_run("r", trained_run / "runs")
    ids = loaded.vocab.encode("abra cadabra  abra\n").astype(np.int32)  # the '~'s skipped
    logits = np.asarray(loaded.model(ids[None])[0][0], np.float64)  # (time, vocab)
    log_norm = np.logaddexp.reduce(logits, axis=-1)
    reference = np.mean(log_norm[:-1] - logits[np.arange(len(ids) - 1), ids[1:]]) / np.log(2)
    assert float(rows["total"][0]) == pytest.approx(reference, abs=1e-3)
    info = CliRunner().invoke(main, ["info", "--runs-dir", "runs"])
    assert info.exit_code == 0, info.output
    for fragment in ("1 x 16 LSTM", "steps:            20", "best val bpc:", "c.txt",
                     "strategy auto, precision float32"):
        assert fragment in info.stdout
    params = ModelConfig(vocab_size=len(set(TEXT)), embedding_dim=8, units=16, num_layers=1)
    assert f"parameters:       {params.parameter_count():,}" in info.stdout


def test_eval_has_a_row_per_file_and_a_total_against_a_whole_text_reference(trained_run):
    from textgen.inference import load_run

    texts = {"a.txt": TEXT[:300], "b.txt": "cadabra ~ abracad#bra\n" * 3, "d/c.txt": TEXT[50:170] + "@"}
    for name, text in texts.items():
        (trained_run / name).parent.mkdir(exist_ok=True)
        (trained_run / name).write_text(text)
    (trained_run / "d" / "junk.bin").write_bytes(b"\0\1\2")  # skipped, and said so
    result = CliRunner().invoke(main, ["eval", "r", "a.txt", "b.txt", "d", "--runs-dir", "runs", "--quiet"])
    assert result.exit_code == 0, result.output
    rows = _table(result.stdout)
    assert list(rows) == ["a.txt", "b.txt", "d/c.txt", "total"]
    model, vocab = (lambda r: (r.model, r.vocab))(load_run("r", "runs"))
    nats = scored = unknown = chars = 0
    for name, text in texts.items():
        known = "".join(ch for ch in text if ch in vocab.chars)
        bpc = reference_bpc(model, vocab, known)  # each file from a fresh state
        skipped = len(text) - len(known)
        assert float(rows[name][0]) == pytest.approx(bpc, abs=2e-4), name
        assert rows[name][2:] == [f"{len(text):,}", f"{skipped} ({100 * skipped / len(text):.2f}%)"]
        nats, scored = nats + bpc * (len(known) - 1), scored + len(known) - 1
        unknown, chars = unknown + skipped, chars + len(text)
    assert float(rows["total"][0]) == pytest.approx(nats / scored, abs=2e-4)
    assert float(rows["total"][1]) == pytest.approx(2 ** (nats / scored), rel=1e-3)
    assert rows["total"][2:] == [f"{chars:,}", f"{unknown} ({100 * unknown / chars:.2f}%)"]
    assert f"Warning: skipped 1 binary, undecodable or unreadable file in the directories: " \
           f"{Path('d') / 'junk.bin'}" in result.stderr


def test_eval_with_files_only_uses_the_latest_run(trained_run):
    (trained_run / "other.txt").write_text("abra cadabra abra\n")
    named = CliRunner().invoke(main, ["eval", "r", "other.txt", "--runs-dir", "runs", "--quiet"])
    for args in (["other.txt"], ["other.txt", "other.txt"]):
        latest = CliRunner().invoke(main, ["eval", *args, "--runs-dir", "runs", "--quiet"])
        assert latest.exit_code == 0, latest.output
        assert _table(latest.stdout)["other.txt"] == _table(named.stdout)["other.txt"]
    alone = CliRunner().invoke(main, ["eval", "r", "--runs-dir", "runs"])
    assert alone.exit_code == 2
    assert alone.stderr == "Error: r is a run, and no text to score was given; textgen eval r FILE\n"


def test_an_argument_that_is_both_a_run_and_a_file_or_directory(trained_run):
    """A file named like a run is text; a directory named like a run is the run; both say so."""
    (trained_run / "other.txt").write_text("abra cadabra abra\n")
    (trained_run / "r").write_text("abracadabra abracadabra\n")  # a file named as the run r
    result = CliRunner().invoke(main, ["eval", "r", "other.txt", "--runs-dir", "runs", "--quiet"])
    assert result.exit_code == 0, result.output
    assert list(_table(result.stdout)) == ["r", "other.txt", "total"]  # both text, latest run
    assert result.stderr == (f"Warning: r is read as a text file, not as the run {Path('runs') / 'r'}; "
                             f"to score with that run, give its path: textgen eval {Path('runs') / 'r'} ...\n")
    (trained_run / "r").unlink()
    (trained_run / "r").mkdir()  # a directory of text named as the run r
    (trained_run / "r" / "t.txt").write_text("abra\n")
    result = CliRunner().invoke(main, ["eval", "r", "other.txt", "--runs-dir", "runs", "--quiet"])
    assert result.exit_code == 0, result.output
    assert list(_table(result.stdout)) == ["other.txt", "total"]  # r was the run
    assert "r is read as the run runs/r, not as the directory r; " in result.stderr
    result = CliRunner().invoke(main, ["eval", "latest", "r", "--runs-dir", "runs", "--quiet"])
    assert list(_table(result.stdout)) == [str(Path("r") / "t.txt"), "total"], result.output


def test_eval_errors_are_one_line(trained_run):
    result = CliRunner().invoke(main, ["eval", "r", "missing.txt", "--runs-dir", "runs"])
    assert result.exit_code == 2 and result.stderr.strip() == "Error: path not found: missing.txt"
    (trained_run / "bin.dat").write_bytes(b"\0\1\2")
    result = CliRunner().invoke(main, ["eval", "r", "bin.dat", "--runs-dir", "runs"])
    assert result.exit_code == 2 and "looks like a binary file" in result.stderr
    assert "Traceback" not in result.output
