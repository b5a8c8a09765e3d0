"""Fine-tuning (`textgen train CORPUS --init-from RUN`, textgen.finetune): base characters keep
their weights bit for bit under their new ids (one softmax and two-level head, new characters
sorting between old ones), new characters are trained and sampled, the lineage survives resume
and shows in `info`, a fine-tuned run serves as a base and loads in `sample`, `eval`,
`export` and `viz`, and each misuse is one line."""

import json
import shutil

import httpx
import numpy as np
import pytest

from conftest import describe, invoke, train_run
from serve_process import Server
from textgen import checkpoint as ckpt
from textgen.config import ModelConfig
from textgen.finetune import (calibrated_biases, merge_vocabulary, model_config, preset_options)
from textgen.inference import load_run
from textgen.launch import launch
from textgen.model import build_model
from textgen.runs import load_vocab, read_run_meta
from textgen.vocab import UNKNOWN, Vocabulary

# Base text: '\n' ' ' a c e g i k m o (and one 'q' the two-level base folds away with --min-count 2).
BASE_TEXT = "acme game kai go\n" * 180
# New text: new characters 'B' 'D' 'E' (before every lowercase letter), 'b' 'd' 'f' (between base
# ones) and 'q'; it lacks the base's 'g' 'i' 'k' 'm' 'o', which stay in the vocabulary.
NEW_TEXT = "bad fed a cab\nDEB face q\n" * 90
NEW_CHARS = set("BDEbdfq")
SHAPE = ["--units", "16", "--embedding-dim", "8", "--num-layers", "1"]
RUN = ["--batch-size", "4", "--seq-len", "16", "--quiet"]


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """A folder with both texts and two base runs: `flat` (one softmax) and `two` (a two-level
    head of 3 frequent characters, trained with --min-count 2, so it folds 'q' into U+FFFD)."""
    base = tmp_path_factory.mktemp("finetune")
    (base / "base.txt").write_text(BASE_TEXT, encoding="utf-8")
    (base / "base-q.txt").write_text(BASE_TEXT + "q\n", encoding="utf-8")
    (base / "new.txt").write_text(NEW_TEXT, encoding="utf-8")
    train_run(base, base / "base.txt", "flat", SHAPE + RUN + ["--steps", "6", "--eval-every", "3"])
    train_run(base, base / "base-q.txt", "two", SHAPE + RUN + ["--steps", "6", "--eval-every", "3",
                                                             "--head-shortlist", "3", "--min-count", "2"])
    return base


