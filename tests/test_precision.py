"""Mixed precision: 16-bit arithmetic with float32 weights, logits and loss, checked on the CPU
(bfloat16 and float16 both run there) against the float32 model with the same weights."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from conftest import describe, invoke

from textgen import checkpoint as ckpt
from textgen.runs import read_run_meta
from textgen.config import ModelConfig
from textgen.model import build_model
from textgen.train import loss_fn

pytestmark = pytest.mark.usefixtures("own_cwd")

CONFIG = ModelConfig(vocab_size=23, embedding_dim=8, units=32, num_layers=2)
# bfloat16 keeps 8 significant bits, float16 11: relative tolerances for the loss, and for the
# gradients, which sum thousands of rounded products over 40 steps
TOLERANCE = {"mixed_bfloat16": 2e-2, "mixed_float16": 3e-3}
GRAD_TOLERANCE = {"mixed_bfloat16": 0.2, "mixed_float16": 0.03}


def _loss_and_grads(model, ids, targets):
    with tf.GradientTape() as tape:
        logits, states = model(ids, training=True)
        loss = loss_fn(logits, targets)
    return logits, states, loss, tape.gradient(loss, model.trainable_variables)


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_matches_float32_with_float32_weights_logits_and_loss(precision):
    rng = np.random.default_rng(0)
    ids = tf.constant(rng.integers(0, CONFIG.vocab_size, (4, 40)), tf.int32)
    targets = tf.constant(rng.integers(0, CONFIG.vocab_size, (4, 40)), tf.int32)
    reference = build_model(CONFIG)
    mixed = build_model(CONFIG, precision=precision)
    mixed.set_weights(reference.get_weights())

    _, _, loss32, grads32 = _loss_and_grads(reference, ids, targets)
    logits, states, loss, grads = _loss_and_grads(mixed, ids, targets)

    compute = precision.removeprefix("mixed_")
    assert all(w.dtype == "float32" for w in mixed.weights)
    assert logits.dtype == tf.float32 and loss.dtype == tf.float32
    assert states[0][0].dtype == compute  # the recurrence itself runs in 16 bits
    assert all(g.dtype == tf.float32 for g in grads)
    tol = TOLERANCE[precision]
    assert abs(float(loss) - float(loss32)) < tol * float(loss32)
    for g, g32 in zip(grads, grads32):
        g, g32 = tf.convert_to_tensor(g).numpy(), tf.convert_to_tensor(g32).numpy()
        assert np.linalg.norm(g - g32) < GRAD_TOLERANCE[precision] * np.linalg.norm(g32) + 1e-6


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_run_trains_resumes_and_samples_in_float32(corpus_file, tmp_path, precision):
    runs = tmp_path / "runs"
    common = ["--units", "32", "--embedding-dim", "8", "--num-layers", "2", "--batch-size", "8",
              "--seq-len", "16", "--eval-every", "4", "--eval-batches", "2", "--seed", "5", "--quiet"]
    for name, extra in (("f32", []), ("mixed", ["--precision", precision])):
        result = invoke("train", corpus_file, "--runs-dir", runs, "--name", name, "--steps", "8",
                        *common, *extra)
        assert result.exit_code == 0, describe(result)
    bpc = {name: read_run_meta(runs / name)["best_val_bpc"] for name in ("f32", "mixed")}
    assert abs(bpc["mixed"] - bpc["f32"]) < 0.05 * bpc["f32"], bpc
    assert read_run_meta(runs / "mixed")["train"].precision == precision

    result = invoke("train", "--resume", "--name", "mixed", "--runs-dir", runs, "--steps", "10",
                    "--quiet")
    assert result.exit_code == 0, describe(result)
    assert read_run_meta(runs / "mixed")["step"] == 10
    result = invoke("train", "--resume", "--name", "mixed", "--runs-dir", runs, "--steps", "12",
                    "--precision", "float32", "--quiet")
    assert result.exit_code == 2 and "precision: " in result.stderr, describe(result)

    result = invoke("sample", "mixed", "--runs-dir", runs, "--length", "30", "--seed", "1")
    assert result.exit_code == 0, describe(result)
    assert len(result.stdout.rstrip("\n")) >= 30


def test_float16_loss_scaling_skips_a_non_finite_step():
    """Keras's LossScaleOptimizer, as the trainer uses it: an overflowing step is skipped and the
    scale halved; the weights stay finite and unchanged."""
    import keras

    model = build_model(CONFIG, precision="mixed_float16")
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(1e-3))
    optimizer.build(model.trainable_variables)
    before = [w.numpy().copy() for w in model.trainable_variables]
    scale = float(optimizer.dynamic_scale)
    grads = [tf.fill(w.shape, np.inf) for w in model.trainable_variables]
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    assert float(optimizer.dynamic_scale) == scale / 2
    for w, b in zip(model.trainable_variables, before):
        np.testing.assert_array_equal(w.numpy(), b)
