"""What a training process computes with: the strategy, model and optimizer of a run, and its
compiled steps as module-level functions (flax lm1b's `train_step`).

    training = build_training(model_config, train_config)
    train = compile_train_step(training)              # (x, y, flat_states) -> (loss, flat_states)
    evaluate = compile_eval_step(training.model)      # same signature, no update

`train_step` is one optimizer step on a global window: every replica runs the forward and
backward pass on its rows (`strategy.run`), the gradients are summed across replicas and only
then clipped by their global norm (Keras's `global_clipnorm` would clip each replica's share),
and Adam applies them. Dropout masks are keyed by (seed, step) (textgen.dropout), so they do not
depend on the strategy or the number of cores. Benchmarks call these same functions.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import keras
import tensorflow as tf

from textgen.config import ModelConfig, TrainConfig
from textgen.distribute import Replicas, make_strategy, worker_count
from textgen.dropout import dropout_key
from textgen.model import CharLSTM, build_model, flatten_state, unflatten_state
from textgen.parallel import configure_threads
from textgen.schedule import WarmupCosine


@dataclass
class Training:
    """The pieces one training process computes with.

    Attributes:
        strategy: the `tf.distribute.Strategy` (`--strategy`).
        replicas: the trainer's view of its replicas (`textgen.distribute.Replicas`).
        model: the `CharLSTM`, its weights mirrored across replicas.
        optimizer: Adam (wrapped in a loss-scale optimizer under mixed_float16).
        schedule: the learning-rate schedule (`WarmupCosine`), whose length can be set later.
        config: the run's `TrainConfig`.
        threads: TensorFlow's (intra-op, inter-op) pool sizes if textgen set them, else None.
    """

    strategy: object
    replicas: Replicas
    model: CharLSTM
    optimizer: keras.optimizers.Optimizer
    schedule: WarmupCosine
    config: TrainConfig
    threads: tuple[int, int] | None


def build_training(model_config: ModelConfig, train_config: TrainConfig) -> Training:
    """Thread pools, strategy, model and optimizer for a run, in the order TensorFlow needs:
    the thread pools and a multi-worker strategy must be set up before any other op runs."""
    threads = configure_threads(train_config.batch_size // worker_count(train_config.strategy))
    strategy = make_strategy(train_config.strategy)
    # "auto" is resolved once, when a run starts (textgen.launch), and saved in its run.json
    assert train_config.precision != "auto", "build_training needs a resolved --precision"
    replicas = Replicas(strategy, train_config.batch_size,
                        multiworker=train_config.strategy == "multiworker")
    keras.utils.set_random_seed(train_config.seed)
    with strategy.scope():  # weights and optimizer slots become mirrored variables
        model = build_model(model_config, precision=train_config.precision)
        schedule = WarmupCosine(
            train_config.learning_rate, train_config.warmup_steps,
            min_ratio=train_config.min_lr_ratio if train_config.lr_decay == "cosine" else 1.0)
        optimizer = make_optimizer(schedule, train_config.weight_decay)
        if train_config.precision == "mixed_float16":  # float16 gradients underflow unscaled
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
    return Training(strategy, replicas, model, optimizer, schedule, train_config, threads)


def make_optimizer(learning_rate, weight_decay: float = 0.0) -> keras.optimizers.Optimizer:
    """Adam, or with `weight_decay` Keras's AdamW (decoupled decay, w -= learning rate x
    weight_decay x w each step) on the kernels only: biases, peepholes and the embedding are left alone,
    so rare characters' rows do not shrink for lack of gradient. Same slots either way, so the
    checkpoint format does not change."""
    if not weight_decay:
        return keras.optimizers.Adam(learning_rate=learning_rate)
    optimizer = keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=weight_decay)
    # before build(); the peephole cell's per-unit peepholes are left alone like biases
    # (textgen.lstm_variants.PeepholeLSTMCell says why)
    optimizer.exclude_from_weight_decay(var_names=["bias", "embeddings", "peephole"])
    return optimizer


def _replica_train_step(training: Training, x, y, flat_states):
    """One replica's forward and backward pass on its rows of the global window, and the
    update: every replica applies the same summed, clipped gradient to its weights."""
    model, optimizer, replicas = training.model, training.optimizer, training.replicas
    clip = training.config.clip_norm
    x, y = replicas.my_rows(x), replicas.my_rows(y)  # (rows, seq_len) each
    with tf.GradientTape() as tape:
        key = dropout_key(training.config.seed, optimizer.iterations)  # masks: (seed, step) only
        loss, states = model.sequence_loss(x, y, unflatten_state(flat_states, model.cell_kind), training=True,
                                           dropout_key=key)
        loss = loss / replicas.count  # this replica's share of the batch mean
        scaled = optimizer.scale_loss(loss)  # x the loss scale under mixed_float16
    variables = model.trainable_variables
    # dense: clip_by_global_norm would take the norm of an IndexedSlices' rows, which is not
    # the gradient's norm when an id repeats (the embedding's, when it is looked up directly)
    grads = [tf.convert_to_tensor(g) for g in tape.gradient(scaled, variables)]
    grads = replicas.sum(grads)  # the whole batch's gradient
    if clip:
        scale = getattr(optimizer, "dynamic_scale", 1.0)
        grads, _ = tf.clip_by_global_norm(grads, clip * tf.cast(scale, tf.float32))
    if replicas.count > 1:  # Keras sums the replicas' gradients once more: hand it shares
        grads = [g / replicas.count for g in grads]
    optimizer.apply_gradients(zip(grads, variables))
    return replicas.sum(loss), flatten_state(states)


def train_step(training: Training, x, y, flat_states):
    """One optimizer step. x, y: the global window (batch, seq_len) int32; flat_states:
    [h0, c0, h1, c1, ...], per replica. Returns (mean loss in nats, new flat states)."""
    loss, flat = training.strategy.run(functools.partial(_replica_train_step, training),
                                       args=(x, y, flat_states))
    return training.replicas.first(loss), flat


def eval_step(model: CharLSTM, x, y, flat_states):
    """Mean loss in nats of targets y after x (no update, no dropout), and the new states."""
    loss, states = model.sequence_loss(x, y, unflatten_state(flat_states, model.cell_kind), training=False)
    return loss, flatten_state(states)


def compile_train_step(training: Training):
    """`train_step` of `training` as one compiled TensorFlow graph: (x, y, flat) -> (loss, flat)."""
    return tf.function(functools.partial(train_step, training), reduce_retracing=True)


def compile_eval_step(model: CharLSTM):
    """`eval_step` of `model`, compiled: (x, y, flat) -> (loss, flat)."""
    return tf.function(functools.partial(eval_step, model), reduce_retracing=True)
