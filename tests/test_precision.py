"""Mixed precision: 16-bit arithmetic with float32 weights, logits and loss, checked on the CPU
(bfloat16 and float16 both run there) against the float32 model with the same weights."""

from __future__ import annotations

from pathlib import Path

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
CONFIG_VOCAB = 11  # characters of conftest's corpus
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


MIXED_COMMON = ["--units", "32", "--embedding-dim", "8", "--num-layers", "2", "--batch-size", "8",
                "--seq-len", "16", "--eval-every", "40", "--eval-batches", "2", "--seed", "5",
                "--learning-rate", "1e-2", "--warmup-steps", "0", "--steps", "80", "--quiet"]


@pytest.fixture(scope="module")
def float32_run(corpus_file, tmp_path_factory) -> Path:
    """The float32 run both mixed-precision runs are compared with (trained once)."""
    runs = tmp_path_factory.mktemp("float32") / "runs"
    result = invoke("train", corpus_file, "--runs-dir", runs, "--name", "f32", *MIXED_COMMON)
    assert result.exit_code == 0, describe(result)
    return runs / "f32"


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_run_trains_resumes_and_samples_in_float32(corpus_file, tmp_path, precision, float32_run):
    """Trained long enough to learn (bpc far below the untrained model's), mixed precision ends
    close to float32 - closer than the tolerance, which an untrained model does not meet."""
    runs = tmp_path / "runs"
    result = invoke("train", corpus_file, "--runs-dir", runs, "--name", "mixed", *MIXED_COMMON,
                    "--precision", precision)
    assert result.exit_code == 0, describe(result)
    bpc = {name: read_run_meta(path)["best_val_bpc"] for name, path in (("f32", float32_run), ("mixed", runs / "mixed"))}
    untrained = np.log2(CONFIG_VOCAB)  # what the step-0 model scores, near uniform guessing
    assert bpc["f32"] < 0.6 * untrained, bpc  # both really learned
    tolerance = 0.1 * bpc["f32"]
    assert abs(bpc["mixed"] - bpc["f32"]) < tolerance, bpc
    assert abs(untrained - bpc["f32"]) > tolerance  # the check tells a trained model from none
    assert read_run_meta(runs / "mixed")["train"].precision == precision

    result = invoke("train", "--resume", "--name", "mixed", "--runs-dir", runs, "--steps", "82",
                    "--quiet")
    assert result.exit_code == 0, describe(result)
    assert read_run_meta(runs / "mixed")["step"] == 82
    result = invoke("train", "--resume", "--name", "mixed", "--runs-dir", runs, "--steps", "84",
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


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_model_steps_and_samples(precision):
    """The sampler's single-step path runs on a mixed-precision model (its weights are cast to
    the compute dtype once per chunk) and agrees with the sequence path of the same model."""
    from textgen.config import SampleConfig
    from textgen.model import flatten_state
    from textgen.sample import Sampler

    mixed = build_model(CONFIG, precision=precision)
    ids = tf.constant(np.random.default_rng(1).integers(0, CONFIG.vocab_size, (3, 6)), tf.int32)
    sequence_logits, _ = mixed(ids)
    states = mixed.initial_state(3)
    for t in range(6):
        logits, states = mixed.step(ids[:, t], states)
        assert logits.dtype == tf.float32
    np.testing.assert_allclose(logits.numpy(), sequence_logits[:, -1].numpy(), atol=0.05)
    chunks = list(Sampler(mixed).generate(np.array([1, 2]), SampleConfig(length=70, seed=3, num_samples=2)))
    assert sum(c.shape[1] for c in chunks) == 70 and all(c.shape[0] == 2 for c in chunks)
    assert flatten_state(states)[0].dtype == precision.removeprefix("mixed_")


AMX = {"fpu", "avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}  # Intel Sapphire Rapids
ZEN5 = {"fpu", "avx2", "avx512f", "avx512_bf16"}  # AMD Zen 4/5: AVX-512 BF16, no AMX
AVX2 = {"fpu", "sse2", "avx2", "fma", "f16c"}  # no native bfloat16
ARM = {"fp", "asimd", "bf16", "i8mm"}  # Arm with BF16: unmeasured


@pytest.mark.parametrize("requested, gpus, flags, chosen", [
    ("auto", [], AVX2, "float32"), ("auto", [], set(), "float32"),
    ("auto", [], AMX, "mixed_bfloat16"), ("auto", [], ZEN5, "mixed_bfloat16"),
    ("auto", [], {"amx_bf16"}, "mixed_bfloat16"),
    ("auto", [], ARM, "float32"),  # recognised, but bfloat16 on Arm is not measured
    ("auto", [(9, 0)], AVX2, "mixed_bfloat16"), ("auto", [(8, 6), (9, 0)], AVX2, "mixed_bfloat16"),
    ("auto", [(7, 5)], AMX, "mixed_float16"), ("auto", [(8, 0), (7, 0)], AVX2, "mixed_float16"),
    ("auto", [(6, 1)], AMX, "float32"),  # the GPU decides, whatever the CPU has
    ("mixed_bfloat16", [], AVX2, "mixed_bfloat16"), ("float32", [(9, 0)], AMX, "float32"),
    ("float32", [], ZEN5, "float32"),
])
def test_auto_precision_follows_the_hardware(requested, gpus, flags, chosen):
    from textgen.precision import choose_precision

    precision, why = choose_precision(requested, gpus, flags)
    assert precision == chosen and why
    if requested == "auto" and not gpus:
        assert ("bf16" in why) == bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def test_cpu_flags_come_from_cpuinfo_or_the_environment(monkeypatch):
    from textgen.precision import cpu_bf16, cpu_flags, resolve

    assert cpu_bf16("processor : 0\nflags : fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n")
    assert cpu_bf16("flags : fpu amx_bf16\n") and cpu_bf16("Features : fp asimd bf16 i8mm\n")
    assert not cpu_bf16("flags : fpu sse2 avx2 fma f16c\n") and not cpu_bf16("")
    assert cpu_flags("processor : 0\nflags : a b\nprocessor : 1\nflags : a b\n") == {"a", "b"}
    monkeypatch.setattr("textgen.precision.gpu_capabilities", lambda: [])
    monkeypatch.setenv("TEXTGEN_CPU_FLAGS", "fpu avx2 avx512_bf16")
    assert cpu_flags() == {"fpu", "avx2", "avx512_bf16"}
    assert resolve("auto") == ("mixed_bfloat16", "CPU with native bfloat16 (avx512_bf16)")
    monkeypatch.setenv("TEXTGEN_CPU_FLAGS", "")
    assert resolve("auto")[0] == "float32"


TINY_RUN = ["--units", "8", "--embedding-dim", "4", "--num-layers", "1", "--batch-size", "4",
            "--seq-len", "8", "--quiet"]


def test_a_new_run_records_the_precision_auto_chose(corpus_file, tmp_path):
    result = invoke("train", corpus_file, "--runs-dir", tmp_path / "runs", "--name", "a",
                    "--steps", "1", *TINY_RUN)
    assert result.exit_code == 0, describe(result)
    meta = read_run_meta(tmp_path / "runs" / "a")
    assert meta["train"].precision == "float32"  # the suite's CPU flags (conftest): no bfloat16
    start = [line for line in result.stderr.splitlines() if line.startswith("training ")]
    assert start == [f"training {tmp_path / 'runs' / 'a'}: 2,990 characters, vocabulary 11, float32"]
    info = invoke("info", "a", "--runs-dir", tmp_path / "runs")
    assert f"precision float32 ({meta['precision_reason']})" in info.stdout
    assert meta["precision_reason"] == "CPU without native bfloat16"


def test_a_run_keeps_its_precision_when_resumed_on_another_cpu(corpus_file, tmp_path, monkeypatch):
    """Started where the CPU has native bfloat16 (faked flags), resumed where it has none: the
    run stays mixed bfloat16, and the resume line says so."""
    runs = tmp_path / "runs"
    monkeypatch.setenv("TEXTGEN_CPU_FLAGS", "fpu avx2 avx512f avx512_bf16 amx_bf16")
    result = invoke("train", corpus_file, "--runs-dir", runs, "--name", "b", "--steps", "2", *TINY_RUN)
    assert result.exit_code == 0, describe(result)
    assert read_run_meta(runs / "b")["train"].precision == "mixed_bfloat16"
    assert "vocabulary 11, mixed_bfloat16\n" in result.stderr
    monkeypatch.setenv("TEXTGEN_CPU_FLAGS", "fpu avx2")  # another machine: auto would be float32
    result = invoke("train", "--resume", "--name", "b", "--runs-dir", runs, "--steps", "4", "--quiet")
    assert result.exit_code == 0, describe(result)
    meta = read_run_meta(runs / "b")
    assert meta["step"] == 4 and meta["train"].precision == "mixed_bfloat16"
    assert meta["precision_reason"] == "CPU with native bfloat16 (avx512_bf16, amx_bf16)"
    assert f"resuming {runs / 'b'} at step 2, mixed_bfloat16" in result.stderr