def finetune(place, base, name, *options):
    """`textgen train new.txt --init-from BASE --name NAME` through the CLI: (run dir, result)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(place)
        result = invoke("train", place / "new.txt", "--runs-dir", place / "runs", "--name", name,
                        "--init-from", base, *RUN, *options)
    return place / "runs" / name, result


def checkpoint_model(run_dir, name):
    """(model, vocabulary) of checkpoint `name` of a run."""
    meta = read_run_meta(run_dir)
    model = build_model(meta["model"])
    ckpt.load_weights(model, run_dir / name)
    return model, load_vocab(run_dir, meta)


def output_column(model, char_id):
    """(kernel column, bias) scoring character `char_id`, wherever the head keeps it."""
    if not model.shortlist:
        return model.head.kernel.numpy()[:, char_id], model.head.bias.numpy()[char_id]
    rank = int(np.argsort(model.frequency_order.numpy())[char_id])
    if rank < model.shortlist:
        return model.head.kernel.numpy()[:, rank], model.head.bias.numpy()[rank]
    return (model.tail.kernel.numpy()[:, rank - model.shortlist],
            model.tail.bias.numpy()[rank - model.shortlist])


@pytest.mark.parametrize("base_name", ["flat", "two"])
def test_base_characters_keep_their_weights_bit_for_bit(place, base_name):
    run_dir, result = finetune(place, base_name, f"keep-{base_name}", "--steps", "2", "--eval-every", "2")
    assert result.exit_code == 0, describe(result)
    lineage = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["init_from"]
    base_dir = place / "runs" / base_name
    base_meta = read_run_meta(base_dir)
    assert lineage == {"run": str(base_dir.resolve()), "name": base_name,
                       "checkpoint": base_meta["checkpoints"]["best"],
                       "step": ckpt.checkpoint_step(base_meta["checkpoints"]["best"]),
                       "corpus_fingerprint": base_meta["corpus"]["fingerprint"]}
    base, base_vocab = checkpoint_model(base_dir, lineage["checkpoint"])
    tuned, vocab = checkpoint_model(run_dir, ckpt.checkpoint_name(0))
    assert set(vocab.chars) == set(base_vocab.chars) | NEW_CHARS and vocab.chars == sorted(vocab.chars)
    assert any(vocab.chars.index(c) != i for i, c in enumerate(base_vocab.chars))  # ids did move
    assert tuned.shortlist == base.shortlist == (3 if base_name == "two" else 0)
    for c in base_vocab.chars:  # 'g' 'i' 'k' 'm' 'o' are absent from the new text and kept too
        old, new = base_vocab.chars.index(c), vocab.chars.index(c)
        assert np.array_equal(base.embedding.embeddings.numpy()[old], tuned.embedding.embeddings.numpy()[new]), c
        (old_column, old_bias), (new_column, new_bias) = output_column(base, old), output_column(tuned, new)
        assert np.array_equal(old_column, new_column) and old_bias == new_bias, c
    for layer, tuned_layer in zip(base.lstm_layers, tuned.lstm_layers):
        for a, b in zip(layer.weights, tuned_layer.weights):
            assert np.array_equal(a.numpy(), b.numpy())
    if base_name == "two":  # the base's order and shortlist, then the new characters
        order = tuned.frequency_order.numpy()
        assert [vocab.chars[i] for i in order[:base_vocab.size]] == \
            [base_vocab.chars[i] for i in base.frequency_order.numpy()]
        assert {vocab.chars[i] for i in order[base_vocab.size:]} == NEW_CHARS
        assert np.array_equal(base.head.kernel.numpy(), tuned.head.kernel.numpy())
        # the base folded 'q' into U+FFFD: said in one line; here 'q' gets a row of its own
        assert "run two folded 1 rare character of its corpus into U+FFFD (--min-count 2)" in result.stderr, describe(result)
        assert vocab.unknown == UNKNOWN
    for c in NEW_CHARS:  # biases calibrated: finite, not the fresh zero
        _, bias = output_column(tuned, vocab.chars.index(c))
        assert np.isfinite(bias) and bias != 0, c


def test_new_characters_train_sample_and_resume_exactly_with_lineage(place, tmp_path):
    """One go against two pieces (--resume in between): same weights, same validation; the
    new characters' rows move from where they started, and samples use them."""
    runs = place / "runs"

    def run(name, steps, resume=False):
        return launch([str(place / "new.txt")], {}, {"batch_size": 4, "seq_len": 16, "steps": steps,
                                                     "eval_every": 10, "lr_decay": "none", "seed": 3, "keep": 5},
                      runs, name=name, resume=resume, show_progress=False, echo=lambda s: None,
                      init_from=None if resume else "flat")

    one_go, _, p1 = run("one-go", 30)
    run("pieces", 20)
    pieces, _, p2 = run("pieces", 30, resume=True)
    assert p1.step == p2.step == 30
    a, b = load_run(str(one_go), runs, "last").model, load_run(str(pieces), runs, "last").model
    for x, y in zip(a.weights, b.weights):
        np.testing.assert_allclose(x.numpy(), y.numpy(), atol=1e-5)
    assert [h["val_bpc"] for h in p1.history] == pytest.approx([h["val_bpc"] for h in p2.history], abs=1e-5)
    meta = read_run_meta(pieces)
    assert meta["init_from"]["name"] == "flat" and meta["step"] == 30
    info = invoke("info", pieces, "--runs-dir", runs)
    assert info.exit_code == 0 and f"fine-tuned from:  flat ({(runs / 'flat').resolve()}), checkpoint " \
        f"{meta['init_from']['checkpoint']}" in info.stdout, describe(info)
    start, vocab = checkpoint_model(one_go, ckpt.checkpoint_name(0))
    new_ids = [vocab.chars.index(c) for c in NEW_CHARS]
    moved = np.abs(a.embedding.embeddings.numpy()[new_ids] - start.embedding.embeddings.numpy()[new_ids])
    assert (moved.max(axis=1) > 1e-3).all(), moved
    sample = invoke("sample", one_go, "--runs-dir", runs, "--checkpoint", "last", "--length", 300, "--seed", 5)
    assert sample.exit_code == 0 and NEW_CHARS & set(sample.stdout), describe(sample)


