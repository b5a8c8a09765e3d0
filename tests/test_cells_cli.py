"""Every cell through the CLI (`textgen train --cell X`): a tiny run trains and records its
cell, `sample --temp 0` is the greedy decoding of the model's own sequence path, `eval` gives the
whole-text cross-entropy, a stopped run resumes exactly (recurrent dropout and weight decay on)
and keeps its cell (each cell's exports: tests/test_cells_downstream.py); the experiment-only
cells train, sample and evaluate. Also the model-level contracts per cell: `step` = `call`,
parameter counts, weight decay's reach.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY, describe, invoke, train_run

from textgen.cell import CELLS
from textgen.config import CELL_NAMES, EXPERIMENT_CELLS, ModelConfig
from textgen.inference import load_run
from textgen.model import build_model, count_params
from textgen.steps import make_optimizer

VARIANTS = ("peephole", "cifg", "gru")
# conftest's TINY shape with two layers, recurrent dropout, dropout and weight decay on
OPTIONS = ["--units", "16", "--embedding-dim", "8", "--num-layers", "2", "--batch-size", "4", "--seq-len", "16",
           "--eval-every", "3", "--quiet", "--recurrent-dropout", "0.2", "--dropout", "0.1", "--weight-decay", "0.1"]


def test_the_registry_and_the_config_name_the_same_cells():
    assert tuple(CELLS) == CELL_NAMES


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_step_is_call_and_the_parameters_are_counted(cell):
    config = ModelConfig(vocab_size=13, embedding_dim=5, units=7, num_layers=3, cell=cell)
    tf.keras.utils.set_random_seed(4)
    model = build_model(config, lstm_path="fused")
    for layer in model.lstm_layers:  # the peepholes start at zero: make them matter
        for weight in layer.cell.weights:
            weight.assign(np.random.default_rng(1).normal(scale=0.5, size=weight.shape))
    assert config.parameter_count() == count_params(model)
    ids = tf.constant(np.random.default_rng(2).integers(0, 13, size=(2, 9)), tf.int32)
    logits, _ = model(ids)
    states, weights, steps = model.initial_state(2), model.step_weights(), []
    for t in range(9):
        step_logits, states = model.step(ids[:, t], states, weights)
        steps.append(step_logits)
    np.testing.assert_allclose(np.stack(steps, axis=1), logits.numpy(), atol=1e-5)


def test_weight_decay_leaves_biases_peepholes_and_the_embedding_alone():
    model = build_model(ModelConfig(vocab_size=9, embedding_dim=3, units=4, num_layers=2, cell="peephole"))
    optimizer = make_optimizer(1e-3, 0.1)
    optimizer.build(model.trainable_variables)
    spared = sorted(v.path.split("/", 1)[1] for v in model.trainable_variables
                    if not optimizer._use_weight_decay(v))
    assert spared == sorted(["embedding/embeddings", "lstm_0/cell/bias", "lstm_0/cell/peephole",
                             "lstm_1/cell/bias", "lstm_1/cell/peephole", "logits/bias"])


def _weights(run_dir):
    return load_run(str(run_dir), run_dir.parent, "last").model.get_weights()


@pytest.mark.parametrize("cell", VARIANTS)
def test_a_cell_trains_samples_evaluates_and_resumes_exactly(cell, corpus_file, tmp_path, monkeypatch):
    whole = train_run(tmp_path, corpus_file, "whole", OPTIONS + ["--cell", cell, "--steps", "6"])
    meta = json.loads((whole / "run.json").read_text(encoding="utf-8"))
    assert meta["model"]["cell"] == cell and meta["step"] == 6
    loaded = load_run(str(whole), whole.parent, "last")
    assert loaded.model.cell_kind.name == cell
    assert loaded.model.lstm_layers[0].cell.kernel.shape[-1] == CELLS[cell].gate_blocks * 16
    info = invoke("info", whole, "--runs-dir", whole.parent)  # names the cell, not "LSTM" for every run
    assert info.exit_code == 0 and f"model:            2 x 16 {cell.upper()}," in info.stdout, describe(info)
    if cell == "peephole":  # trained: the peepholes moved from zero
        assert np.abs(loaded.model.lstm_layers[0].cell.peephole.numpy()).max() > 0
    if cell == "gru":  # two bias rows, both trained from zero
        bias = loaded.model.lstm_layers[0].cell.bias.numpy()
        assert bias.shape == (2, 48) and np.abs(bias[0]).max() > 0 and np.abs(bias[1]).max() > 0

    # stopped at step 3, resumed to 6: the very same weights as the run trained in one go
    halves = train_run(tmp_path, corpus_file, "halves", OPTIONS + ["--cell", cell, "--steps", "3"])
    monkeypatch.chdir(tmp_path)
    result = invoke("train", "--resume", "--name", "halves", "--runs-dir", halves.parent, "--steps", 6,
                    "--quiet")
    assert result.exit_code == 0, describe(result)
    for a, b in zip(_weights(whole), _weights(halves)):
        np.testing.assert_array_equal(a, b)
    other = "lstm"
    result = invoke("train", "--resume", "--name", "halves", "--runs-dir", halves.parent, "--cell", other,
                    "--steps", 7, "--quiet")  # a run keeps its cell
    assert result.exit_code != 0 and f"cell: '{cell}' -> '{other}'" in result.output, describe(result)

    assert_sample_is_greedy_and_eval_is_cross_entropy(whole, loaded, tmp_path)


def assert_sample_is_greedy_and_eval_is_cross_entropy(run, loaded, tmp_path):
    """`sample --temp 0` is greedy decoding through the model's sequence path (`call`), and
    `eval` gives the whole text's cross-entropy as one call of the model computes it."""
    result = invoke("sample", run, "--runs-dir", run.parent, "--checkpoint", "last", "--prime", "the ",
                    "--temp", 0, "--length", 12)
    assert result.exit_code == 0, describe(result)
    model, vocab = loaded.model, loaded.vocab
    ids = list(vocab.encode("the "))
    for _ in range(12):
        logits, _ = model(tf.constant([ids], tf.int32))
        ids.append(int(np.argmax(logits[0, -1])))
    assert result.stdout.strip("\n") == vocab.decode(ids)

    text = "the cat sat on the mat\n" * 3
    (tmp_path / "held.txt").write_text(text, encoding="utf-8")
    result = invoke("eval", run, tmp_path / "held.txt", "--runs-dir", run.parent, "--checkpoint", "last", "--quiet")
    assert result.exit_code == 0, describe(result)
    bpc = float(result.stdout.splitlines()[1].split()[1])
    ids = vocab.encode(text).astype(np.int32)[None, :]
    logits, _ = model(tf.constant(ids[:, :-1]))
    nats = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=ids[:, 1:], logits=logits)
    assert bpc == pytest.approx(float(tf.reduce_mean(nats)) / math.log(2), abs=1e-3)


@pytest.mark.parametrize("cell", EXPERIMENT_CELLS)
def test_an_experiment_cell_trains_samples_and_evaluates(cell, corpus_file, tmp_path):
    run = train_run(tmp_path, corpus_file, cell, TINY + ["--cell", cell])
    loaded = load_run(str(run), run.parent, "last")
    assert loaded.model.cell_kind.name == cell
    assert_sample_is_greedy_and_eval_is_cross_entropy(run, loaded, tmp_path)


def test_an_unknown_cell_is_one_line():
    result = invoke("train", "--cell", "rnn", "--steps", 1)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "'rnn' is not one of 'lstm', 'peephole', 'cifg'" in result.output
