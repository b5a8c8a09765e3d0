"""The training recipe: the learning-rate schedule, early stopping, presets, embedding dropout,
and what a trained model learns: a corpus of known entropy."""

import math
import random

import numpy as np
import pytest
import tensorflow as tf

from textgen.config import PRESETS, ModelConfig, apply_preset
from textgen.inference import load_run
from textgen.errors import TextgenError
from textgen.evaluate import evaluate
from textgen.launch import launch
from textgen.model import build_model
from textgen.policy import patience_exhausted
from textgen.schedule import WarmupCosine


def reference_lr(step, peak, warmup, total, floor):
    if step < warmup:
        return peak * min((step + 1) / max(warmup, 1), 1.0)
    if total <= warmup:
        return peak
    frac = min(max((step - warmup) / (total - warmup), 0.0), 1.0)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac)))


@pytest.mark.parametrize("warmup,total", [(10, 100), (0, 50), (5, 0), (20, 20)])
def test_schedule_matches_the_formula(warmup, total):
    schedule = WarmupCosine(3e-3, warmup, min_ratio=0.1, decay_steps=total)
    for step in [0, 1, warmup - 1, warmup, warmup + 1, total // 2, total - 1, total, total + 10]:
        if step >= 0:
            assert float(schedule(step)) == pytest.approx(reference_lr(step, 3e-3, warmup, total, 0.1), rel=1e-5)
    schedule.set_decay_steps(total + 40)
    assert float(schedule(total + 40)) == pytest.approx(3e-4, rel=1e-5) if total + 40 > warmup else True


def test_early_stopping_counts_validations_since_the_best():
    history = [{"step": s, "val_bpc": v} for s, v in [(1, 3.0), (2, 2.0), (3, 2.5)]]
    assert not patience_exhausted(history, 2)
    history.append({"step": 4, "val_bpc": 2.1})
    assert patience_exhausted(history, 2)
    assert not patience_exhausted(history, None) and not patience_exhausted([], 1)
    history.append({"step": 5, "val_bpc": 2.0})  # equal to the best: the latest one counts
    assert not patience_exhausted(history, 2)


def test_the_readmes_preset_parameter_counts_are_the_models():
    """The README's preset table gives each preset's parameter count for a 65-character vocabulary
    (as tinyshakespeare's): the model built from the preset has that many, to the digits shown."""
    import re
    from pathlib import Path

    from textgen.model import count_params

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    table = dict(re.findall(r"^\| `(\w+)` \| [^|]+ \| ([\d.]+) M \|", readme, flags=re.M))
    assert set(table) == set(PRESETS), table
    for name, shown in table.items():
        options = {k: v for k, v in PRESETS[name]["model"].items() if k in ModelConfig.__dataclass_fields__}
        model = build_model(ModelConfig(vocab_size=65, **options))
        model(tf.zeros((1, 1), tf.int32))  # built
        decimals = len(shown.partition(".")[2])
        assert round(count_params(model) / 1e6, decimals) == float(shown), (name, count_params(model))


def test_presets_are_overridden_by_explicit_options():
    model, train = apply_preset("small", {"units": 64}, {"steps": 5})
    assert model["units"] == 64 and model["num_layers"] == PRESETS["small"]["model"]["num_layers"]
    assert train["steps"] == 5 and train["batch_size"] == PRESETS["small"]["train"]["batch_size"]
    assert apply_preset(None, {"units": 3}, {}) == ({"units": 3}, {})
    with pytest.raises(TextgenError, match="--preset"):
        apply_preset("huge", {}, {})


def test_embedding_dropout_applies_in_training_only():
    config = ModelConfig(vocab_size=9, embedding_dim=8, units=8, num_layers=1, embedding_dropout=0.5)
    tf.keras.utils.set_random_seed(0)
    model = build_model(config)
    ids = tf.constant(np.arange(36).reshape(4, 9) % 9, tf.int32)
    assert not model._use_projection_table(ids, training=True)
    assert model._use_projection_table(ids, training=False)
    eval_a, eval_b = model(ids)[0], model(ids)[0]
    np.testing.assert_array_equal(eval_a, eval_b)
    assert np.abs(np.asarray(model(ids, training=True)[0]) - np.asarray(eval_a)).max() > 1e-3


def train_tiny(tmp_path, text, name, **train):
    path = tmp_path / f"{name}.txt"
    path.write_text(text)
    options = {"batch_size": 16, "seq_len": 64, "learning_rate": 1e-2, "warmup_steps": 20,
               "eval_every": 100, "eval_batches": 8, "seed": 3, **train}
    run_dir, _, progress = launch([str(path)], {"embedding_dim": 8, "units": 48, "num_layers": 1},
                                  options, tmp_path / "runs", name=name, show_progress=False,
                                  echo=lambda s: None)
    return run_dir, progress


def test_a_corpus_of_known_entropy_is_learned_to_its_entropy(tmp_path):
    # Words drawn uniformly from four, each 3 letters + a space, first letters distinct: the first
    # letter of a word carries log2(4) = 2 bits, the other three characters none: 0.5 bpc.
    rng = random.Random(0)
    text = "".join(rng.choice(["the ", "cat ", "sat ", "mop "]) for _ in range(20000))
    run_dir, progress = train_tiny(tmp_path, text, "entropy", steps=400)
    loaded = load_run(str(run_dir), tmp_path / "runs")
    model, vocab = loaded.model, loaded.vocab
    held_out = "".join(rng.choice(["the ", "cat ", "sat ", "mop "]) for _ in range(3000))
    result = evaluate(model, vocab, [held_out])
    assert result.bpc == pytest.approx(0.5, abs=0.05), (result.bpc, progress.history)