def test_a_finetuned_run_is_a_base_and_loads_everywhere(place, tmp_path):
    first, result = finetune(place, "two", "first", "--steps", "2", "--eval-every", "2")
    assert result.exit_code == 0, describe(result)
    # again from the fine-tuned run, now with a --preset (its shape is not the base's: ignored)
    second, result = finetune(place, "first", "second", "--steps", "2", "--eval-every", "2",
                              "--preset", "small", "--checkpoint", "last", "--units", "16")
    assert result.exit_code == 0, describe(result)
    meta = read_run_meta(second)
    assert meta["init_from"]["name"] == "first" and meta["init_from"]["checkpoint"] == ckpt.checkpoint_name(2)
    assert meta["model"] == ModelConfig(**{**vars(read_run_meta(first)["model"]), "dropout": 0.1,
                                           "recurrent_dropout": 0.15})
    assert meta["train"].learning_rate == 1e-3 and meta["train"].weight_decay == 0.1
    runs = place / "runs"
    sample = invoke("sample", second, "--runs-dir", runs, "--length", 40, "--seed", 1, "--prime", "DEB")
    assert sample.exit_code == 0 and sample.stdout.startswith("DEB"), describe(sample)
    scored = invoke("eval", second, place / "new.txt", "--runs-dir", runs, "--quiet")
    assert scored.exit_code == 0 and "\ntotal " in scored.stdout, describe(scored)
    exported = invoke("export", second, "--runs-dir", runs, "--format", "keras", "--out", tmp_path / "out")
    assert exported.exit_code == 0, describe(exported)
    traced = invoke("viz", second, "--runs-dir", runs, "--prime", "DEB face q", "--format", "json",
                    "--out", tmp_path / "trace.json")
    assert traced.exit_code == 0 and (tmp_path / "trace.json").stat().st_size > 0, describe(traced)
    greedy = invoke("sample", second, "--runs-dir", runs, "--temp", "0", "--prime", "DEB", "--length", 30)
    assert greedy.exit_code == 0, describe(greedy)
    server = Server(second, "--runs-dir", runs)  # a real server on 127.0.0.1 serves the fine-tuned run
    try:
        url = server.wait_ready()
        reply = httpx.post(f"{url}/v1/completions", timeout=120,
                           json={"prompt": "DEB", "max_tokens": 30, "temperature": 0})
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["text"] == greedy.stdout.rstrip("\n")[len("DEB"):]
    finally:
        server.stop()


