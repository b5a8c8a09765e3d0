"""The optimizer of `textgen.steps`: Adam, or AdamW decaying the kernels only (--weight-decay)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from textgen.config import ModelConfig, TrainConfig
from textgen.model import CharLSTM
from textgen.steps import build_training, make_optimizer


def _model():
    tf.keras.utils.set_random_seed(3)
    model = CharLSTM(ModelConfig(vocab_size=11, embedding_dim=4, units=8, num_layers=2))
    model(tf.zeros((1, 1), tf.int32))
    for v in model.trainable_variables:  # non-zero biases, so that a decay of them would show
        v.assign(v + 0.1)
    return model


@pytest.mark.parametrize("weight_decay", [0.0, 0.25])
def test_weight_decay_shrinks_the_kernels_and_nothing_else(weight_decay):
    """With zero gradients Adam moves nothing, so one step shows the decay alone: every kernel
    becomes w * (1 - learning_rate * weight_decay); biases and the embedding stay put."""
    model = _model()
    variables = model.trainable_variables
    before = {v.path: v.numpy() for v in variables}
    optimizer = make_optimizer(0.1, weight_decay)
    optimizer.build(variables)
    optimizer.apply_gradients([(tf.zeros_like(v), v) for v in variables])
    kernels = [v for v in variables if v.name.endswith("kernel")]
    assert len(kernels) == 5  # 2 x (kernel, recurrent_kernel) and the output layer's
    for v in variables:
        decays = v.name.endswith("kernel")
        want = before[v.path] * (1 - 0.1 * weight_decay) if decays else before[v.path]
        np.testing.assert_allclose(v.numpy(), want, rtol=1e-6, err_msg=v.path)
    names = {v.name for v in variables}
    assert {"embeddings", "bias"} <= names


def test_train_config_weight_decay_reaches_the_optimizer():
    model_config = ModelConfig(vocab_size=11, embedding_dim=4, units=8, num_layers=1)
    plain = build_training(model_config, TrainConfig(batch_size=2, seq_len=4, precision="float32"))
    decayed = build_training(model_config, TrainConfig(batch_size=2, seq_len=4, precision="float32",
                                                       weight_decay=0.01))
    assert not plain.optimizer.weight_decay
    assert decayed.optimizer.weight_decay == pytest.approx(0.01)
    # the same slots, so checkpoints of either kind restore into the other
    assert len(plain.optimizer.variables) == len(decayed.optimizer.variables)