def test_a_finetuned_gru_keeps_its_bases_cell_and_recurrent_weights(place):
    """A gru base: the fine-tuned run is a gru, its recurrent layer starts as the base's bit for
    bit, and asking for another cell is refused in one line."""
    base = train_run(place, place / "base.txt", "gru-base",
                     SHAPE + RUN + ["--steps", "3", "--eval-every", "3", "--cell", "gru"])
    tuned, result = finetune(place, "gru-base", "gru-tuned", "--steps", "2", "--eval-every", "2")
    assert result.exit_code == 0, describe(result)
    assert read_run_meta(tuned)["model"].cell == "gru"
    base_model, _ = checkpoint_model(base, ckpt.checkpoint_name(3))
    start, _ = checkpoint_model(tuned, ckpt.checkpoint_name(0))
    assert start.cell_kind.name == "gru"
    for ours, theirs in zip(start.lstm_layers[0].cell.weights, base_model.lstm_layers[0].cell.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    _, refused = finetune(place, "gru-base", "gru-lstm", "--steps", "2", "--cell", "lstm")
    assert refused.exit_code != 0 and "--cell lstm (it has gru)" in refused.output, describe(refused)
    assert "Traceback" not in refused.output


def test_misuse_is_one_line_and_writes_nothing(place):
    runs = place / "runs"
    damaged = runs / "damaged"
    shutil.copytree(runs / "flat", damaged)
    (damaged / "run.json").write_text("{not json", encoding="utf-8")
    broken = runs / "broken-weights"
    shutil.copytree(runs / "flat", broken)
    for weights in broken.glob("ckpt-*/model.weights.h5"):
        weights.write_bytes(b"not weights")
    cases = [
        (["--init-from", "nowhere"], "--init-from nowhere: no run found at nowhere"),
        (["--init-from", damaged], "run.json is corrupt"),
        (["--init-from", broken], "model.weights.h5 is corrupt"),
        (["--init-from", "flat", "--units", "32"], "--init-from flat: the model's shape comes from the base run, "
                                                   "and --units 32 (it has 16) contradicts it"),
        (["--init-from", "flat", "--resume"], "--init-from starts a new run and --resume continues one"),
        (["--checkpoint", "last"], "--checkpoint chooses the base run's checkpoint for --init-from"),
    ]
    for options, message in cases:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(place)
            result = invoke("train", place / "new.txt", "--runs-dir", runs, "--name", "refused",
                            *options, *RUN, "--steps", "1")
        assert result.exit_code == 2 and result.stderr.startswith("Error: ") and message in result.stderr, \
            describe(result)
        assert result.stderr.count("\n") == 1 and not (runs / "refused").exists(), describe(result)


# ---------------------------------------------------------------------------- pure functions


def test_merged_vocabulary_sorts_new_characters_between_old_ones_and_folds_rare_ones():
    base = Vocabulary(list("\n aceg"))
    vocab, remap, folded = merge_vocabulary(base, list("\nabdz"), [5, 9, 4, 7, 1])
    assert vocab.chars == list("\n abcdegz") and vocab.unknown is None and folded == {}
    assert vocab.decode(remap) == "\nabdz"
    vocab, remap, folded = merge_vocabulary(base, list("\nabdz"), [5, 9, 4, 7, 1], min_count=3)
    assert vocab.chars == list("\n abcdeg") + [UNKNOWN] and vocab.unknown == UNKNOWN
    assert vocab.decode(remap) == "\nabd" + UNKNOWN  # 'z' is rare; 'a' is the base's, whatever its count
    assert folded == {"min_count": 3, "rare_chars": 1, "rare_occurrences": 1}
    keeping = Vocabulary.keeping(list("ab"))  # a base trained with --min-count: its U+FFFD stays the unknown
    vocab, _, _ = merge_vocabulary(keeping, list("bc"), [1, 1])
    assert vocab.chars == ["a", "b", "c", UNKNOWN] and vocab.unknown == UNKNOWN


def test_calibrated_biases_match_a_numeric_reference():
    """The closed form against bisection on the criterion itself, computed from the full softmax
    with every bias in place: mean over positions of p(c) / p(base characters) = n_c / n_base."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (200, 12))  # (positions, vocab)
    new_ids = np.array([2, 7, 11])
    counts = rng.integers(1, 500, 12).astype(float)
    biases = calibrated_biases(logits, new_ids, counts)
    base = np.setdiff1d(np.arange(12), new_ids)

    def mean_odds(c, b):
        z = logits.copy()
        z[:, new_ids] += biases
        z[:, c] = logits[:, c] + b
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        return (p[:, c] / p[:, base].sum(axis=1)).mean()

    for c, b in zip(new_ids, biases):
        target, low, high = counts[c] / counts[base].sum(), -60.0, 60.0
        for _ in range(200):
            mid = (low + high) / 2
            low, high = (mid, high) if mean_odds(c, mid) < target else (low, mid)
        assert b == pytest.approx(low, abs=1e-4)
    # shift-invariant per position: log-probabilities give the same biases as logits
    log_probs = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    np.testing.assert_allclose(calibrated_biases(log_probs, new_ids, counts), biases, atol=1e-5)


def test_a_presets_shape_does_not_count_and_given_shapes_must_agree():
    model, train = preset_options("small", {"dropout": 0.3}, {"steps": 5})
    assert model == {"dropout": 0.3, "recurrent_dropout": 0.15}  # its shape is not applied
    assert train == {"batch_size": 32, "seq_len": 100, "weight_decay": 0.1, "steps": 5}  # nor its rate
    base = ModelConfig(vocab_size=10, embedding_dim=8, units=16, num_layers=1, head_shortlist=0)
    config = model_config(base, {**model, "units": 16}, 14, "base")
    assert config == ModelConfig(vocab_size=14, embedding_dim=8, units=16, num_layers=1, head_shortlist=0,
                                 dropout=0.3, recurrent_dropout=0.15)
